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
# **Demo profile.** The 3.2 recipe (lite2 at 128 px, advanced augmentation, restarts) plus mixup and CutMix.

# %% tags=["parameters"]
profile = "demo"  # demo: the tiny set, CPU minutes · full: Food-101 at the plan's settings (MPS/CUDA) · ci: smoke test
data_dir = None  # None: the profile's data (demo, ci: data/food-101-tiny; full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
output_dir = None  # None: runs/course-<profile>; `python -m helpers run-notebooks` passes its run folder
ledger = None  # None: runs/ledger.csv, the results ledger of every run
rehearse = False  # True: this chain with random weights, 2 steps a run, small images (run-notebooks --rehearse)
# The run's settings in each profile (any TrainConfig field): full is the plan's, demo a CPU-sized stand-in.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=300, batch_size=16, epochs=150,
                 warmup_epochs=5, patience=15),
    "demo": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=128, batch_size=32, epochs=5,
                 warmup_epochs=1, patience=4, restart_epochs=2),
    "ci": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=64, batch_size=32, epochs=1,
               warmup_epochs=0.5, patience=4, restart_epochs=2),
}
RECIPE = dict(scheduler="cosine_restart", early_stopping=True, lr=3e-3, augment="advanced")  # 3.2's run
TECHNIQUE = dict(mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0)  # one of the two per batch
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers import course, engine, plots

c = course.Course("04_mixup_cutmix", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger,
                  rehearse=rehearse)
cfg = c.config("mixup", {**SETTINGS[profile], **RECIPE, **TECHNIQUE, **overrides})
cfg

# %% [markdown]
# ## What the trainer sees
# One batch as the trainer's loader gives it, then through the trainer's own `Mixup` (`engine.make_mixup(cfg)`,
# the object `helpers.train` uses): per batch either mixup or CutMix, image *i* mixed with image *N-1-i*. Each
# mixed image is labelled with its soft target (label smoothing included), which the loss is computed against.

# %%
images, labels, class_names = engine.sample_batch(cfg, n=8)
mixup = engine.make_mixup(cfg, num_classes=len(class_names))
mixed, targets = mixup(images.float() / 255, labels)
plots.mixed_batch(images, mixed, targets, class_names, folder=c.figures, name="04_mix_preview")

# %% [markdown]
# ## Train
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
runs = {"3.3 mixup + CutMix": cfg.output_dir}
previous = c.run_dir("03_augmentations", "advanced")
if (previous / "metrics.csv").is_file():
    runs = {"3.2 without mixing (03)": previous, **runs}
plots.training_curves(runs, title="04 · Mixup and CutMix", folder=c.figures, name="04_training_curves")

# %%
test = c.evaluate(cfg.output_dir)
without = c.test_result("03_augmentations", "advanced")
plots.compare_top1({"3.2 advanced augmentation (03)": without, "3.3 mixup + CutMix": test},
                   highlight="3.3 mixup + CutMix", title="04 · Test top-1 with and without mixing", folder=c.figures,
                   name="04_compare")

# %%
plots.confusion_matrix(test["predictions"], title="04 · Mixup and CutMix", folder=c.figures,
                       name="04_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="04_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="04 · Mixup and CutMix", folder=c.figures,
                      name="04_failures")

# %%
c.record("3.3", cfg.output_dir, test, reference_top1=without["top1"])
