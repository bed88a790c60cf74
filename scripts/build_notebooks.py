"""Build the course's notebooks (notebooks/NN_name.ipynb) from the readable sources below.

    python scripts/build_notebooks.py            # write the notebooks
    python scripts/build_notebooks.py --check    # exit 1 when a committed notebook differs from its source

Each source is in the "percent" format: `# %% [markdown]` starts a markdown cell (its lines start with `# `),
`# %%` a code cell, and `# %% parameters` the code cell tagged `parameters` for papermill. In a parameters cell,
a comment `# <run>:<field>` is replaced by that setting's value in every profile (from helpers.course), so the
notebooks always show the values the profiles really use. The notebooks are written without outputs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import course  # noqa: E402

COMMON = '''\
profile = "demo"  # demo: the tiny set, CPU minutes · full: Food-101 at the plan's settings (MPS/CUDA) · ci: smoke test
data_dir = None  # None: the profile's data (demo, ci: data/food-101-tiny; full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
output_dir = None  # None: runs/course-<profile>; `python -m helpers run-notebooks` passes its run folder
ledger = None  # None: runs/ledger.csv, the results ledger of every run'''

TRAIN_HINT = '''\
overrides = {}  # any other TrainConfig setting, e.g. {"num_workers": 2, "augment": "light"}'''

SOURCES: dict[str, str] = {}

SOURCES["00_setup"] = f'''
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
# plan's models: minutes on a laptop CPU. `full` uses Food-101 (101 classes, 101,000 photos) at the plan's
# settings on MPS or CUDA: hours per notebook. `ci` is demo shrunk to check that everything runs.
#
# **Running.** Open a notebook in JupyterLab and run it, or run the course headlessly:
# `python -m helpers run-notebooks --profile demo` (the README's `make demo`). A notebook re-run after a
# crash resumes its training from the last checkpoint. Each notebook appends its result to a ledger that
# `10_results` turns into the plan's roadmap table with measured numbers.
#
# This notebook checks the environment, the device and the data.

# %% parameters
{COMMON}
download = False  # full: fetch Food-101 (about 5 GB) with torchvision when data_dir has no dataset

# %%
import helpers
from helpers import course, plots

c = course.Course("00_setup", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
c.environment()

# %% [markdown]
# The device line is what training will use. On a Mac, `mps_available` must be True for the full profile; on a
# GPU machine, `cuda_available`. The demo profile is made for the CPU.

# %%
counts = c.check_data(download=download)
print(f"{{len(counts)}} classes in {{c.data_dir}}: {{counts.sum().to_dict()}} photos (train, val, test)")
counts.head(12)

# %% [markdown]
# The validation split is carved out of the official train list (seeded and stratified); early stopping and
# the best checkpoint use it. The test split is the official test list, evaluated once at the end.
#
# The backbones the profile trains, and whether their pretrained weights are at hand:

# %%
c.check_models()

# %%
samples = c.sample_images("train")
plots.class_samples(samples, cols=5 if len(samples) <= 20 else 10, folder=c.figures, name="00_class_samples",
                    title=f"One training photo per class ({{len(samples)}} classes)")

# %% [markdown]
# Everything is in place when the cells above ran without errors. Next: `01_baseline`.
'''

SOURCES["01_baseline"] = f'''
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

# %% parameters
{COMMON}
# The plan's hyper-parameters; None takes the profile's value.
backbone = None  # baseline:backbone
image_size = None  # baseline:image_size
batch_size = None  # baseline:batch_size
epochs = None  # baseline:epochs
lr = None  # baseline:lr
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots, widgets

c = course.Course("01_baseline", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
cfg = c.config("baseline", backbone=backbone, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr,
               **overrides)
c.describe(cfg)

# %% [markdown]
# ## Train
# `helpers.train` validates every epoch, keeps the best weights (by validation top-1) and tests them once at the
# end. If this cell is interrupted, running it again continues from the last checkpoint.

# %%
summary = helpers.train(cfg)
summary

# %%
plots.training_curves({{"baseline": cfg.output_dir}}, title="01 · Baseline training", folder=c.figures,
                      name="01_training_curves")

# %% [markdown]
# ## Where it fails
# Per-image predictions on the test split drive the pictures: the confusion matrix, the pairs of classes
# mistaken most often, and the most confident mistakes.

# %%
test = c.evaluate(cfg.output_dir)
print(f"test top-1 {{test['top1']:.1f}}%, top-5 {{test['top5']:.1f}}% on {{test['n']}} photos")
plots.confusion_matrix(test["predictions"], title="01 · Baseline", folder=c.figures, name="01_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="01_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="01 · Baseline", folder=c.figures, name="01_failures")

# %% [markdown]
# Pick a class or a confused pair and page through its failures (interactive in JupyterLab):

# %%
widgets.failure_explorer(test["predictions"])

# %%
c.record("baseline", cfg.output_dir, test)
'''

SOURCES["02_b3_upgrade"] = f'''
# %% [markdown]
# # 02 · A larger backbone: EfficientNet-B3 at 300 px (and ResNet-50)
#
# **Technique.** EfficientNet scales depth, width and input resolution together: B3 has about 12M parameters
# (B0: 4.8M) and is meant for 300 px inputs, so the model sees finer texture, which is what separates many
# dishes. The plan's alternative is a ResNet-50 at 224 px.
#
# **What the plan expects.** B3 for 100 epochs at batch 16: +5-7% over the baseline (82-87%), the largest single
# gain of the roadmap. ResNet-50 for 100 epochs at batch 20: +4-6% (80-85%).
#
# **Demo profile.** `tf_efficientnet_lite2` (the largest offline model) at 128 px stands in for B3 and
# `tf_efficientnet_lite1` at 112 px for ResNet-50.

# %% parameters
{COMMON}
# The plan's hyper-parameters for B3; None takes the profile's value.
backbone = None  # b3:backbone
image_size = None  # b3:image_size
batch_size = None  # b3:batch_size
epochs = None  # b3:epochs
lr = None  # b3:lr
# The alternative (ResNet-50); epochs, lr and overrides apply to it too.
train_alternative = True  # False: skip it
alt_backbone = None  # resnet50:backbone
alt_image_size = None  # resnet50:image_size
alt_batch_size = None  # resnet50:batch_size
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots, widgets

c = course.Course("02_b3_upgrade", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
b3 = c.config("b3", backbone=backbone, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr, **overrides)
c.describe(b3)

# %% [markdown]
# ## Train the larger backbone
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(b3)

# %%
runs = {{f"B3 ({{b3.backbone}} @{{b3.image_size}})": b3.output_dir}}  # the model this profile uses for it
if train_alternative:
    alternative = c.config("resnet50", backbone=alt_backbone, image_size=alt_image_size, batch_size=alt_batch_size,
                           epochs=epochs, lr=lr, **overrides)
    helpers.train(alternative)
    runs[f"ResNet-50 alternative ({{alternative.backbone}} @{{alternative.image_size}})"] = alternative.output_dir
plots.training_curves(runs, title="02 · B3 and the alternative", folder=c.figures, name="02_training_curves")

# %% [markdown]
# ## Did it help?
# Test top-1 of each model, against the baseline of `01` when it ran in this output folder.

# %%
tests = {{label: c.evaluate(run) for label, run in runs.items()}}
plots.compare_top1({{"baseline (01)": c.test_top1("01_baseline", "baseline"),
                    **{{label: t["top1"] for label, t in tests.items()}}}},
                   highlight=next(iter(runs)), title="02 · Test top-1 against the baseline", folder=c.figures,
                   name="02_compare")

# %%
test = tests[next(iter(runs))]  # B3
plots.confusion_matrix(test["predictions"], title="02 · B3", folder=c.figures, name="02_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="02_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="02 · B3", folder=c.figures, name="02_failures")

# %%
widgets.failure_explorer(test["predictions"])

# %%
c.record("2.1", b3.output_dir, test)
if train_alternative:
    c.record("2.2", alternative.output_dir, tests[list(runs)[1]])
'''

SOURCES["03_augmentations"] = f'''
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

# %% parameters
{COMMON}
# The plan's hyper-parameters (both runs); None takes the profile's value.
backbone = None  # advanced:backbone
image_size = None  # advanced:image_size
batch_size = None  # advanced:batch_size
epochs = None  # advanced:epochs
lr = None  # advanced:lr
warmup_epochs = None  # advanced:warmup_epochs
patience = None  # advanced:patience
augment = None  # advanced:augment (the 3.2 run)
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots, widgets

c = course.Course("03_augmentations", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger)
common = dict(backbone=backbone, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr,
              warmup_epochs=warmup_epochs, patience=patience, **overrides)
schedule = c.config("schedule", **common)
advanced = c.config("advanced", augment=augment, **common)
c.describe(schedule, advanced)

# %% [markdown]
# ## What the augmentations do
# The same training photo through each preset (a row each, random draws), then every step of the advanced
# preset on its own.

# %%
photos = c.sample_images("train")
plots.augmentation_preview(photos[0][0], size=advanced.image_size, folder=c.figures, name="03_augmentation_preview")

# %%
plots.transform_steps(photos[1][0], preset="advanced", size=advanced.image_size, folder=c.figures,
                      name="03_advanced_steps")

# %% [markdown]
# Pick a photo and a preset, and move the seed:

# %%
widgets.augmentation_explorer(photos, size=advanced.image_size)

# %% [markdown]
# ## Train both runs
# A re-run after a crash continues each from its last checkpoint.

# %%
helpers.train(schedule)
helpers.train(advanced)
plots.training_curves({{"3.1 schedule": schedule.output_dir, "3.2 advanced augmentation": advanced.output_dir}},
                      title="03 · Schedule with restarts, then advanced augmentation", folder=c.figures,
                      name="03_training_curves")

# %%
tests = {{"3.1 schedule": c.evaluate(schedule.output_dir), "3.2 advanced": c.evaluate(advanced.output_dir)}}
plots.compare_top1({{"B3 (02)": c.test_top1("02_b3_upgrade", "b3"),
                    **{{label: t["top1"] for label, t in tests.items()}}}},
                   highlight="3.2 advanced", title="03 · Test top-1, step by step", folder=c.figures,
                   name="03_compare")

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
c.record("3.1", schedule.output_dir, tests["3.1 schedule"])
c.record("3.2", advanced.output_dir, test)
'''

SOURCES["04_mixup_cutmix"] = f'''
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

# %% parameters
{COMMON}
# The plan's hyper-parameters; None takes the profile's value.
backbone = None  # mixup:backbone
image_size = None  # mixup:image_size
batch_size = None  # mixup:batch_size
epochs = None  # mixup:epochs
lr = None  # mixup:lr
mixup_alpha = None  # mixup:mixup_alpha
cutmix_alpha = None  # mixup:cutmix_alpha
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots

c = course.Course("04_mixup_cutmix", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
cfg = c.config("mixup", backbone=backbone, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr,
               mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, **overrides)
c.describe(cfg)

# %% [markdown]
# ## What the trainer sees
# Six photos of a batch, then the same batch mixed: photo *i* is paired with photo *5-i*. Each image is labelled
# with its soft target.

# %%
plots.mix_preview(c.sample_images("train")[:6], size=cfg.image_size, mixup_alpha=cfg.mixup_alpha,
                  cutmix_alpha=cfg.cutmix_alpha, folder=c.figures, name="04_mix_preview")

# %% [markdown]
# ## Train
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
runs = {{"3.3 mixup + CutMix": cfg.output_dir}}
previous = c.run_dir("03_augmentations", "advanced")
if (previous / "metrics.csv").is_file():
    runs = {{"3.2 without mixing (03)": previous, **runs}}
plots.training_curves(runs, title="04 · Mixup and CutMix", folder=c.figures, name="04_training_curves")

# %%
test = c.evaluate(cfg.output_dir)
plots.compare_top1({{"3.2 advanced augmentation (03)": c.test_top1("03_augmentations", "advanced"),
                    "3.3 mixup + CutMix": test["top1"]}}, highlight="3.3 mixup + CutMix",
                   title="04 · Test top-1 with and without mixing", folder=c.figures, name="04_compare")

# %%
plots.confusion_matrix(test["predictions"], title="04 · Mixup and CutMix", folder=c.figures,
                       name="04_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="04_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="04 · Mixup and CutMix", folder=c.figures,
                      name="04_failures")

# %%
c.record("3.3", cfg.output_dir, test)
'''

SOURCES["05_two_stage"] = f'''
# %% [markdown]
# # 05 · Two-stage training with discriminative learning rates
#
# **Technique.** A new head on a pretrained backbone starts random, and its large early gradients flow into the
# backbone and damage the features it came with. So:
# - **stage 1** freezes the backbone and trains only the head (the plan: 10 epochs at lr 1e-3);
# - **stage 2** starts from stage 1's weights and trains everything at a lower rate (the plan: 100 epochs at lr
#   1e-4, with mixup and CutMix), the backbone at a tenth of the head's rate (**3.6 discriminative learning
#   rates**: early layers hold generic features that need little change).
#
# The plan's stage 2 uses `--resume checkpoint.pt`, and so does this one: `resume=<stage 1>/best.pt` with other
# settings starts a new run from stage 1's weights (head included), with its own optimizer and schedule. Once stage
# 2 has its own checkpoint, a re-run continues stage 2 instead.
#
# **What the plan expects.** +2-3% for two-stage training and +1-2% for discriminative rates (the table: +2%).
#
# **Demo profile.** lite2 at 128 px: 2 frozen epochs at lr 1e-2, then 4 epochs at lr 1e-3.

# %% parameters
{COMMON}
# The plan's hyper-parameters; None takes the profile's value.
backbone = None  # stage2:backbone
image_size = None  # stage2:image_size
batch_size = None  # stage2:batch_size
stage1_epochs = None  # stage1:epochs
stage1_lr = None  # stage1:lr
stage2_epochs = None  # stage2:epochs
stage2_lr = None  # stage2:lr
backbone_lr_ratio = None  # stage2:backbone_lr_ratio
epochs = None  # both stages, when the stage's own is None
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots

c = course.Course("05_two_stage", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
common = dict(backbone=backbone, image_size=image_size, batch_size=batch_size, **overrides)
stage1 = c.config("stage1", epochs=stage1_epochs or epochs, lr=stage1_lr, **common)
c.describe(stage1)

# %% [markdown]
# ## Stage 1: only the head learns
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(stage1)

# %% [markdown]
# ## Stage 2: everything learns, the backbone ten times slower

# %%
stage2 = c.config("stage2", epochs=stage2_epochs or epochs, lr=stage2_lr, backbone_lr_ratio=backbone_lr_ratio,
                  **common)
c.describe(stage2)

# %%
helpers.train(stage2)
plots.training_curves({{"stage 1 (frozen backbone)": stage1.output_dir, "stage 2 (fine-tuning)": stage2.output_dir}},
                      sequential=True, title="05 · Two-stage training", folder=c.figures, name="05_training_curves")

# %%
tests = {{"stage 1": c.evaluate(stage1.output_dir), "stage 2": c.evaluate(stage2.output_dir)}}
plots.compare_top1({{"one stage (04)": c.test_top1("04_mixup_cutmix", "mixup"),
                    **{{label: t["top1"] for label, t in tests.items()}}}}, highlight="stage 2",
                   title="05 · Test top-1: one stage against two", folder=c.figures, name="05_compare")

# %%
test = tests["stage 2"]
plots.confusion_matrix(test["predictions"], title="05 · Two-stage", folder=c.figures, name="05_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="05_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="05 · Two-stage", folder=c.figures, name="05_failures")

# %%
c.record("3.5", stage2.output_dir, test)
'''

SOURCES["06_tta"] = f'''
# %% [markdown]
# # 06 · Test-time augmentation
#
# **Technique.** Predict several views of each test photo and average the softmax outputs. `helpers` uses
# deterministic views: the standard centre crop, its mirror, the whole photo and a tight crop, each with its
# mirror (the plan draws random augmentations; fixed views give the same answer every time). No training: it
# costs inference time only, once per view.
#
# **What the plan expects.** +1-2% (the table: +1.5%).
#
# **Here.** The two-stage model of `05`, evaluated with 1 (plain), 2, 4 and 6 views. The number of views is
# fixed in advance: choosing it by test accuracy would flatter the result.

# %% parameters
{COMMON}
model = None  # None: 05_two_stage's stage-2 model; or a run folder
tta_views = None  # None: the profile's (full, demo: [1, 2, 4, 6]; ci: [1, 2]); the ledger takes the largest

# %%
import helpers
from helpers import course, plots

c = course.Course("06_tta", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
model = model or c.require("05_two_stage", "stage2")
views = list(tta_views or c.tta_views())
print(f"model {{model}}, views {{views}}")

# %% [markdown]
# ## The views of one photo

# %%
photo = c.sample_images("test")[0][0]
plots.tta_views(photo, views=max(views), size=c.model_info(model)["image_size"], folder=c.figures,
                name="06_tta_views")

# %% [markdown]
# ## Accuracy against the number of views

# %%
tests = {{v: c.evaluate(model, tta=v) for v in views}}
plots.tta_gain({{v: t["top1"] for v, t in tests.items()}}, folder=c.figures, name="06_tta_gain")

# %% [markdown]
# ## What the views changed
# Photos that averaging the views fixed, and photos it broke.

# %%
plain, test = tests[views[0]], tests[max(views)]
plots.prediction_changes(plain["predictions"], test["predictions"], labels=("1 view", f"{{max(views)}} views"),
                         folder=c.figures, name="06_changes")

# %%
plots.confusion_matrix(test["predictions"], title=f"06 · TTA, {{max(views)}} views", folder=c.figures,
                       name="06_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="06_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title=f"06 · TTA, {{max(views)}} views", folder=c.figures,
                      name="06_failures")

# %%
c.record("3.4", model, test, reference_top1=plain["top1"])
'''

SOURCES["07_high_resolution"] = f'''
# %% [markdown]
# # 07 · Higher resolution
#
# **Technique.** More pixels show finer texture. A model trained with random crops sees objects larger than at
# test time (the "FixRes" effect, Touvron et al. 2019), so testing a little above the training size often helps
# on its own, and a short fine-tune at the higher size helps more. Here the two-stage model of `05` is fine-tuned
# at the higher resolution, starting from its weights (`resume=<05's stage 2>/best.pt`, a new stage).
#
# **What the plan expects.** B3 at 384 px, batch 8, 150 epochs: +1-3% (the table: +1.5%), about 8 more hours.
# Memory grows with the square of the size: batch 8 at 384 px needs about as much as batch 16 at 300 px.
#
# **Demo profile.** A short FixRes-style fine-tune of the lite2: 160 px (from 128), 2 epochs at lr 3e-4 with light
# augmentation and no mixing (the full profile keeps the plan's recipe). On 150 test photos one photo is 0.7
# points: differences of a few points are noise.

# %% parameters
{COMMON}
# The plan's hyper-parameters; None takes the profile's value. The backbone is the one of 05's model.
image_size = None  # hires:image_size
batch_size = None  # hires:batch_size
epochs = None  # hires:epochs
lr = None  # hires:lr
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots

c = course.Course("07_high_resolution", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger)
source = c.require("05_two_stage", "stage2")
cfg = c.config("hires", image_size=image_size, batch_size=batch_size, epochs=epochs, lr=lr, **overrides)
c.describe(cfg)

# %% [markdown]
# ## Fine-tune at the higher resolution
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
plots.training_curves({{f"fine-tune at {{cfg.image_size}} px": cfg.output_dir}}, title="07 · Higher resolution",
                      folder=c.figures, name="07_training_curves")

# %% [markdown]
# ## Testing bigger, and training bigger
# The 05 model at its own size, the same model simply tested at the higher size, and the fine-tuned model.

# %%
before = c.evaluate(source)
bigger = c.evaluate(source, image_size=cfg.image_size)
test = c.evaluate(cfg.output_dir)
own = before["predictions"]
plots.compare_top1({{"05 model at its training size": before["top1"],
                    f"05 model tested at {{cfg.image_size}} px": bigger["top1"],
                    f"fine-tuned at {{cfg.image_size}} px": test["top1"]}},
                   highlight=f"fine-tuned at {{cfg.image_size}} px", title="07 · Test top-1 and resolution",
                   folder=c.figures, name="07_compare")

# %%
plots.prediction_changes(before["predictions"], test["predictions"], labels=("05", "07"), folder=c.figures,
                         name="07_changes")

# %%
plots.confusion_matrix(test["predictions"], title="07 · Higher resolution", folder=c.figures,
                       name="07_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="07_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="07 · Higher resolution", folder=c.figures,
                      name="07_failures")

# %%
c.record("4.1", cfg.output_dir, test)
'''

SOURCES["08_ensemble"] = f'''
# %% [markdown]
# # 08 · Ensemble
#
# **Technique.** Average the softmax outputs of several different models; each one runs with its own
# preprocessing and input size. Models that err on different photos cancel out each other's mistakes, so the
# diversity of the members (architecture, resolution, seed) matters more than their number.
#
# **What the plan expects.** B3 (seed 42), B4 at 380 px (seed 123) and ResNet-101 (seed 456), 150 epochs each:
# +2-4% (the table: +2%, to 95.5-99.5%), about 30 more hours. The full profile trains B4 and ResNet-101 here and
# takes the B3 of `07` as the first member.
#
# **Demo profile.** No new training: the members are the lite2 of `07`, the lite1 of `02` and the lite2 of `04`.

# %% parameters
{COMMON}
members = None  # None: the profile's members; or a list of run folders
epochs = None  # b4:epochs (the members trained here)
batch_size = None  # b4:batch_size
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots

c = course.Course("08_ensemble", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
to_train = [c.config(run, epochs=epochs, batch_size=batch_size, **overrides) for run in c.trained_runs()]
c.describe(*to_train) if to_train else "this profile trains no new members: the ensemble reuses earlier runs"

# %% [markdown]
# ## Train the new members (full profile)
# A re-run after a crash continues each from its last checkpoint.

# %%
for cfg in to_train:
    helpers.train(cfg)
member_runs = members or c.ensemble_members()
member_runs

# %% [markdown]
# ## Members against the ensemble

# %%
result = c.ensemble(member_runs)
plots.ensemble_vs_members(result, folder=c.figures, name="08_ensemble_vs_members")

# %% [markdown]
# ## What the ensemble changed
# Against its best member: photos it fixed and photos it broke.

# %%
best = max(result["members"], key=lambda m: m["top1"])
best_test = c.evaluate(best["model"])
plots.prediction_changes(best_test["predictions"], result["predictions"], labels=("best member", "ensemble"),
                         folder=c.figures, name="08_changes")

# %%
plots.confusion_matrix(result["predictions"], title="08 · Ensemble", folder=c.figures, name="08_confusion_matrix")

# %%
plots.top_confusions(result["predictions"], folder=c.figures, name="08_top_confusions")

# %%
plots.failure_gallery(result["predictions"], n=12, title="08 · Ensemble", folder=c.figures, name="08_failures")

# %%
c.record("4.2", member_runs, result, reference_top1=best["top1"])
'''

SOURCES["09_distillation"] = f'''
# %% [markdown]
# # 09 · Knowledge distillation
#
# **Technique.** A student learns from a teacher's softened outputs as well as from the labels:
# loss = α · T² · KL(teacher ∥ student at temperature T) + (1 − α) · cross-entropy, with α = 0.7 and T = 3
# as in the plan. The teacher's "dark knowledge" (which wrong classes are close) is a richer target than the
# label alone. The teacher sees each training batch converted to its own size and normalisation.
#
# **What the plan expects.** A B4 teacher and a B3 student: +1-2% for the student (optional step).
#
# **The comparison.** The student copies the settings of a run trained alone (full: the B3 of `04`; demo: the
# lite0 baseline of `01`) and adds the teacher, so the teacher is the only difference. Demo teacher: the lite2
# of `07`.

# %% parameters
{COMMON}
teacher = None  # None: the profile's teacher (full: 08's B4; demo: 07's lite2); or a run folder
kd_alpha = None  # student:kd_alpha
kd_temperature = None  # student:kd_temperature
epochs = None  # student:epochs
{TRAIN_HINT}

# %%
import helpers
from helpers import course, plots

c = course.Course("09_distillation", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger)
alone = c.reference_run("student")
cfg = c.config("student", teacher=teacher, kd_alpha=kd_alpha, kd_temperature=kd_temperature, epochs=epochs,
               **overrides)
c.describe(cfg)

# %% [markdown]
# ## Train the student with the teacher
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
plots.training_curves({{"student alone": alone, "student with the teacher": cfg.output_dir}},
                      title="09 · The student alone and with the teacher", folder=c.figures,
                      name="09_training_curves")

# %% [markdown]
# ## Student against teacher

# %%
teachers = {{c.model_info(t)["backbone"]: c.evaluate(t)["top1"] for t in cfg.teacher}}
alone_test = c.evaluate(alone)
test = c.evaluate(cfg.output_dir)
plots.student_vs_teacher(teachers, (cfg.backbone, alone_test["top1"]), (cfg.backbone, test["top1"]),
                         folder=c.figures, name="09_student_vs_teacher")

# %%
plots.prediction_changes(alone_test["predictions"], test["predictions"], labels=("alone", "distilled"),
                         folder=c.figures, name="09_changes")

# %%
plots.confusion_matrix(test["predictions"], title="09 · Distilled student", folder=c.figures,
                       name="09_confusion_matrix")

# %%
plots.top_confusions(test["predictions"], folder=c.figures, name="09_top_confusions")

# %%
plots.failure_gallery(test["predictions"], n=12, title="09 · Distilled student", folder=c.figures,
                      name="09_failures")

# %%
c.record("4.3", cfg.output_dir, test, reference_top1=alone_test["top1"])
'''

SOURCES["10_results"] = f'''
# %% [markdown]
# # 10 · Results: the plan's roadmap, measured
#
# Every notebook appended its final numbers to the results ledger (one CSV for all runs). This notebook reads
# it and puts the measured test top-1 of each phase beside what the plan expects. The measured gain of each
# phase is taken against the run it builds on (the "gain against" column), not against the plan's cumulative
# sum.
#
# Read the demo profile's numbers with care: 10 classes and 150 test photos (one photo is 0.7 points), a few
# epochs, stand-in models at half the resolution. They show that the pipeline works and what each picture
# looks like, not what the techniques are worth on Food-101. Only the full profile measures that.

# %% parameters
{COMMON}

# %%
import helpers
from helpers import course, plots

c = course.Course("10_results", profile, data_dir=data_dir, device=device, output_dir=output_dir, ledger=ledger)
table = c.results()
print(f"ledger {{c.ledger_path}}, course run {{c.output_dir}}")
table.drop(columns=["in plan table"])

# %%
plots.roadmap_table(table, title=f"The plan's roadmap with the measured numbers ({{profile}} profile)",
                    folder=c.figures, name="10_roadmap_table")

# %%
plots.roadmap_chart(table, title=f"Expected (plan, Food-101) against measured ({{profile}} profile)",
                    folder=c.figures, name="10_roadmap")

# %%
c.save_results(table)

# %% [markdown]
# Every ledger row of this profile, newest last (all course runs):

# %%
c.history(30)
'''


# --------------------------------------------------------------------------------------------------------------------


def _expand_parameters(source: str, notebook: str) -> str:
    """Replace `# run:field` comments by the values of that setting in each profile."""

    def repl(match: re.Match) -> str:
        run, field, rest = match.group(1), match.group(2), match.group(3) or ""
        return f"# {course.parameter_comment(notebook, run, field)}{rest}"

    return re.sub(r"# (\w+):(\w+)( \(.*\))?$", repl, source, flags=re.MULTILINE)


def parse(source: str, notebook: str) -> nbformat.NotebookNode:
    """Turn a percent-format source into a notebook without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    chunks = re.split(r"^# %%(.*)$", source.strip("\n"), flags=re.MULTILINE)
    for header, body in zip(chunks[1::2], chunks[2::2]):
        body = body.strip("\n")
        header = header.strip()
        if header == "[markdown]":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        elif header == "parameters":
            cell = nbformat.v4.new_code_cell(_expand_parameters(body, notebook))
            cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
        else:
            nb.cells.append(nbformat.v4.new_code_cell(body))
    for i, cell in enumerate(nb.cells):  # stable ids keep the committed files identical from build to build
        cell["id"] = f"{notebook[:2]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def build() -> dict[str, str]:
    """Every notebook's JSON text, by file name."""
    return {f"{name}.ipynb": nbformat.writes(parse(source, name)) + "\n" for name, source in SOURCES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook differs")
    args = parser.parse_args(argv)
    folder = ROOT / "notebooks"
    stale = []
    for name, text in build().items():
        path = folder / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            folder.mkdir(exist_ok=True)
            path.write_text(text)
    if args.check:
        if stale:
            print(f"out of date (run python scripts/build_notebooks.py): {', '.join(stale)}")
            return 1
        print("notebooks are up to date")
        return 0
    print(f"wrote {len(stale)} notebook(s): {', '.join(stale) or 'none changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
