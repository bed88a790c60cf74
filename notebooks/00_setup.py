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
# # 00 · Setup: environment, device and data
#
# The Food-101 workbook takes an image classifier from a baseline toward the plan in
# `TRAINING_STRATEGY.md`, one technique per notebook. Every notebook is thin: the data, augmentation, models,
# training loop and evaluation live in the `helpers` package; the notebooks set parameters, call it and show
# what happened in pictures.
#
# **Profiles.** `demo` runs the whole course on the tiny real Food-101 subset shipped in the repo (10 classes,
# 400 train+val and 150 test photos) with offline `tf_efficientnet_lite0/1/2` weights standing in for the
# plan's models: minutes on a laptop CPU; it shows what the pipeline does, not what a technique is worth (on 150
# test photos a difference of a few points is noise). `medium` is a fixed 10% of Food-101 (75 train and 25 test
# photos of each of the 101 classes, the same ids for everyone) with the same offline weights at their own
# sizes: an evening on an Apple-silicon Mac, and 2,525 test photos (about ±1.6 points at 80%), enough to tell
# the techniques apart. Make it once from the full download:
# `python -m helpers prepare --data-dir data/food-101 --out data/food-101-medium --short-side 288 --per-class 75,25`.
# `full` uses Food-101 (101 classes, 101,000 photos) at the plan's settings on MPS or CUDA: hours per notebook.
# `ci` is demo shrunk to check that everything runs.
#
# **Running.** Open a notebook in JupyterLab and run it, or run the course headlessly:
# `python -m helpers run-notebooks --profile demo` (the README's `make demo`). A notebook re-run after a
# crash resumes its training from the last checkpoint. Each notebook appends its result to a ledger that
# `12_results` turns into the plan's roadmap table with measured numbers.
#
# This notebook checks the environment, the device and the data.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
download = False  # full: fetch Food-101 (about 5 GB) with torchvision when data_dir has no dataset

# %%
from helpers.course import course, environment, previews

c = course.Course("00_setup", profile, data_dir=data_dir, device=device)
environment.environment(device)

# %% [markdown]
# The device line is what training will use. On a Mac, `mps_available` must be True for the full profile; on a
# GPU machine, `cuda_available`. The demo profile is made for the CPU.

# %%
counts = environment.split_counts(c.data_dir, download=download)
print(f"{len(counts)} classes in {c.data_dir}: {counts.sum().to_dict()} photos (train, val, test)")
counts.head(12)

# %% [markdown]
# The validation split is carved out of the official train list (seeded and stratified); early stopping and
# the best checkpoint use it. The test split is the official test list, evaluated once at the end.
#
# The backbones the profile trains (read from each notebook's `SETTINGS`), and whether their pretrained
# weights are at hand:

# %%
environment.weights_status(c.root / "notebooks", profile)

# %%
samples = environment.sample_images(c.data_dir, "train")
previews.class_samples(samples, cols=5 if len(samples) <= 20 else 10, folder=c.figures, name="00_class_samples",
                       title=f"One training photo per class ({len(samples)} classes)")

# %% [markdown]
# ## What to expect: the plan, the published figures and this run
# Each phase of the plan with three numbers: the plan's expectation on full Food-101, a published full-scale figure
# (the source is in the row; where no paper measured the technique on Food-101, the technique's own paper on
# ImageNet), and this profile's figure from the results ledger once the notebook has run:

# %%
from helpers.course import expectations

expectations.table(c)

# %% [markdown]
# **Why the demo's numbers differ from both.** The demo trains stand-ins (efficientnet-lite0/1/2 at 112-160 px) for
# 2-5 epochs on 360 photos of 10 classes and tests on 150, where the plan trains B0-B4 and ResNets at 224-384 px for
# 50-150 epochs on 75,750 photos of 101 classes. So the demo's top-1 is on another scale (chance is 10%, not 1%),
# its models are smaller and barely trained, and one test photo is 0.67 points: the 95% interval of every demo
# number is about ±7 points, and most demo comparisons are "within noise". Techniques made for long training
# (schedules with restarts, strong augmentation, mixup) usually *cost* accuracy in a few epochs. The demo shows
# what each technique does and how to measure it; the `full` profile measures what it is worth.
#
# **And the plan differs from print.** The plan's baseline (75-80%) is below published fine-tunes of similar
# models (about 90%), and its final 95.5-99.5% is above the best published EfficientNet on Food-101 (B7: 93.0%):
# the plan's ladder tops out near 93%. Notebook `10_beyond_95` takes the routes that pass 95% in print.
#
# **Does the device train like the CPU?** The doctor (`python -m helpers doctor` on the command line) runs a few
# training steps of a small model on the device and on the CPU from the same weights and batch, compares the
# losses, gradients and updated weights, checks that batches reach the device intact, and measures the
# device's training images/s. On a Mac this is the check before a night of training: a disagreement stops here,
# naming what differs and the setting that avoids it.

# %%
from helpers.commands import doctor

DOCTOR = {"full": dict(backbone="efficientnet_b0", image_size=224, batch_size=16, steps=3, bench_steps=5),
          "demo": dict(backbone="tf_efficientnet_lite0", image_size=112, batch_size=8, steps=2, bench_steps=2),
          "medium": dict(backbone="tf_efficientnet_lite0", image_size=224, batch_size=16, steps=3, bench_steps=5)}
check = doctor.run_doctor(device=device, data_dir=str(c.data_dir), **(DOCTOR["demo"] if c.rehearse else c.pick(DOCTOR)))
print(doctor.format_table(check))
if check["disagreements"]:
    raise doctor.DeviceDisagrees(" ".join(check["disagreements"]))

# %% [markdown]
# Everything is in place when the cells above ran without errors. Next: `01_baseline`.
