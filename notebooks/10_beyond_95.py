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
# # 10 · Past the plan's 95%: strong pretrained features, linear probes and layer-decay fine-tuning
#
# **Why.** The plan's ladder tops out below its 95%: the best published EfficientNets reach 91.5% (B4) and 93.0%
# (B7) on Food-101 (Tan & Le 2019, Table 5). The published routes past 95% all start from much stronger pretrained
# features: CLIP ViT-L/14@336 with a linear probe 95.9% (Radford et al. 2021, Table 10), SigLIP SO400M/384
# zero-shot 96.35% ([open_clip's results](https://github.com/mlfoundations/open_clip/blob/main/docs/openclip_results.csv)),
# EfficientNet-L2 + SAM fine-tuned 96.18% (Foret et al. 2020).
#
# **Technique.** (1) Compute the frozen backbone's pooled features of every photo *once* (`helpers features`).
# (2) Fit a multinomial logistic regression on the L2-normalised features, its L2 strength chosen on val
# (`helpers probe`, the CLIP protocol): seconds, not hours. (3) Several backbones: concatenate their features
# (one probe) or average the probes' softmax (an ensemble). (4) Fine-tune from the probe's head with layer-wise
# learning-rate decay (LP-FT: the good features are not distorted by a random head's first gradients), against the
# same fine-tune from a new random head (the control: the probe's head is the only difference).
#
# **Full profile.** SigLIP SO400M/384 and CLIP ViT-L/14@336 probes, their ensemble (with notebook 08's when it
# exists), and EVA-02-B/448 fine-tuned from its probe with layer decay: hub weights, a GPU or a Mac overnight.
# **Demo profile.** The same steps with the offline efficientnet-lite0/1/2 weights on the tiny set, at 96 px:
# ImageNet-1k lite features are far weaker than the large models', so the ranking of the routes differs, and
# the numbers land on the demo's scale, nowhere near the plan's 95%. **Medium profile:** lite0/1/2 at their own
# sizes on a tenth of Food-101.

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
# - **EMA of the weights** (`model_ema=True`, first used here, in the full profile's fine-tune): besides the weights
#   it trains, the trainer keeps their exponential moving average, updated after every optimizer step as
#   ema ← d · ema + (1 − d) · weights with the decay d = `model_ema_decay` (0.998: an average over roughly the last
#   1 / (1 − d) = 500 steps). The average sits in a flatter, more central part of the loss than the last step's
#   weights, which usually tests better on long runs; the run is tested with both (`test_top1` and `test_ema_top1` in
#   its summary.json). On a short run the average still remembers early, worse weights: over 204 steps on
#   food-101-mini it cost 0.8 points
#   ([the measured ladder](../docs/notebooks.md#measured-the-technique-ladder-on-food-101-mini)), so the demo leaves
#   it off.
# - **Within noise**: the course's one rule for two results on the same test photos. The exact McNemar test on the
#   photos one gets right and the other wrong gives p; p < 0.05 is "real", p >= 0.05 "within noise" (this test split
#   cannot tell the difference from chance). Every comparison below prints it; two results without predictions of
#   the same photos have "no paired test", whatever their intervals.

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
    "demo": {"lite0": ("tf_efficientnet_lite0", "offline", 96), "lite1": ("tf_efficientnet_lite1", "offline", 96),
             "lite2": ("tf_efficientnet_lite2", "offline", 96)},
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
    "demo": dict(image_size=96, batch_size=32, epochs=1, lr=1e-3, layer_decay=0.8, head_warmup_epochs=0,
                 warmup_epochs=0.5, num_workers=0),
}

# %%
import helpers
from helpers.course import analysis, comparison, course, failures, plots, probe_figures
from helpers.use import probe
from helpers.use.features import extract_features

c = course.Course("10_beyond_95", profile, data_dir=data_dir, device=device)
chosen = c.pick(backbones)
if c.rehearse:  # random weights at the rehearsal's image size (as c.config gives the fine-tune): the wiring only
    chosen = {k: (name.split(".")[0], "none", course.rehearsal({"image_size": size})["image_size"])
              for k, (name, _, size) in chosen.items()}
# cached features and probes: each folder is named after every setting it depends on (backbone, weights, size,
# views, data), so a changed setting computes new ones beside the old
folder = {label: c.features_dir(label.split()[0], name, weights, size, c.pick(views))
          for label, (name, weights, size) in chosen.items()}
probe_dir = {label: c.probe_dir(label.split()[0], [folder[label]]) for label in chosen}
chosen  # label: (timm model, weights, image size)

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

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
combo_dir = c.probe_dir("concat", [folder[label] for label in c.pick(ensemble_of)])
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
# members when they are trained. Each probe is evaluated on the test photos with its per-photo predictions, so
# every comparison gets its paired test; the reference is the probe with the best validation top-1.

# %%
probe_tests = {label: {**tested[label], **c.evaluate(run)} for label, run in probes.items()}  # + predictions
best_probe = analysis.best_by_val({label: probes[label] for label in c.pick(ensemble_of)})
members08 = [c.run_dir(nb, run) for nb, run in c.pick(with_members)]
members08 = [m for m in members08 if (m / "best.pt").is_file()]  # trained in this course (notebook 08 has run)
ensemble = c.ensemble([probes[label] for label in c.pick(ensemble_of)], tag="10_probe_ensemble")
combinations = {f"one probe on {combo} (concatenated)": probe_tests[f"one probe on {combo}"],
                f"mean softmax of the {len(c.pick(ensemble_of))} probes": ensemble}
if members08:
    with_08 = c.ensemble([probes[label] for label in c.pick(ensemble_of)] + members08, tag="10_with_08")
    combinations[f"probes + notebook 08's {len(members08)} members"] = with_08
probe_figures.members_vs_ensembles({f"probe {k}": probe_tests[k] for k in c.pick(ensemble_of)},
                                   combinations, folder=c.figures, name="10_members_vs_ensemble")

# %%
print(f"the best probe by validation top-1: {best_probe}\n")
print(comparison.compare(probe_tests[best_probe], probe_tests[f"one probe on {combo}"], "one probe on every "
                         "backbone's features instead of the best backbone's alone",
                         labels=(f"probe {best_probe}", "concatenated")), end="\n\n")
if members08:
    print(comparison.compare(ensemble, with_08, "notebook 08's members added to the probes' mean",
                             labels=("mean of the probes", "with 08's members")), end="\n\n")
comparison.compare(probe_tests[best_probe], ensemble, "averaging the probes' softmax instead of the best probe alone "
                   "(5.1)", labels=(f"probe {best_probe}", "mean of the probes"))

# %% [markdown]
# ## 5. Fine-tune from the probe's head with layer-wise learning-rate decay (LP-FT)
# `--init-from PROBE_RUN` loads the backbone's pretrained weights and the probe's head (folded with the mean
# feature norm, so step 0 predicts what the probe predicts); `--layer-decay R` gives block k of D the rate
# lr x R^(D - k): the stem barely moves, the last blocks and the head learn most. The control is the same fine-tune
# (backbone, weights, size, epochs, rate, layer decay) from the backbone's ImageNet weights with a new random head:
# against it, LP-FT changes the head it starts from alone.

# %%
start = c.pick(finetune_from)
name, weights, _ = chosen[start]
ft = c.config("lpft", dict(backbone=name, pretrained=weights, init_from=str(probe_dir[start]), **c.pick(finetune)))
new_head = c.config("new-head", dict(backbone=name, pretrained=weights, **c.pick(finetune)))  # the control
summary = helpers.train(ft)
helpers.train(new_head)
lpft = c.evaluate(ft.output_dir, tag="10_lpft")
plain = c.evaluate(new_head.output_dir)
results = {f"probe {start}": probe_tests[start], f"fine-tune from a new head, {start}": plain,
           f"fine-tune from the probe's head (LP-FT), {start}": lpft, **combinations}
# highlighted: the route with the best validation top-1 among those that have one (the test split chooses nothing)
by_val = {f"probe {start}": probe_dir[start], f"fine-tune from a new head, {start}": new_head.output_dir,
          f"fine-tune from the probe's head (LP-FT), {start}": ft.output_dir,
          f"one probe on {combo} (concatenated)": combo_dir}
plots.compare_top1(results, highlight=analysis.best_by_val(by_val), folder=c.figures, name="10_routes",
                   title=f"10 · The routes on the {profile} profile's data (deltas: paired test against the {start} "
                         "probe; green: the best on validation)")

# %%
print(comparison.compare(plain, lpft, "the head the fine-tune starts from alone: the probe's (LP-FT) instead of a new "
                         "random one", labels=("new head", "LP-FT")), end="\n\n")
comparison.compare(probe_tests[start], lpft, "fine-tuning the backbone from the probe's head (LP-FT) against the "
                   "probe itself (5.2)", labels=(f"probe {start}", "LP-FT"))

# %% [markdown]
# The failures of the fine-tuned model (LP-FT), fixed in advance as the route shown here:

# %%
failures.failure_gallery(lpft["predictions"], n=12, title="10 · Fine-tuned from the probe's head (LP-FT)",
                         folder=c.figures, name="10_failures")

# %% [markdown]
# ## 6. Record
# Two rows of the roadmap's track past the plan: 5.1 (the probes' ensemble, against the best probe by validation)
# and 5.2 (the LP-FT fine-tune, against its probe).

# %%
c.record("5.1", [probes[label] for label in c.pick(ensemble_of)], ensemble, reference_top1=probe_tests[best_probe],
         reference=f"its best probe by validation ({best_probe})")
c.record("5.2", ft.output_dir, lpft, reference_top1=probe_tests[start])

# %% [markdown]
# ## What we saw
# This run's two rows beside the published figures (this track is past the plan, so the plan has none):

# %%
from helpers.course import expectations

expectations.table(c, phases=["5.1", "5.2"])

# %% [markdown]
# **How to read it.** Every route above was tested on the same photos, so each comparison carries its paired test.
# Three questions, each with its line: does combining backbones beat the best one (concatenated features, or the
# mean of the probes); does fine-tuning the backbone beat the frozen features (LP-FT against its probe); and does the
# probe's head help the fine-tune (LP-FT against the same fine-tune from a new head). The demo's routes land on the
# demo's scale, nowhere near the plan's 95%: that figure is what these routes reach with the large models of the
# full profile (Radford et al. 2021).
#
# **Why LP-FT can land below its probe at this scale.** (1) The demo fine-tunes one epoch: the run's best checkpoint
# is that epoch's end, and the starting point (the probe itself) is not a candidate. (2) Once the backbone moves, its
# features change in scale and direction and the probe's head, fitted with a strong L2 penalty on the frozen,
# normalised features, no longer fits them; one epoch on 360 photos is too little to re-fit. (3) The probe was fitted
# on the evaluation view of each photo, the fine-tune trains on random crops. On food-101-mini the same pattern held
# over 6 epochs: validation top-1 fell from 85.0% to 70% once the backbone trained and recovered to 83.3% by epoch 6
# ([the probe table](../docs/past-95.md)), so at that scale the probe's head saved no epochs. LP-FT pays when the
# features are already excellent (CLIP, EVA-02) and the fine-tune is gentle (layer decay, a low rate, EMA), which is
# the full profile's recipe; the control shows what the probe's head is worth on your run.
#
# **Why the demo's ranking differs from the published one.** ImageNet-1k lite features are far weaker than CLIP's or
# SigLIP's (trained on hundreds of millions of image-text pairs): on lite features a fine-tune can beat a probe, on
# CLIP ViT-L/14@336 features a probe alone reaches 95.9% on Food-101 (Radford et al. 2021, Table 10), above any
# fine-tune of the plan's models. EfficientNet-L2 fine-tuned with SAM reaches 96.2% (Foret et al. 2020).

# %% [markdown]
# ## Questions
# 1. What is a linear probe, and why does it fit in seconds once the features are cached?
# 2. Why are the features L2-normalised, and each backbone's separately before they are concatenated?
# 3. What would overfitting look like at the left end of the L2 sweep figure, and underfitting at the right, and why
#    is the strength chosen on val?
# 4. Why does this probe fit on train only, where CLIP refits on train + val?
# 5. How does LP-FT differ from 05's two stages?
# 6. With layer decay 0.8, how much slower than the head does a block 5 levels below it learn?
# 7. Why can LP-FT land below its own probe after a one-epoch fine-tune, and what does the new-head control tell
#    you that the probe cannot?
# 8. Why do lite features and CLIP features rank the probe and the fine-tune differently?
# 9. What does an EMA of the weights average, and why can it cost accuracy on a short run?

# %% [markdown]
# ## Try it
# Change one literal in the parameters cell and re-run the notebook: changed fine-tunes train in folders named after
# the change, and features and probes are cached in folders named after every setting they depend on, so a change
# computes new ones beside the old.
# 1. `finetune["demo"]["layer_decay"] = 0.65` (from `0.8`; run by the tests): the full profile's decay, the lower
#    blocks moving less. Does LP-FT stay closer to its probe?
# 2. `finetune["demo"]["epochs"] = 4` (from `1`): give LP-FT time to recover from the first epoch.
# 3. `views["demo"] = 2` (from `1`): each photo's features averaged with its mirror's (new features, new probes). Do
#    the probes gain?
# 4. `finetune_from["demo"] = "lite2"`: LP-FT from the largest lite backbone's probe.

# %% [markdown]
# ## Further reading
# - Radford et al. 2021, [Learning Transferable Visual Models From Natural Language Supervision (CLIP)](https://arxiv.org/abs/2103.00020) (Table 10: linear probes, Food-101 95.9% for ViT-L/14@336).
# - Zhai et al. 2023, [Sigmoid Loss for Language Image Pre-Training (SigLIP)](https://arxiv.org/abs/2303.15343).
# - Oquab et al. 2023, [DINOv2](https://arxiv.org/abs/2304.07193); Fang et al. 2023, [EVA-02](https://arxiv.org/abs/2303.11331).
# - Kumar et al. 2022, [LP-FT](https://arxiv.org/abs/2202.10054); Bao et al. 2021, [BEiT](https://arxiv.org/abs/2106.08254) (layer-wise learning-rate decay for ViT fine-tuning).
# - Foret et al. 2020, [Sharpness-Aware Minimization](https://arxiv.org/abs/2010.01412) (Table 3: Food-101).
# - Izmailov et al. 2018, [Averaging Weights Leads to Wider Optima and Better Generalization](https://arxiv.org/abs/1803.05407) (weight averaging; EMA is its running form); timm, [ModelEmaV3](https://huggingface.co/docs/timm/reference/utils).
# - scikit-learn, [LogisticRegression](https://scikit-learn.org/stable/modules/generated/sklearn.linear_model.LogisticRegression.html) (the C parameter).
