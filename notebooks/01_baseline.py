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
# # 01 · Baseline: EfficientNet-B0 at 224 px
#
# **Technique.** Fine-tune an ImageNet-pretrained EfficientNet-B0 with a new 101-class head: AdamW, a linear
# warmup then cosine decay, label smoothing 0.1, and the plan's "current" augmentations (random resized crop,
# flip, colour jitter, shift/scale/rotate, cutout).
#
# **What the plan expects.** Phase 1: 75-80% top-1 after 50 epochs at batch 24 (6-8 hours on MPS). Its purpose
# is to verify the pipeline and to look at the failure cases, which is what the pictures below are for.
#
# **Demo profile.** `tf_efficientnet_lite0` (a B0 without squeeze-excitation, with offline weights) at 112 px
# for a few epochs on 10 classes: the numbers are not comparable with the plan's, the pictures and the code are
# the same.

# %% tags=["parameters"]
profile = "demo"  # demo: the tiny set, CPU minutes · full: Food-101 at the plan's settings (MPS/CUDA) · ci: smoke test
data_dir = None  # None: the profile's data (demo, ci: data/food-101-tiny; full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
output_dir = None  # None: runs/course-<profile>; `python -m helpers run-notebooks` passes its run folder
ledger = None  # None: runs/ledger.csv, the results ledger of every run
rehearse = False  # True: this chain with random weights, 2 steps a run, small images (run-notebooks --rehearse)
# The run's settings in each profile (any TrainConfig field): full is the plan's, demo a CPU-sized stand-in.
SETTINGS = {
    "full": dict(backbone="efficientnet_b0", pretrained="hub", image_size=224, batch_size=24, epochs=50),
    "demo": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=112, batch_size=32, epochs=4,
                 warmup_epochs=0.5),
    "ci": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=64, batch_size=32, epochs=1,
               warmup_epochs=0.5),
}
TECHNIQUE = dict(augment="basic", lr=3e-3)  # the plan's baseline: AdamW, cosine schedule, "current augmentations"
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers import analysis, course, plots, widgets

c = course.Course("01_baseline", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger,
                  rehearse=rehearse)
cfg = c.config("baseline", {**SETTINGS[profile], **TECHNIQUE, **overrides})
cfg

# %% [markdown]
# ## Train
# `helpers.train` validates every epoch, keeps the best weights (by validation top-1) and tests them once at the
# end. If this cell is interrupted, running it again continues from the last checkpoint.

# %%
summary = helpers.train(cfg)
summary

# %%
plots.training_curves({"baseline": cfg.output_dir}, title="01 · Baseline training", folder=c.figures,
                      name="01_training_curves")

# %% [markdown]
# ## Where it fails
# Per-image predictions on the test split drive the pictures: the confusion matrix, the pairs of classes
# mistaken most often, and the most confident mistakes.

# %%
test = c.evaluate(cfg.output_dir)
print(f"test top-1 {test['top1']:.1f}% (95% interval {analysis.with_interval(test['top1'], test['n'])}), "
      f"top-5 {test['top5']:.1f}% on {test['n']} photos")
plots.confusion_matrix(test["predictions"], title="01 · Baseline", folder=c.figures, name="01_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="01_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="01 · Baseline", folder=c.figures, name="01_failures")

# %%
c.record("baseline", cfg.output_dir, test)

# %% [markdown]
# Pick a class or a confused pair and page through its failures (interactive in JupyterLab):
# (It comes after the training cells: a widget cannot respond while a cell below it trains.)

# %%
widgets.failure_explorer(test["predictions"])
