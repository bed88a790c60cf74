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
# **Label smoothing** (`label_smoothing=0.1`, the trainer's default, first used here). The loss compares the
# model's probabilities with a target. A one-hot target (all on the true class) keeps rewarding the model for
# pushing the true logit ever higher, which makes it overconfident, and its confident mistakes cost a lot. Label
# smoothing takes a share ε = 0.1 of the target away from the true class and spreads it evenly over all K classes:
# the true class gets 1 − ε + ε/K and every other class ε/K (with 10 classes, 0.91 and 0.01). The model can then
# never reach its target by growing one logit without bound, so its probabilities stay calibrated and its features
# less specialised (Szegedy et al. 2016 introduced it; Müller, Kornblith, Hinton 2019 study when it helps). Notebook
# 04's mixed targets are built on top of these smoothed ones.
#
# **The defaults that matter more.** Three settings of `helpers.train`, not named by the plan, decide more on
# small data than anything above (`helpers/base/config.py` has them; docs/notebooks.md measured them on food-101-mini):
# - **One head-only epoch first** (`head_warmup_epochs=1`). The new head starts random; its first large
#   gradients would flow into the backbone and scramble the features we came for. One epoch with the backbone
#   frozen gives the head sensible weights first ("linear probe, then fine-tune"; 05 makes this two stages).
# - **The backbone at a tenth of the head's rate** (`backbone_lr_ratio=0.1`): the pretrained layers need small
#   corrections, the head has everything to learn.
# - **Frozen BatchNorm statistics** (`freeze_bn=True`). BatchNorm normalises with running means and variances
#   measured on ImageNet; updating them from a few hundred augmented photos in batches of 32 drags them away
#   from what the weights expect. On food-101-mini updating them cost 15 points
#   ([the measured defaults](../docs/notebooks.md#defaults-that-matter-on-small-data)); the last section of this
#   notebook turns it off so you can see it on your run.
#
# `lr=3e-3` is the head's rate (the backbone gets `3e-4`): AdamW fine-tunes of ImageNet backbones usually run the
# whole network at `1e-4` to `1e-3`, and a random head learns faster at a few times that; on food-101-mini `3e-3`
# was the best of the rates tried. `warmup_epochs=0.5` in the demo: its epochs have 12 steps, and the plan's one
# epoch of warmup would spend a third of a 3-epoch run below the full rate.
#
# **What the plan expects.** Phase 1: 75-80% top-1 after 50 epochs at batch 24 (6-8 hours on MPS). Its purpose
# is to verify the pipeline and to look at the failure cases, which is what the pictures below are for.
#
# **Demo profile.** `tf_efficientnet_lite0` (a B0 without squeeze-excitation, with offline weights) at 96 px
# for a few epochs on 10 classes: the numbers are not comparable with the plan's, the pictures and the code are
# the same. **Medium profile:** the same model at its own 224 px on a tenth of Food-101, 8 epochs.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# The run's settings per profile (any TrainConfig field): full is the plan's, medium and demo stand-ins.
SETTINGS = {
    "full": dict(backbone="efficientnet_b0", pretrained="hub", image_size=224, batch_size=24, epochs=50),
    "medium": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=224, batch_size=32, epochs=8),
    "demo": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=96, batch_size=32, epochs=3,
                 warmup_epochs=0.5),
}
TECHNIQUE = dict(augment="basic", lr=3e-3)  # the plan's baseline: AdamW, cosine schedule, "current augmentations"
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}
LR_FIND_STEPS = {"full": 100, "medium": 100, "demo": 30}  # the learning-rate finder's steps at most (fastai: 100)

# %%
import helpers
from helpers.course import analysis, comparison, course, failures, plots, widgets

c = course.Course("01_baseline", profile, data_dir=data_dir, device=device)
cfg = c.config("baseline", {**c.pick(SETTINGS), **TECHNIQUE, **overrides})
cfg

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

# %% [markdown]
# ## Choosing the rate: a learning-rate finder
# `lr` is the first decision of every run. Before training, `helpers.lr_find` runs a short range test on this run's
# own settings: for at most `LR_FIND_STEPS` steps it trains a throw-away copy of the model with the trainer's own
# step, multiplying the rate by the same factor every step, from far too small to far too large, and records the
# loss. Where the rate is too small the loss barely moves; over a range it falls, faster as the rate grows; past
# some rate the steps overshoot and the loss climbs, and the test stops once the smoothed loss passes four times
# its lowest. As in the first epoch of `helpers.train`, the backbone is held still, so the curve measures the
# head's rate, which is what `lr` sets. fastai's default rule ("valley") suggests a rate inside the longest falling
# stretch of the smoothed curve, before its bottom; the figure also marks the steepest descent and a tenth of the
# minimum. Each point is the loss of one augmented batch and the smoothing lags on a short test, so read the
# suggestion as a starting point to check, not a measurement: the cell prints how far it is from the rate this
# notebook keeps using, and `scripts/lr_find_sweep.py` holds the suggestions against rates trained for real. 02 and
# later keep 01's rate and change only their own technique.

# %%
finder = helpers.lr_find(cfg, output_dir=str(c.output_dir / "lr-find" / c.notebook / c.project_path(cfg.output_dir).name),
                         steps=12 if c.rehearse else c.pick(LR_FIND_STEPS))
s = finder.suggestions
if finder.suggestion is None:
    print(f"The finder stopped after {len(finder.rates)} steps ({finder.stopped}): too early to suggest a rate.")
else:
    print(f"The finder's suggestion (fastai's valley rule): lr={finder.suggestion:.1e}  "
          f"(steep {s['steep']:.1e}, minimum/10 {s['minimum']:.1e}; {len(finder.rates)} steps, {finder.stopped})")
    print(f"01 trains at lr={cfg.lr:.0e}: {cfg.lr / finder.suggestion:.2g}x the valley suggestion, "
          f"{cfg.lr / s['steep']:.2g}x steep, {cfg.lr / s['minimum']:.2g}x minimum/10")
plots.lr_finder(finder, current_lr=cfg.lr, title="01 · Learning-rate finder on this run's settings",
                folder=c.figures, name="01_lr_find")

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
print(f"test top-1 {analysis.with_interval(test['top1'], test['n'])} (with its 95% interval), "
      f"top-5 {test['top5']:.1f}% on {test['n']} photos")
failures.error_analysis(test["predictions"], title="01 · Baseline", prefix="01", folder=c.figures,
                        run=cfg.output_dir, device=c.device)

# %% [markdown]
# **How to read a map, and what it cannot prove.** Given the run, the gallery shows each mistake three times: the
# crop the model saw (resized and centre-cropped as `evaluate` does), then a Grad-CAM map for the predicted class
# and one for the true class (`helpers/use/cam.py`, with the `grad-cam` library). Grad-CAM weighs the channels of
# the last feature map (the one the head averages) by how much each raises that class's score and keeps the
# positive part: red is where the evidence *for* that class lies, blue where there is none, and every map is scaled
# to its own maximum, so a weak map looks as bright as a strong one: compare places, not brightness across panels.
# Read it as a question to the photo: is the evidence for the wrong class on the dish, the plate, the table or a
# garnish? A map cannot prove why. It is coarse (the feature map has a few cells a side at the demo's resolution,
# smoothed up to the crop), it shows where gradient-weighted features sit, not which pixels caused the mistake,
# and it says nothing about colour or texture against shape. A model that does not recognise the photo gives maps
# that follow nothing: `scripts/cam_sanity.py` pastes test photos on a grey canvas and finds the maps on the photo
# well above chance when the photo is at the model's scale, and no better than chance when the model's crop
# shrinks it to half. To test a hunch from a map, change the photo (crop out the plate, cover the garnish) and see
# whether the prediction moves.

# %%
c.record("baseline", cfg.output_dir, test)

# %% [markdown]
# ## Why the BatchNorm statistics stay frozen
# The same run with one change, `freeze_bn=False`: the backbone's BatchNorm layers update their running means
# and variances from the training batches, as they do in a plain `model.train()`. Same data, epochs, rate and
# seed; only the statistics differ. Watch the validation curve: the model is evaluated with the statistics
# it gathered from augmented batches.

# %%
bn_cfg = c.config("baseline-bn-updated", {**c.pick(SETTINGS), **TECHNIQUE, **overrides, "freeze_bn": False})
helpers.train(bn_cfg)
plots.training_curves({"BatchNorm statistics frozen": cfg.output_dir, "updated": bn_cfg.output_dir},
                      title="01 · BatchNorm statistics frozen or updated", folder=c.figures,
                      name="01_batchnorm_curves")

# %%
bn_test = c.evaluate(bn_cfg.output_dir)
comparison.compare(test, bn_test, "BatchNorm statistics updated from the training batches (freeze_bn=False) "
                   "instead of frozen; data, epochs, rate and seed the same", labels=("frozen", "updated"))

# %%
plots.compare_top1({"BatchNorm statistics frozen (the default)": test,
                    "BatchNorm statistics updated (freeze_bn=False)": bn_test},
                   title="01 · One change: BatchNorm statistics frozen or updated", folder=c.figures,
                   name="01_batchnorm")

# %%
failures.prediction_changes(test["predictions"], bn_test["predictions"], labels=("frozen", "updated"),
                            folder=c.figures, name="01_batchnorm_changes")

# %% [markdown]
# Pick a class or a confused pair and page through its failures (interactive in JupyterLab); tick "where it looked"
# to see each failure's crop with its maps for the predicted and the true class:
# (It comes after the training cells: a widget cannot respond while a cell below it trains.)

# %%
widgets.failure_explorer(test["predictions"], run=cfg.output_dir, device=c.device)

# %% [markdown]
# ## What we saw
# The table puts this run's baseline beside the plan's figure and a published full-scale one (a `this run` of
# "not measured yet" means the ledger has no row of this profile yet):

# %%
from helpers.course import expectations

expectations.table(c, phases=["baseline"])

# %% [markdown]
# **How to read it.** The `this run` column is this run's test top-1 with its 95% interval, beside the plan's
# expectation and a published fine-tune: three different scales (see below). The interval is wide on a small test
# split (`00_setup` printed how wide), so every later notebook compares its model with this one on the same photos
# and prints the paired test: the photos the change fixed and broke, and the exact McNemar p. The BatchNorm
# comparison above is the first such line: read whether updating the statistics fixed or broke more photos, and
# whether the split is uneven enough to be real (p < 0.05). The training curves show the mechanism: with the
# statistics updated, validation accuracy follows training accuracy less closely, because the model is evaluated
# with statistics gathered from augmented batches.
#
# **Why the demo is far below the plan.** lite0 at 96 px stands in for B0 at 224 px, trained 3 epochs on 360 photos
# instead of 50 epochs on 75,750. Chance is one in ten here (10 classes) and one in 101 on Food-101, so even the two
# percentages are not on one scale.
#
# **What full Food-101 gives.** The plan expects 75-80% for B0. That is cautious: published fine-tunes of ImageNet
# CNNs reach about 90% (ResNet-50 with fastai 90.5%, Redkar et al. 2019; EfficientNet-B4 91.5%, Tan & Le 2019), and
# the dataset's own paper reported 50.76% for its best hand-made features (Bossard et al. 2014). The gap between the
# plan's 75-80% and the published fine-tunes is what a well-tuned fine-tune (learning rate, schedule, resolution,
# augmentation) is worth.
#
# **The defaults that matter most here** are not the ones the recipe names: one head-only epoch first
# (`head_warmup_epochs=1`, so the random head does not send large gradients into the pretrained backbone), the
# backbone at a tenth of the head's rate (`backbone_lr_ratio=0.1`) and frozen BatchNorm statistics
# (`freeze_bn=True`; 15 points lost without it on food-101-mini, the
# [measured defaults](../docs/notebooks.md#defaults-that-matter-on-small-data)). `lr=3e-3` is the head's rate (the
# backbone gets `3e-4`), and `warmup_epochs=0.5` ramps it up over half an epoch: the demo has only about 12 steps
# an epoch. Label smoothing (above) keeps the model from chasing certainty.

# %% [markdown]
# ## Questions
# 1. What is the 95% interval of this run's top-1, and how many test photos is its half-width worth?
# 2. Why does the trainer train the head alone for one epoch before the backbone learns?
# 3. The head learns at `3e-3`. At what rate does the backbone learn, and why slower?
# 4. What do BatchNorm statistics hold, and why does updating them on a few hundred augmented photos hurt?
# 5. Label smoothing 0.1 takes 0.1 from the true class and spreads it over all 10 classes. What target does the
#    true class get, and what does each other class get?
# 6. Why is early stopping and the best checkpoint chosen on the validation split and never on the test split?
# 7. The plan expects 75-80% for B0 on Food-101; published fine-tunes reach about 90% (Redkar et al. 2019). Name two
#    differences of recipe that could explain the gap.
# 8. Which classes does the confusion matrix mix up most, and would a person confuse them too?

# %% [markdown]
# ## Try it
# Each experiment changes one literal in the parameters cell: change it and re-run the notebook. The run trains in a
# folder named after the change (e.g. `models/01_baseline/baseline~lr=0.0003`) beside the course's run, which later
# notebooks keep reading; put the literal back to return to the course's run.
# 1. `TECHNIQUE["lr"] = 3e-4` (from `3e-3`; run by the tests): ten times slower. Look at the training curves: does
#    validation top-1 still rise at the last epoch (too slow) or did `3e-3` already overshoot?
# 2. `overrides = {"label_smoothing": 0.0}`: one-hot targets, no smoothing (for both runs of this notebook). Do the
#    confident mistakes in the failure gallery grow more confident?
# 3. `overrides = {"head_warmup_epochs": 0}`: the random head and the backbone learn together from the first step.
#    Watch the first epoch's validation top-1.
# 4. `TECHNIQUE["augment"] = "light"` (from `"basic"`): only crop and flip. With 3 epochs, does less augmentation
#    help or hurt?

# %% [markdown]
# ## Further reading
# - Bossard, Guillaumin, Van Gool 2014, [Food-101 - Mining Discriminative Components with Random Forests](https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/) (the dataset, 50.76%).
# - Tan & Le 2019, [EfficientNet: Rethinking Model Scaling for CNNs](https://arxiv.org/abs/1905.11946) (Table 5: Food-101 transfer).
# - Kornblith, Shlens, Le 2019, [Do Better ImageNet Models Transfer Better?](https://arxiv.org/abs/1805.08974) (fine-tuning against fixed features on 12 datasets, Food-101 among them).
# - Loshchilov & Hutter 2019, [Decoupled Weight Decay Regularization (AdamW)](https://arxiv.org/abs/1711.05101); He et al. 2019, [Bag of Tricks for Image Classification](https://arxiv.org/abs/1812.01187) (warmup, cosine, label smoothing).
# - Szegedy et al. 2016, [Rethinking the Inception Architecture](https://arxiv.org/abs/1512.00567) (label smoothing); Müller, Kornblith, Hinton 2019, [When Does Label Smoothing Help?](https://arxiv.org/abs/1906.02629).
# - fastbook, [chapter 5: image classification](https://github.com/fastai/fastbook/blob/master/05_pet_breeds.ipynb) (learning-rate finder, freezing, discriminative rates).
# - Learn PyTorch for Deep Learning, [06: transfer learning](https://www.learnpytorch.io/06_pytorch_transfer_learning/) (FoodVision).
# - CS231n, [Transfer learning notes](https://cs231n.github.io/transfer-learning/).
