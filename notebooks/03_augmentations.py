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
#   on validation top-1 (patience 15). The plan expects +2-3%.
# - **3.2 advanced augmentation:** on top, random brightness/contrast, hue/saturation, Gaussian noise and blur,
#   gamma, and a stronger cutout. The plan expects +1-2%. The plan's arguments are albumentations 1.x;
#   `helpers.data.augment` translates them to the 2.x API (for example `var_limit` becomes `std_range`).
#
# **One change per comparison.** The plan's 3.1 bundles two ideas: training longer (more epochs, a longer warmup,
# early stopping to end it when validation stops improving) and warm restarts. So 3.1 is measured in two steps:
# a control run, "longer", with 3.1's length and no restarts (against 02's B3: the length alone), then 3.1 itself
# (against the control: the restarts alone). 3.2 differs from 3.1 in the augmentation alone.
#
# **Demo profile.** lite2 at 112 px for 3 epochs, restarts every 2 epochs. The demo keeps 02's 3 epochs (a run of a
# few epochs more would show nothing a 3-epoch one does not) and leaves early stopping off (its patience cannot act
# in 3 epochs), so its control has exactly the settings of 02's B3 and *is* that run, reused rather than trained
# again: in the demo, 3.1 differs from 02's B3 by the restarts alone. On 360 training photos a few epochs cannot
# show what 150 epochs do: the pictures of the augmentations are the point here. **Medium:** lite2 at 260 px for
# 10 epochs (02's: 8) with early stopping, restarts every 5.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# The runs' length per profile (any TrainConfig field): full is the plan's, medium and demo stand-ins.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=300, batch_size=16, epochs=150,
                 warmup_epochs=5, early_stopping=True, patience=15),
    "medium": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=260, batch_size=32, epochs=10,
                   early_stopping=True, patience=4),
    "demo": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=112, batch_size=32, epochs=3,
                 warmup_epochs=0.5),
}
RECIPE = dict(lr=3e-3)  # 02's rate
# 3.1's warm restarts per profile (restart_epochs: epochs per cycle, 0: a third of the run)
SCHEDULE = {"full": dict(scheduler="cosine_restart"),
            "medium": dict(scheduler="cosine_restart", restart_epochs=5),
            "demo": dict(scheduler="cosine_restart", restart_epochs=2)}
AUGMENT = {"3.1": "basic", "3.2": "advanced"}  # 3.2: the same run with the plan's advanced augmentation
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers.course import comparison, course, failures, plots, previews, widgets

c = course.Course("03_augmentations", profile, data_dir=data_dir, device=device)
longer = c.config("longer", {**c.pick(SETTINGS), **RECIPE, "augment": AUGMENT["3.1"], **overrides})  # the control
schedule = c.config("schedule", {**c.pick(SETTINGS), **RECIPE, **c.pick(SCHEDULE), "augment": AUGMENT["3.1"],
                                 **overrides})
advanced = c.config("advanced", {**c.pick(SETTINGS), **RECIPE, **c.pick(SCHEDULE), "augment": AUGMENT["3.2"],
                                 **overrides})
advanced

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

# %% [markdown]
# ## What the augmentations do
# The same training photo through each preset (a row each, random draws), then every step of the advanced
# preset on its own.

# %%
from helpers.course import environment

photos = environment.sample_images(c.data_dir, "train")
previews.augmentation_preview(photos[0][0], size=advanced.image_size, folder=c.figures, name="03_augmentation_preview")

# %%
previews.transform_steps(photos[1][0], preset="advanced", size=advanced.image_size, folder=c.figures,
                         name="03_advanced_steps")

# %% [markdown]
# ## Train the control and both steps
# A re-run after a crash continues each from its last checkpoint. The log says when the control is a run the course
# trained already (the demo's: 02's B3).

# %%
helpers.train(longer)
helpers.train(schedule)
helpers.train(advanced)
plots.training_curves({"longer, no restarts (control)": longer.output_dir, "3.1 schedule": schedule.output_dir,
                       "3.2 advanced augmentation": advanced.output_dir},
                      title="03 · Longer training, then restarts, then advanced augmentation", folder=c.figures,
                      name="03_training_curves")

# %% [markdown]
# Test top-1 of each step on the same test photos, from 02's B3 to 3.2 (the bars are 95% intervals; each delta is
# against 02's B3, with its paired test):

# %%
b3 = c.test_result("02_b3_upgrade", "b3")
tests = {"longer (control)": c.evaluate(longer.output_dir), "3.1 schedule": c.evaluate(schedule.output_dir),
         "3.2 advanced": c.evaluate(advanced.output_dir)}
plots.compare_top1({"B3 (02)": b3, **tests}, highlight="3.2 advanced", title="03 · Test top-1, step by step",
                   folder=c.figures, name="03_compare")

# %% [markdown]
# One change at a time (the settings line is read from the two runs' `config.yaml`):

# %%
if longer.output_dir == b3.get("run"):
    print("The control has the settings of 02's B3 in this profile: it is that run, so the length changes nothing "
          "here and 3.1 differs from 02's B3 by the restarts alone.\n")
else:
    print(comparison.compare(b3, tests["longer (control)"], "the length of training alone (epochs, warmup and "
                             "early stopping as the plan's 3.1 has them; no restarts)",
                             labels=("B3 (02)", "longer")), end="\n\n")
print(comparison.compare(tests["longer (control)"], tests["3.1 schedule"], "warm restarts alone (the same length)",
                         labels=("longer", "3.1 schedule")), end="\n\n")
print(comparison.compare(tests["3.1 schedule"], tests["3.2 advanced"], "the advanced augmentation alone",
                         labels=("3.1 schedule", "3.2 advanced")), end="\n\n")
comparison.compare(b3, tests["3.1 schedule"], "the plan's step 3.1: its length and the restarts together",
                   labels=("B3 (02)", "3.1 schedule"))

# %% [markdown]
# ## What the stronger augmentation changed
# Photos the 3.2 model gets right and the 3.1 model got wrong (fixed), and the reverse (broken).

# %%
test = tests["3.2 advanced"]
failures.prediction_changes(tests["3.1 schedule"]["predictions"], test["predictions"], labels=("3.1", "3.2"),
                            folder=c.figures, name="03_changes")

# %%
failures.error_analysis(test["predictions"], title="03 · Advanced augmentation", prefix="03",
                        compare_with="02 (B3 with the basic recipe)", folder=c.figures)

# %%
c.record("3.1", schedule.output_dir, tests["3.1 schedule"], reference_top1=b3)
c.record("3.2", advanced.output_dir, test, reference_top1=tests["3.1 schedule"])

# %% [markdown]
# Pick a photo and a preset, and move the seed (after the training cells: a widget cannot respond while a
# cell below it trains):

# %%
widgets.augmentation_explorer(photos, size=advanced.image_size)

# %% [markdown]
# ## What we saw
# This run's two steps beside the plan's figures and the published ones:

# %%
from helpers.course import expectations

expectations.table(c, phases=["3.1", "3.2"])

# %% [markdown]
# **How to read it.** The comparisons above split the plan's 3.1 into its length and its restarts, and 3.2 adds the
# augmentation alone; each line carries its paired test. Read the training curves beside them: the learning-rate
# panel shows where each restart sends the rate back up, and the validation curve whether the run recovers before
# the next cycle. Two things decide which checkpoint is tested: it is the best epoch by validation top-1, measured on
# only 40 validation photos in the demo, where epochs often tie (the earlier one is kept); so a run with restarts may
# be tested at a checkpoint from before a cycle's low-rate end, with fewer epochs behind it than the run it is
# compared with. Runs of this size also move by a few points between repeats of the same settings, which is what the
# paired test weighs.
#
# **Why the demo cannot show these techniques.** Both are about long training. A schedule with warm restarts pays
# off over 150 epochs with several cycles; the demo has 3 epochs and cycles of 2, so the rate is high again half way
# through. Strong augmentation is a regulariser: it helps when a model would otherwise overfit over many epochs, and
# costs accuracy when the run is too short to fit even the clean photos (on food-101-mini advanced augmentation cost
# 4.0 points over 6 epochs, [the measured ladder](../docs/notebooks.md#measured-the-technique-ladder-on-food-101-mini)).
#
# **What full Food-101 gives.** The plan expects +2% (3.1) and +1.5% (3.2). No paper reports these ablations on
# Food-101. On ImageNet, the "bag of tricks" refinements (cosine decay, label smoothing, mixup) each added a few
# tenths of a point to about a point for a ResNet-50 (He et al. 2019), and RandAugment about a point (Cubuk et al.
# 2020), over 120-300 epochs.

# %% [markdown]
# ## Questions
# 1. What does a warm restart do to the learning rate, and why might it help a long run escape a poor minimum?
# 2. Early stopping watches validation top-1 with a patience. Why must it never watch the test split?
# 3. Which of the advanced preset's steps (see the steps figure) could change the class of a dish, and which only
#    its look?
# 4. Why does stronger augmentation usually lower training accuracy and can still raise test accuracy?
# 5. Suppose 3.1 scores below 02's B3. Name a reason, visible in this notebook's curves, that is not "restarts are
#    bad".
# 6. The plan's 3.2 arguments are albumentations 1.x. What does the 2.x translation change for Gaussian noise?
# 7. How many epochs would you give these runs before believing their effect, and why?
# 8. Why is the plan's 3.1 measured in two steps here, and why is the demo's control 02's run itself?

# %% [markdown]
# ## Try it
# Change one literal in the parameters cell and re-run the notebook: the changed runs train in folders named after
# the change, beside the course's runs.
# 1. `SCHEDULE["demo"]["scheduler"] = "cosine"` (from `"cosine_restart"`; run by the tests): one cosine decay without
#    restarts. Compare 3.1's training curve (the learning-rate panel) and its test top-1 with the control's.
# 2. `AUGMENT["3.2"] = "basic"`: 3.2 then has 3.1's settings, so it is 3.1's run, reused (the log says so): a
#    control for the control. Its comparison with 3.1 changes no photo.
# 3. `SETTINGS["demo"]["epochs"] = 12` (from `3`): longer runs for all three. Does the cost of advanced augmentation
#    shrink with more epochs?

# %% [markdown]
# ## Further reading
# - Loshchilov & Hutter 2017, [SGDR: Stochastic Gradient Descent with Warm Restarts](https://arxiv.org/abs/1608.03983).
# - He et al. 2019, [Bag of Tricks for Image Classification with CNNs](https://arxiv.org/abs/1812.01187).
# - Cubuk et al. 2020, [RandAugment](https://arxiv.org/abs/1909.13719).
# - albumentations, [documentation](https://albumentations.ai/docs/) (the 2.x API `helpers.data.augment` uses).
# - fastbook, [chapter 7: training a state-of-the-art model](https://github.com/fastai/fastbook/blob/master/07_sizing_and_tta.ipynb).
