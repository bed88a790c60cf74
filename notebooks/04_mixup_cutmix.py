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
# # 04 · Mixup and CutMix
#
# **Technique.** Batch-level augmentation: **mixup** blends two photos and their labels with a weight drawn from
# Beta(α, α) (α = 0.2: mostly one photo with a faint second one); **CutMix** pastes a rectangle of one photo
# into another and mixes the labels by area (α = 1.0). The trainer picks one of the two per batch (timm's
# `Mixup`) and trains on the soft labels. The model can no longer be sure, which regularises it.
#
# **What the plan expects.** +2-4% with 150 epochs (the table: +3%, to 88.5-92.5%). Mixing needs long training
# to pay off; with few epochs it usually costs accuracy. The training accuracy below is measured on mixed
# photos, so it sits under the validation accuracy.
#
# **The comparison.** The run with mixing against the same recipe without it (3.2's run of `03`: reused when its
# settings are this notebook's, trained here when a Try it changes the recipe), so mixing is the only difference.
#
# **Demo profile.** The 3.2 recipe (lite2 at 112 px, advanced augmentation, restarts) plus mixup and CutMix
# (medium: the same at 260 px for 10 epochs).

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# The run's settings per profile (any TrainConfig field): full is the plan's, medium and demo stand-ins.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=300, batch_size=16, epochs=150,
                 warmup_epochs=5, early_stopping=True, patience=15),
    "medium": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=260, batch_size=32, epochs=10,
                   early_stopping=True, patience=4, restart_epochs=5),
    "demo": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=112, batch_size=32, epochs=3,
                 warmup_epochs=0.5, restart_epochs=2),
}
RECIPE = dict(scheduler="cosine_restart", lr=3e-3, augment="advanced")  # 3.2's run
TECHNIQUE = dict(mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0)  # one of the two per batch
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers.course import comparison, course, failures, plots, previews
from helpers.data import loaders
from helpers.training import recipe

c = course.Course("04_mixup_cutmix", profile, data_dir=data_dir, device=device)
cfg = c.config("mixup", {**c.pick(SETTINGS), **RECIPE, **TECHNIQUE, **overrides})
# the same recipe without mixing: 3.2's run of 03 when the settings are the same (reused, not trained again)
without_cfg = c.config("without-mixing", {**c.pick(SETTINGS), **RECIPE, **overrides})
cfg

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

# %% [markdown]
# ## What the trainer sees
# Four test photos of different classes, without any other augmentation, through the trainer's own `Mixup`
# (`recipe.make_mixup(cfg)`, the object `helpers.train` uses) with its weight fixed instead of drawn
# (`recipe.mix_fixed`): image *i* is mixed with image *N-1-i*. **Mixup** at λ = 0.6 blends 0.6 of one photo with
# 0.4 of the other; **CutMix** at λ = 0.6 pastes a box of about 0.4 of the area (less where the box is clipped at
# the border) and labels by the area actually pasted. Under each mixed image its soft target, the two largest
# shares. The mixed target mixes the label-smoothed targets of 01 (0.91 on the true class, 0.01 on each other):
# 0.6 × 0.91 + 0.4 × 0.01 ≈ 0.55 and 0.4 × 0.91 + 0.6 × 0.01 ≈ 0.37.
#
# In training λ is drawn per batch from Beta(α, α): with mixup's α = 0.2 most draws are close to 0 or 1 (a photo
# with a faint ghost of another), with CutMix's α = 1.0 any share is as likely as any other.

# %%
images, labels, class_names = loaders.sample_batch(cfg, n=4, train=False, one_per_class=True)
mixes = {"mixup, λ = 0.6": recipe.mix_fixed(cfg, images, labels, len(class_names), lam=0.6, cutmix=False),
         "CutMix, λ = 0.6": recipe.mix_fixed(cfg, images, labels, len(class_names), lam=0.6, cutmix=True)}
previews.mixed_batch(images, mixes, class_names=class_names, folder=c.figures, name="04_mix_preview",
                     title="Mixup and CutMix at a fixed λ = 0.6 (the trainer's Mixup): photo 1 mixed with 4, 2 with 3; "
                        "the soft targets below")

# %% [markdown]
# ## Train
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(without_cfg)  # the log says when it is 03's run, reused
helpers.train(cfg)
runs = {"3.2 without mixing": without_cfg.output_dir, "3.3 mixup + CutMix": cfg.output_dir}
plots.training_curves(runs, title="04 · Mixup and CutMix", folder=c.figures, name="04_training_curves")

# %% [markdown]
# What differs from 3.2's run: mixup and CutMix alone (same backbone, size, epochs, schedule, rate and
# augmentation).

# %%
test = c.evaluate(cfg.output_dir)
without = c.evaluate(without_cfg.output_dir)
comparison.compare(without, test, "mixup and CutMix alone (3.2's recipe without and with them)",
                   labels=("3.2 without mixing", "3.3 mixup + CutMix"))

# %%
plots.compare_top1({"3.2 advanced augmentation": without, "3.3 mixup + CutMix": test},
                   highlight="3.3 mixup + CutMix", title="04 · Test top-1 with and without mixing", folder=c.figures,
                   name="04_compare")

# %%
failures.prediction_changes(without["predictions"], test["predictions"], labels=("3.2", "3.3"), folder=c.figures,
                            name="04_changes")

# %%
failures.error_analysis(test["predictions"], title="04 · Mixup and CutMix", prefix="04",
                        compare_with="03 (the same recipe without mixing)", folder=c.figures)

# %%
c.record("3.3", cfg.output_dir, test, reference_top1=without)

# %% [markdown]
# ## What we saw
# This run's mixing beside the plan's figure and the published one:

# %%
from helpers.course import expectations

expectations.table(c, phases=["3.3"])

# %% [markdown]
# **How to read it.** The comparison above changes one thing, the mixing, and its paired test says whether the
# photos it fixed and broke split unevenly enough to be real. Read the training curves beside it: the training
# top-1 of the mixing run is measured on mixed photos, so it sits below the validation top-1; what matters is whether
# the validation curve is still climbing when the run ends (the run underfits: it needed more epochs) or has flattened.
#
# **Why mixing often costs accuracy in a short run.** Too little training for this much regularisation. The demo has
# about 12 optimizer steps an epoch and 3 epochs; every batch is mixed (`mix_prob=1.0`), half of them by CutMix with
# α = 1 (λ uniform: on average half of each photo is another dish), on top of the advanced augmentation and label
# smoothing. The targets are soft, so each step pushes the true class less, and the first epoch trains the new head
# alone on mixed photos too; the preview above shows how little of one class some mixed photos keep. Over 6 epochs
# on food-101-mini mixing cost 2.0 points
# ([the measured ladder](../docs/notebooks.md#measured-the-technique-ladder-on-food-101-mini)); mixup's published
# gains come from runs of 200-300 epochs (Zhang et al. 2018).
#
# **What full Food-101 gives.** The plan expects +3% over 150 epochs (88.5-92.5%). No Food-101 ablation is
# published; on ImageNet, CutMix lifted a ResNet-50 from 76.3% to 78.6% over 300 epochs (Yun et al. 2019, Table 3),
# and mixup by a smaller margin in the same table.

# %% [markdown]
# ## Questions
# 1. Why does mixing usually cost accuracy in a run as short as the demo's, when the same technique gains points
#    on ImageNet?
# 2. What is the mixed target of an image that is 0.7 a steak and 0.3 a pizza, with label smoothing 0.1 over 10
#    classes?
# 3. Beta(0.2, 0.2) and Beta(1, 1): sketch both. Which gives mostly one photo with a faint second one?
# 4. CutMix mixes labels by area. Why is that a more honest target than mixup's for a pasted rectangle?
# 5. Why does the training accuracy of a mixup run sit below its validation accuracy?
# 6. Which would you drop first if a short run underfits: advanced augmentation, label smoothing or mixing? How
#    would you test your choice with one change?
# 7. Why is this run compared with 3.2 and not with the baseline of 01?

# %% [markdown]
# ## Try it
# Change one literal in the parameters cell and re-run the notebook: the changed runs train in folders named after
# the change, beside the course's runs (which 05, 08 and 09 keep reading).
# 1. `TECHNIQUE["mixup_alpha"] = 1.0` (from `0.2`; run by the tests): λ uniform, so blends are strong. Look at the
#    preview's mixed images and the test top-1.
# 2. `TECHNIQUE["cutmix"] = False`: mixup alone, on every batch. Does the loss come from CutMix?
# 3. `RECIPE["augment"] = "light"` (from `"advanced"`): mixing without the advanced augmentation, against the same
#    light recipe without mixing (trained here for the comparison). Does the run still underfit?
# 4. `SETTINGS["demo"]["epochs"] = 12` (from `3`): give mixing time (both runs grow). Watch the gap between training
#    and validation curves close.

# %% [markdown]
# ## Further reading
# - Zhang et al. 2018, [mixup: Beyond Empirical Risk Minimization](https://arxiv.org/abs/1710.09412).
# - Yun et al. 2019, [CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features](https://arxiv.org/abs/1905.04899).
# - Müller, Kornblith, Hinton 2019, [When Does Label Smoothing Help?](https://arxiv.org/abs/1906.02629).
# - timm documentation, [Mixup and CutMix (`timm.data.Mixup`)](https://huggingface.co/docs/timm/reference/data).
# - fastbook, [chapter 7: mixup and label smoothing](https://github.com/fastai/fastbook/blob/master/07_sizing_and_tta.ipynb).
