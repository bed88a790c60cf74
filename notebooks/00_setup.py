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
# plan's models: minutes on a laptop CPU; it shows what the pipeline does, not what a technique is worth (150
# test photos tell only large differences apart: the cell below prints how large). `medium` is a fixed tenth of
# Food-101 (75 train and 25 test photos of each of the 101 classes, the same ids for everyone) with the same
# offline weights at their own sizes: an evening on an Apple-silicon Mac, and 2,525 test photos, enough to tell
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
# **Trying things.** Every notebook ends with experiments ("Try it") that each change one literal of its parameters
# cell: change it and re-run the notebook. The run trains into a folder named after the change, beside the
# course's run (`models/01_baseline/baseline~lr=0.0003` next to `models/01_baseline/baseline`); nothing is deleted,
# and later notebooks keep reading the course's runs. A setting changed back finds its run again, and a run whose
# settings equal one the course trained already is reused rather than trained twice.
#
# **Numbers.** The text of every notebook explains what a technique does and what to look for; the numbers of your
# run are printed by its cells (each comparison with both 95% intervals, the photos it fixed and broke and the
# paired test), beside the plan's figures and published ones. What one profile's test split can tell is printed
# below.
#
# This notebook checks the environment, the device and the data, and says how long the course takes.

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
# What this test split can tell: one photo's worth in points, how wide the 95% interval of one top-1 is, and the
# fewest photos a change must fix (breaking none) before the paired test calls it real. A comparison of two runs on
# these photos is decided by that paired test (the exact McNemar test on the photos one run gets right and the
# other wrong), never by whether two intervals overlap.

# %%
environment.test_noise(counts["test"].sum())

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
# ## How long it takes
# Each notebook in each profile, on the machine the figure is for (`docs/times.csv`): the demo's minutes are
# measured, the medium's estimated by arithmetic (`scripts/medium_estimate.py`), the full profile's are the plan's
# hours. Each notebook prints its own row at its start.

# %%
from helpers.course import times

times.overview(c.root)

# %% [markdown]
# ## What to expect: the plan, the published figures and this run
# Each phase of the plan with three numbers: the plan's expectation on full Food-101, a published full-scale figure
# (the source is in the row; where no paper measured the technique on Food-101, the technique's own paper on
# ImageNet), and this profile's figure from the results ledger once the notebook has run:

# %%
from helpers.course import expectations

expectations.table(c)

# %% [markdown]
# **Why the demo's numbers differ from both.** The demo trains stand-ins (efficientnet-lite0/1/2 at 96-144 px) for
# 1-3 epochs on 360 photos of 10 classes and tests on 150, where the plan trains B0-B4 and ResNets at 224-384 px for
# 50-150 epochs on 75,750 photos of 101 classes. So the demo's top-1 is on another scale (chance is one in ten, not
# one in 101), its models are smaller and barely trained, and its test split tells only large differences apart
# (the table above): many of its comparisons end "within noise". Techniques made for long training (schedules with
# restarts, strong augmentation, mixup) usually *cost* accuracy in a few epochs. The demo shows what each technique
# does and how to measure it; the `medium` profile tells the techniques apart, and the `full` profile measures what
# they are worth.
#
# **And the plan differs from print.** The plan's baseline (75-80%) is below published fine-tunes of similar
# models (a ResNet-50 with fastai: 90.5%, Redkar et al. 2019), and its final 95.5-99.5% is above the best
# published EfficientNet on Food-101 (B7: 93.0%, Tan & Le 2019), so the plan's ladder tops out near 93%. Notebook
# `10_beyond_95` takes the routes that pass the plan's 95% in print.
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
