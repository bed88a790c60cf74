# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Food-101 workbook (.venv)
#     language: python
#     name: food101
# ---

# %% [markdown]
# # 10 · Past 95%: strong pretrained features, linear probes and layer-decay fine-tuning
#
# **Why.** The plan's ladder tops out below 95%: the best published EfficientNets reach 91.5% (B4) and 93.0% (B7)
# on Food-101 (Tan & Le 2019, Table 5). The published routes past 95% all start from much stronger pretrained
# features: CLIP ViT-L/14@336 with a linear probe 95.9% (Radford et al. 2021, Table 10), SigLIP SO400M/384
# zero-shot 96.35% (open_clip's results), EfficientNet-L2 + SAM fine-tuned 96.18% (Foret et al. 2020).
#
# **Technique.** (1) Compute the frozen backbone's pooled features of every photo *once* (`helpers features`).
# (2) Fit a multinomial logistic regression on the L2-normalised features, its L2 strength chosen on val
# (`helpers probe`, the CLIP protocol): seconds, not hours. (3) Several backbones: concatenate their features
# (one probe) or average the probes' softmax (an ensemble). (4) Fine-tune from the probe's head with layer-wise
# learning-rate decay (LP-FT: the good features are not distorted by a random head's first gradients).
#
# **Full profile.** SigLIP SO400M/384 and CLIP ViT-L/14@336 probes, their ensemble (with notebook 08's when it
# exists), and EVA-02-B/448 fine-tuned from its probe with layer decay: hub weights, a GPU or a Mac overnight.
# **Demo profile.** The same steps with the offline efficientnet-lite0/1/2 weights on the tiny set, at 112 px:
# ImageNet-1k lite features are far weaker than the large models', so the ranking of the routes differs, and
# the numbers land where the other demo notebooks do (60-75%), not past 95%. **Medium profile:** lite0/1/2 at
# their own sizes on 10% of Food-101.

# %% [markdown]
# **Words used in this notebook.**
# - **Pre-logit features**: what a backbone outputs just before its classifier, one vector per photo (1280 numbers
#   for lite0, 1152 for SigLIP SO400M). timm returns them with `num_classes=0`.
# - **Linear probe**: a logistic-regression classifier trained on frozen pre-logit features. The backbone never
#   changes, so the features are computed once and the probe fits in seconds.
# - **L2 strength**: how hard the probe's fit is pulled toward small weights (a penalty λ/2 · ‖W‖²). Small: the probe
#   follows the training photos closely (it may overfit); large: a simpler classifier (it may underfit). It is swept
#   on val, and the sweep figure shows val top-1 against it.
# - **Mean-loss scale**: the penalty is added to the *mean* cross-entropy over the training photos, not their sum,
#   so λ here equals 1 / (C · N) for scikit-learn's C on N photos; the numbers on the sweep's axis are on this scale.
# - **LP-FT** ("linear probe, then fine-tune"): start the fine-tune from the probe's head instead of a random one, so
#   the first gradients do not scramble good features (Kumar et al. 2022).
# - **Layer-wise learning-rate decay** (`layer_decay` R): block k of D learns at lr × R^(D−k): the head at the full
#   rate, each block below it R times slower, the stem slowest. It generalises 05's "backbone at a tenth".
# - **Within noise**: the reference's top-1 lies inside the new result's 95% interval. It is a rule of thumb; the
#   paired McNemar test on the photos fixed and broken is the sharper check.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# Frozen backbones to probe, per profile: label -> (timm name with its pretrained tag, weights, image size or None)
backbones = {
    "full": {"SigLIP SO400M/384": ("vit_so400m_patch14_siglip_384.webli", "hub", 384),
             "CLIP ViT-L/14@336": ("vit_large_patch14_clip_quickgelu_336.openai", "hub", 336),
             "EVA-02-B/448": ("eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", "hub", 448)},
    "medium": {"lite0": ("tf_efficientnet_lite0", "offline", 224), "lite1": ("tf_efficientnet_lite1", "offline", 240),
               "lite2": ("tf_efficientnet_lite2", "offline", 260)},
    "demo": {"lite0": ("tf_efficientnet_lite0", "offline", 112), "lite1": ("tf_efficientnet_lite1", "offline", 112),
             "lite2": ("tf_efficientnet_lite2", "offline", 112)},
}
views = {"full": 2, "medium": 1, "demo": 1}  # 2: each photo's features averaged with its mirror's
ensemble_of = {"full": ["SigLIP SO400M/384", "CLIP ViT-L/14@336"], "medium": ["lite0", "lite1", "lite2"],
               "demo": ["lite0", "lite1", "lite2"]}  # the probes combined (concatenated features, and mean softmax)
# Also averaged with the probes when they are trained in this course: (notebook, run) of notebook 08's members
with_members = {"full": [("07_high_resolution", "hires"), ("08_ensemble", "b4"), ("08_ensemble", "resnet101")],
                "medium": [], "demo": []}
# The fine-tune from a probe's head (LP-FT) with layer-wise lr decay: the probe it starts from and its settings
finetune_from = {"full": "EVA-02-B/448", "medium": "lite0", "demo": "lite0"}
finetune = {
    "full": dict(image_size=448, batch_size=32, epochs=10, lr=5e-4, layer_decay=0.65, weight_decay=0.05,
                 warmup_epochs=1, head_warmup_epochs=0, model_ema=True, drop_path_rate=0.1, augment="basic"),
    "medium": dict(image_size=224, batch_size=32, epochs=3, lr=1e-3, layer_decay=0.8, head_warmup_epochs=0,
                   warmup_epochs=0.5),
    "demo": dict(image_size=112, batch_size=32, epochs=1, lr=1e-3, layer_decay=0.8, head_warmup_epochs=0,
                 warmup_epochs=0.5, num_workers=0),
}

# %%
import helpers
from helpers.course import analysis, course, failures, plots, probe_figures
from helpers.use import probe
from helpers.use.features import extract_features

c = course.Course("10_beyond_95", profile, data_dir=data_dir, device=device)
chosen = c.pick(backbones)
if c.rehearse:  # random weights at the rehearsal's image size (as c.config gives the fine-tune): the wiring only
    chosen = {k: (name.split(".")[0], "none", course.rehearsal({"image_size": size})["image_size"])
              for k, (name, _, size) in chosen.items()}
folder = {label: c.run_dir("10_beyond_95", "features-" + label.split()[0].replace("/", "_")) for label in chosen}
probe_dir = {label: c.run_dir("10_beyond_95", "probe-" + label.split()[0].replace("/", "_")) for label in chosen}
chosen  # label: (timm model, weights, image size)

# %% [markdown]
# ## 1. Features, once per backbone
# The backbone with `num_classes=0` returns the vector its classifier would read (the pooled features before
# the last linear layer, "pre-logit"), computed on its own evaluation
# preprocessing (timm's data config) for the train, val and test splits (the same seeded split as `train`).
# The work is saved in chunks: a re-run after a crash continues where it stopped.

# %%
for label, (name, weights, size) in chosen.items():  # the log gives each backbone's images/s
    if not (folder[label] / "test.safetensors").exists():
        extract_features(dataset="food-101", data_dir=str(c.data_dir), backbone=name, pretrained=weights,
                         image_size=size, views=c.pick(views), output_dir=folder[label], device=device,
                         num_workers=c.num_workers)

# %% [markdown]
# ## 2. A linear probe per backbone, and one over the concatenated features
# Logistic regression on the L2-normalised features; the L2 strength is swept on val, and the probe fitted on
# train at that strength is tested once (val stays held out for the fine-tune that starts from it).

# %%
probes = {}
for label in chosen:
    if not (probe_dir[label] / "summary.json").exists():
        probe.train_probe([folder[label]], probe_dir[label], device=device)
    probes[label] = probe_dir[label]
combo = " + ".join(c.pick(ensemble_of))
combo_dir = c.run_dir("10_beyond_95", "probe-concat")
if not (combo_dir / "summary.json").exists():
    probe.train_probe([folder[label] for label in c.pick(ensemble_of)], combo_dir, device=device)
probes[f"one probe on {combo}"] = combo_dir
tested = {k: probe.read_summary(v) for k, v in probes.items()}  # test top-1, top-5 and n, val top-1, chosen L2
tested

# %%
probe_figures.l2_sweep(probes, folder=c.figures, name="10_probe_l2_sweep")

# %% [markdown]
# ## 3. The technique on one batch
# Eight test photos through the probe of the first backbone: the features it reads (each row L2-normalised),
# its fitted weights, and the logits they give. `ProbeModel` is what `evaluate`, `ensemble` and `--teacher`
# run: the frozen backbone(s), the normalisation and the linear head.

# %%
b = probe.one_batch(probe_dir[next(iter(chosen))], c.data_dir, n=8)
print(f"features {tuple(b['features'].shape)}, norms {b['features'].norm(dim=1).numpy().round(3)}; weights "
      f"{tuple(b['weight'].shape)}; predicted {b['logits'].argmax(1).tolist()}, true {b['labels'].tolist()}")
probe_figures.probe_batch(b["features"], b["weight"], b["logits"], b["labels"], b["class_names"], folder=c.figures,
                          name="10_probe_batch")

# %% [markdown]
# ## 4. Probes against their combinations
# The concatenated-feature probe is one classifier over all backbones; the ensemble averages the probes'
# softmax on the photos (`helpers.ensemble`, each backbone with its own preprocessing), with notebook 08's
# members when they are trained.

# %%
members08 = [c.run_dir(nb, run) for nb, run in c.pick(with_members)]
members08 = [m for m in members08 if (m / "best.pt").is_file()]  # trained in this course (notebook 08 has run)
ensemble = c.ensemble([probes[label] for label in c.pick(ensemble_of)], tag="10_probe_ensemble")
combinations = {f"one probe on {combo} (concatenated)": tested[f"one probe on {combo}"],
                f"mean softmax of the {len(c.pick(ensemble_of))} probes": ensemble}
if members08:
    with_08 = c.ensemble([probes[label] for label in c.pick(ensemble_of)] + members08, tag="10_with_08")
    combinations[f"probes + notebook 08's {len(members08)} members"] = with_08
probe_figures.members_vs_ensembles({f"probe {k}": tested[k] for k in c.pick(ensemble_of)},
                                   combinations, folder=c.figures, name="10_members_vs_ensemble")

# %% [markdown]
# ## 5. Fine-tune from the probe's head with layer-wise learning-rate decay (LP-FT)
# `--init-from PROBE_RUN` loads the backbone's pretrained weights and the probe's head (folded with the mean
# feature norm, so step 0 predicts what the probe predicts); `--layer-decay R` gives block k of D the rate
# lr x R^(D - k): the stem barely moves, the last blocks and the head learn most.

# %%
name, weights, _ = chosen[c.pick(finetune_from)]
ft = c.config("lpft", dict(backbone=name, pretrained=weights, init_from=str(probe_dir[c.pick(finetune_from)]),
                           **c.pick(finetune)))
summary = helpers.train(ft)
lpft = c.evaluate(ft.output_dir, tag="10_lpft")
results = {f"probe {c.pick(finetune_from)}": tested[c.pick(finetune_from)],
           f"fine-tune from the probe's head (LP-FT), {c.pick(finetune_from)}": lpft, **combinations}
# highlighted: the route with the best validation top-1 among those that have one (the test split chooses nothing)
by_val = {f"probe {c.pick(finetune_from)}": probe_dir[c.pick(finetune_from)],
          f"fine-tune from the probe's head (LP-FT), {c.pick(finetune_from)}": ft.output_dir,
          f"one probe on {combo} (concatenated)": combo_dir}
plots.compare_top1(results, highlight=analysis.best_by_val(by_val), folder=c.figures, name="10_routes",
                   title=f"10 · The routes of this notebook on the {profile} profile's data (test top-1; green: the "
                         "best on validation)")

# %% [markdown]
# The failures of the fine-tuned model (LP-FT), fixed in advance as the route shown here:

# %%
failures.failure_gallery(lpft["predictions"], n=12, title="10 · Fine-tuned from the probe's head (LP-FT)",
                         folder=c.figures, name="10_failures")

# %% [markdown]
# ## 6. Record
# Two rows of the roadmap's track past the plan: 5.1 (the probes' ensemble) and 5.2 (the LP-FT fine-tune).

# %%
c.record("5.1", [probes[label] for label in c.pick(ensemble_of)], ensemble)
c.record("5.2", ft.output_dir, lpft, reference_top1=c.evaluate(probe_dir[c.pick(finetune_from)]))

# %% [markdown]
# ## What we saw
# This run's two rows beside the published figures (this track is past the plan, so the plan has none):

# %%
from helpers.course import expectations

expectations.table(c, phases=["5.1", "5.2"])

# %% [markdown]
# **How to read it.** In the demo run behind the README's figures, the lite0 probe scored 71.3%, the probe over
# lite0 + lite1 + lite2 features and the mean of the three probes both 72.0% (64.3-78.6), and LP-FT 66.0%
# (58.1-73.1): -5.3 points against its probe, within noise (8 photos net of 150; both were tested on the same
# photos, so the paired McNemar test on the photos LP-FT fixed and broke is the sharper check). The demo's best
# route is 72%, nowhere near 95%: the title's "95%" is what these routes reach with the large models of the full
# profile.
#
# **Why LP-FT lands below its probe here.** (1) The demo fine-tunes one epoch: the run's best checkpoint is that
# epoch's end, and the starting point (the probe itself) is not a candidate. (2) Once the backbone moves, its
# features change in scale and direction and the probe's head, fitted with a strong L2 penalty on the frozen,
# normalised features, no longer fits them; one epoch on 360 photos is too little to re-fit. (3) The probe was
# fitted on the evaluation view of each photo, the fine-tune trains on random crops. On food-101-mini the README saw
# the same pattern over 6 epochs: validation top-1 fell from 85% to 70% once the backbone trained, and recovered to
# 83.3% by epoch 6, so at this scale the probe's head saves no epochs (LP-FT 80.0% against 82.8% for the default
# fine-tune). LP-FT pays when the features are already excellent (CLIP, EVA-02) and the fine-tune is gentle (layer
# decay, a low rate, EMA), which is the full profile's recipe.
#
# **Why the demo's ranking differs from the published one.** ImageNet-1k lite features are far weaker than CLIP's or
# SigLIP's (trained on hundreds of millions of image-text pairs): on lite features a fine-tune beats a probe, on
# CLIP ViT-L/14@336 features a probe alone reaches 95.9% on Food-101 (Radford et al. 2021, Table 10), above any
# fine-tune of the plan's models. EfficientNet-L2 fine-tuned with SAM reaches 96.2% (Foret et al. 2020).

# %% [markdown]
# ## Questions
# 1. What is a linear probe, and why does it fit in seconds once the features are cached?
# 2. Why are the features L2-normalised, and each backbone's separately before they are concatenated?
# 3. What happens at the left and at the right end of the L2 sweep figure, and why is the strength chosen on val?
# 4. Why does this probe fit on train only, where CLIP refits on train + val?
# 5. How does LP-FT differ from 05's two stages?
# 6. With layer decay 0.8, how much slower than the head does a block 5 levels below it learn?
# 7. Why did the demo's LP-FT land below its own probe?
# 8. Why do lite features and CLIP features rank the probe and the fine-tune differently?

# %% [markdown]
# ## Try it
# 1. `finetune["demo"]["layer_decay"] = 0.65` (from `0.8`; run by the tests): the full profile's decay, the lower
#    blocks moving less. Does LP-FT stay closer to its probe?
# 2. `finetune["demo"]["epochs"] = 4` (from `1`): give LP-FT time to recover from the first epoch.
# 3. `views["demo"] = 2` (from `1`): each photo's features averaged with its mirror's. Do the probes gain?
# 4. `finetune_from["demo"] = "lite2"`: LP-FT from the largest lite backbone's probe.

# %% [markdown]
# ## Further reading
# - Radford et al. 2021, [Learning Transferable Visual Models From Natural Language Supervision (CLIP)](https://arxiv.org/abs/2103.00020) (Table 10: linear probes, Food-101 95.9% for ViT-L/14@336).
# - Zhai et al. 2023, [Sigmoid Loss for Language Image Pre-Training (SigLIP)](https://arxiv.org/abs/2303.15343).
# - Oquab et al. 2023, [DINOv2](https://arxiv.org/abs/2304.07193); Fang et al. 2023, [EVA-02](https://arxiv.org/abs/2303.11331).
# - Kumar et al. 2022, [LP-FT](https://arxiv.org/abs/2202.10054); Bao et al. 2021, [BEiT](https://arxiv.org/abs/2106.08254) (layer-wise learning-rate decay for ViT fine-tuning).
# - Foret et al. 2020, [Sharpness-Aware Minimization](https://arxiv.org/abs/2010.01412) (Table 3: Food-101).
# - scikit-learn, [LogisticRegression](https://scikit-learn.org/stable/modules/generated/sklearn.linear_model.LogisticRegression.html) (the C parameter).
