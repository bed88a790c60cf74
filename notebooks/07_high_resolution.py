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
# **The comparison.** The fine-tune at the higher size changes two things at once: the resolution, and more
# training (other epochs, rate and augmentation than 05's). So the same fine-tune runs twice from 05's model,
# once at 05's own size and once at the higher one: **that pair differs in the resolution alone**, and the run
# at 05's size against 05's model shows what the extra training alone did. (In the full profile the control is
# another 150-epoch run of B3 at 300 px.)
#
# **Demo profile.** A short FixRes-style fine-tune of the lite2: 144 px (from 112), 2 epochs at `lr=3e-4` with light
# augmentation and no mixing (the full profile keeps the plan's recipe). **Medium:** 320 px from 260, 2 epochs.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# The run's settings per profile (any TrainConfig field): full is the plan's, medium and demo stand-ins.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=384, batch_size=8, epochs=150, lr=1e-4,
                 augment="advanced", mixup=True, cutmix=True),
    "medium": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=320, batch_size=32, epochs=2,
                   lr=3e-4, warmup_epochs=0.5, augment="light"),
    "demo": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=144, batch_size=32, epochs=2,
                 lr=3e-4, warmup_epochs=0.5, augment="light"),
}
TECHNIQUE = dict(head_warmup_epochs=0)  # fine-tune the trained two-stage model at a higher resolution
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers.course import comparison, course, failures, plots
from helpers.use import runs

c = course.Course("07_high_resolution", profile, data_dir=data_dir, device=device)
source = c.require("05_two_stage", "stage2")
cfg = c.config("hires", {**c.pick(SETTINGS), **TECHNIQUE, **overrides}, start_from=source)
# the control: the same fine-tune at the size 05's model was trained at
source_size = runs.load_trained(source).config["image_size"]
control = c.config("same-size", {**c.pick(SETTINGS), **TECHNIQUE, **overrides, "image_size": source_size},
                   start_from=source)
cfg

# %% [markdown]
# How long this notebook takes in each profile, on which machine, and how that was obtained:

# %%
c.times()

# %% [markdown]
# ## Fine-tune at the higher resolution, and the same fine-tune at the old size
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
helpers.train(control)
plots.training_curves({f"fine-tune at {control.image_size} px (05's size)": control.output_dir,
                       f"fine-tune at {cfg.image_size} px": cfg.output_dir}, title="07 · Higher resolution",
                      folder=c.figures, name="07_training_curves")

# %% [markdown]
# ## Testing bigger, and training bigger
# The 05 model at its own size and simply tested at the higher size (one change: the test size; random crops
# make objects look larger in training than in a centre crop at test time, so the same weights often score
# higher when tested bigger), then the two fine-tunes. The deltas are against the fine-tune at 05's size: the
# fine-tune at the higher size differs from it in the resolution alone.

# %%
before = c.evaluate(source)
bigger = c.evaluate(source, image_size=cfg.image_size)
same_size = c.evaluate(control.output_dir)
test = c.evaluate(cfg.output_dir)
reference = f"fine-tuned at {control.image_size} px (05's size)"
plots.compare_top1({f"05 model at {control.image_size} px": before, f"05 model tested at {cfg.image_size} px": bigger,
                    reference: same_size, f"fine-tuned at {cfg.image_size} px": test},
                   reference=reference, highlight=f"fine-tuned at {cfg.image_size} px",
                   title="07 · Test top-1 and resolution", folder=c.figures, name="07_compare")

# %% [markdown]
# The three pairs of the figure, each one change (the settings line is read from the runs' `config.yaml`; the first
# pair is one model tested two ways, so it has none):

# %%
print(comparison.compare(before, bigger, f"the test size alone ({control.image_size} → {cfg.image_size} px; the same "
                         "weights, no training)", labels=(f"05 at {control.image_size} px",
                                                          f"05 tested at {cfg.image_size} px")), end="\n\n")
print(comparison.compare(before, same_size, f"the extra fine-tune alone (at 05's {control.image_size} px)",
                         labels=("05's model", reference)), end="\n\n")
comparison.compare(same_size, test, f"the resolution alone (the same fine-tune at {control.image_size} and at "
                   f"{cfg.image_size} px)", labels=(reference, f"fine-tuned at {cfg.image_size} px"))

# %% [markdown]
# What the resolution alone changed, photo by photo: the fine-tune at 05's size against the same fine-tune at the
# higher size.

# %%
failures.prediction_changes(same_size["predictions"], test["predictions"],
                            labels=(f"{control.image_size} px", f"{cfg.image_size} px"), folder=c.figures,
                            name="07_changes")

# %%
failures.error_analysis(test["predictions"], title="07 · Higher resolution", prefix="07",
                        compare_with="05 (the same model before the fine-tune)", folder=c.figures)

# %%
c.record("4.1", cfg.output_dir, test, reference="the same fine-tune at the old size (07)",
         reference_top1=same_size)

# %% [markdown]
# ## What we saw
# This run's higher resolution beside the plan's figure and the published one:

# %%
from helpers.course import expectations

expectations.table(c, phases=["4.1"])

# %% [markdown]
# **How to read it.** The comparison figure holds three effects, and the lines above give each its own paired test:
# the 05 model simply *tested* at the higher size (the train/test resolution effect, no training at all), the extra
# fine-tune at 05's own size (more training alone), and the same fine-tune at the higher size against it (the
# resolution alone). The plan's step 4.1 is the last one, which the ledger records. Read the changes figure for the
# photos the resolution fixed and broke.
#
# **What to expect at the demo's scale.** 112 → 144 px is a small step, the demo's photos are at most 224 px (little
# fine texture to gain), and the 2-epoch fine-tune at `lr=3e-4` on 360 photos moves the model little. On food-101-mini,
# testing at 288 px without a fine-tune lost 1.2 points and 2 epochs there lost 0.4
# ([the measured ladder](../docs/notebooks.md#measured-the-technique-ladder-on-food-101-mini)).
#
# **What full Food-101 gives.** The plan expects +1-3% for B3 at 384 px (the plan's table: +1.5%). FixRes measured
# the effect on ImageNet: a ResNet-50 trained at 224 px reached 79.8% after testing at a higher size with a cheap
# fine-tune (Touvron et al. 2019); the same authors' FixEfficientNet applied it to EfficientNets. Memory and time
# grow with the square of the size: 384 px costs about 1.6 times 300 px per image.

# %% [markdown]
# ## Questions
# 1. Why do random-resized crops make objects look larger in training than in a centre crop at test time?
# 2. What does the middle bar of the comparison (the 05 model tested bigger, no training) measure?
# 3. FixRes fine-tunes only the classifier and the last BatchNorm at the test size. Why is that enough?
# 4. How much more memory does a batch at 384 px need than one at 300 px, and what did the plan change to fit it?
# 5. Why does a dataset of photos at most 224 px limit what a 384 px model can gain?
# 6. Which of the two effects would you expect to be larger on full Food-101, and why?

# %% [markdown]
# ## Try it
# Change one literal in the parameters cell and re-run the notebook: the changed runs train in folders named after
# the change, beside the course's runs (which 08 and 09 keep reading).
# 1. `TECHNIQUE["freeze_backbone"] = True` (run by the tests): fine-tune only the head at the new size, close to
#    FixRes's cheap adaptation. Compare it with the full fine-tune and with "tested bigger".
# 2. `SETTINGS["demo"]["image_size"] = 176` (from `144`): a bigger step up. Does "tested bigger" still help?
# 3. `SETTINGS["demo"]["epochs"] = 4` (from `2`): a longer fine-tune at the new size.

# %% [markdown]
# ## Further reading
# - Touvron, Vedaldi, Douze, Jégou 2019, [Fixing the train-test resolution discrepancy (FixRes)](https://arxiv.org/abs/1906.06423), and [FixEfficientNet](https://arxiv.org/abs/2003.08237).
# - Tan & Le 2021, [EfficientNetV2](https://arxiv.org/abs/2104.00298) (progressive learning: image size grows during training).
# - fastbook, [chapter 7: progressive resizing](https://github.com/fastai/fastbook/blob/master/07_sizing_and_tta.ipynb).
