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
# **Demo profile.** A short FixRes-style fine-tune of the lite2: 160 px (from 128), 2 epochs at lr 3e-4 with light
# augmentation and no mixing (the full profile keeps the plan's recipe). On 150 test photos one photo is 0.7
# points: differences of a few points are noise.

# %% tags=["parameters"]
profile = "demo"  # demo: the tiny set, CPU minutes · full: Food-101 at the plan's settings (MPS/CUDA) · ci: smoke test
data_dir = None  # None: the profile's data (demo, ci: data/food-101-tiny; full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
output_dir = None  # None: runs/course-<profile>; `python -m helpers run-notebooks` passes its run folder
ledger = None  # None: runs/ledger.csv, the results ledger of every run
rehearse = False  # True: this chain with random weights, 2 steps a run, small images (run-notebooks --rehearse)
# The run's settings in each profile (any TrainConfig field): full is the plan's, demo a CPU-sized stand-in.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=384, batch_size=8, epochs=150, lr=1e-4,
                 augment="advanced", mixup=True, cutmix=True),
    "demo": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=160, batch_size=32, epochs=2,
                 lr=3e-4, warmup_epochs=0.5, augment="light"),
    "ci": dict(backbone="tf_efficientnet_lite2", pretrained="offline", image_size=80, batch_size=32, epochs=1,
               lr=3e-4, warmup_epochs=0.5, augment="light"),
}
TECHNIQUE = dict(head_warmup_epochs=0)  # fine-tune the trained two-stage model at a higher resolution
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers import course, plots

c = course.Course("07_high_resolution", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger, rehearse=rehearse)
source = c.require("05_two_stage", "stage2")
cfg = c.config("hires", {**SETTINGS[profile], **TECHNIQUE, **overrides}, start_from=source)
cfg

# %% [markdown]
# ## Fine-tune at the higher resolution
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
plots.training_curves({f"fine-tune at {cfg.image_size} px": cfg.output_dir}, title="07 · Higher resolution",
                      folder=c.figures, name="07_training_curves")

# %% [markdown]
# ## Testing bigger, and training bigger
# The 05 model at its own size, the same model simply tested at the higher size, and the fine-tuned model.
# The middle one is the train/test resolution effect: random crops make objects look larger in training than in
# a centre crop at test time, so the same weights often score higher when simply tested bigger.

# %%
before = c.evaluate(source)
bigger = c.evaluate(source, image_size=cfg.image_size)
test = c.evaluate(cfg.output_dir)
plots.compare_top1({"05 model at its training size": before, f"05 model tested at {cfg.image_size} px": bigger,
                    f"fine-tuned at {cfg.image_size} px": test},
                   highlight=f"fine-tuned at {cfg.image_size} px", title="07 · Test top-1 and resolution",
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
c.record("4.1", cfg.output_dir, test, reference_top1=before["top1"])
