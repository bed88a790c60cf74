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
# Set by `run-notebooks` (papermill passes them) and the tests; leave them: run folder, ledger, --rehearse
output_dir, ledger, rehearse = None, None, False

# %%
from helpers import course, environment, plots

c = course.Course("00_setup", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger,
                  rehearse=rehearse)
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
plots.class_samples(samples, cols=5 if len(samples) <= 20 else 10, folder=c.figures, name="00_class_samples",
                    title=f"One training photo per class ({len(samples)} classes)")

# %% [markdown]
# Everything is in place when the cells above ran without errors. Next: `01_baseline`.
