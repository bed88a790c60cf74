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
# # 03 · Longer training, a better schedule, and stronger augmentation
#
# **Techniques.** Two steps of the plan, each measured on its own:
# - **3.1 schedule:** more epochs (150), a 5-epoch warmup, cosine annealing with warm restarts and early stopping
#   on validation top-1 (patience 15). Expected: +2-3%.
# - **3.2 advanced augmentation:** on top, random brightness/contrast, hue/saturation, Gaussian noise and blur,
#   gamma, and a stronger cutout. Expected: +1-2%. The plan's arguments are albumentations 1.x; `helpers.augment`
#   translates them to the 2.x API (for example `var_limit` becomes `std_range`).
#
# **Demo profile.** lite2 at 128 px for 5 epochs, restarts every 2 epochs. On 360 training photos a few epochs
# cannot show what 150 epochs do: the pictures of the augmentations are the point here.

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
SCHEDULE = dict(scheduler="cosine_restart", early_stopping=True, lr=3e-3)  # 3.1: restarts, warmup, early stopping
AUGMENT = {"3.1": "basic", "3.2": "advanced"}  # 3.2: the same run with the plan's advanced augmentation
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers import course, plots, widgets

c = course.Course("03_augmentations", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger, rehearse=rehearse)
schedule = c.config("schedule", {**SETTINGS[profile], **SCHEDULE, "augment": AUGMENT["3.1"], **overrides})
advanced = c.config("advanced", {**SETTINGS[profile], **SCHEDULE, "augment": AUGMENT["3.2"], **overrides})
advanced

# %% [markdown]
# ## What the augmentations do
# The same training photo through each preset (a row each, random draws), then every step of the advanced
# preset on its own.

# %%
from helpers import environment

photos = environment.sample_images(c.data_dir, "train")
plots.augmentation_preview(photos[0][0], size=advanced.image_size, folder=c.figures, name="03_augmentation_preview")

# %%
plots.transform_steps(photos[1][0], preset="advanced", size=advanced.image_size, folder=c.figures,
                      name="03_advanced_steps")

# %% [markdown]
# ## Train both runs
# A re-run after a crash continues each from its last checkpoint.

# %%
helpers.train(schedule)
helpers.train(advanced)
plots.training_curves({"3.1 schedule": schedule.output_dir, "3.2 advanced augmentation": advanced.output_dir},
                      title="03 · Schedule with restarts, then advanced augmentation", folder=c.figures,
                      name="03_training_curves")

# %%
tests = {"3.1 schedule": c.evaluate(schedule.output_dir), "3.2 advanced": c.evaluate(advanced.output_dir)}
b3 = c.test_result("02_b3_upgrade", "b3")
plots.compare_top1({"B3 (02)": b3, **tests}, highlight="3.2 advanced", title="03 · Test top-1, step by step",
                   folder=c.figures, name="03_compare")

# %% [markdown]
# ## What the stronger augmentation changed
# Photos the 3.2 model gets right and the 3.1 model got wrong (fixed), and the reverse (broken).

# %%
test = tests["3.2 advanced"]
plots.prediction_changes(tests["3.1 schedule"]["predictions"], test["predictions"], labels=("3.1", "3.2"),
                         folder=c.figures, name="03_changes")

# %%
plots.confusion_matrix(test["predictions"], title="03 · Advanced augmentation", folder=c.figures,
                       name="03_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="03_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="03 · Advanced augmentation", folder=c.figures,
                      name="03_failures")

# %%
c.record("3.1", schedule.output_dir, tests["3.1 schedule"], reference_top1=b3["top1"])
c.record("3.2", advanced.output_dir, test, reference_top1=tests["3.1 schedule"]["top1"])

# %% [markdown]
# Pick a photo and a preset, and move the seed (after the training cells: a widget cannot respond while a
# cell below it trains):

# %%
widgets.augmentation_explorer(photos, size=advanced.image_size)
