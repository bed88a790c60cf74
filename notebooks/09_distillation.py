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

# %% tags=["parameters"]
profile = "demo"  # demo: the tiny set, CPU minutes · full: Food-101 at the plan's settings (MPS/CUDA) · ci: smoke test
data_dir = None  # None: the profile's data (demo, ci: data/food-101-tiny; full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
output_dir = None  # None: runs/course-<profile>; `python -m helpers run-notebooks` passes its run folder
ledger = None  # None: runs/ledger.csv, the results ledger of every run
rehearse = False  # True: this chain with random weights, 2 steps a run, small images (run-notebooks --rehearse)
# The student's settings: exactly those of the run it is compared with (REFERENCE), plus a teacher.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=300, batch_size=16, epochs=150,
                 warmup_epochs=5, patience=15, scheduler="cosine_restart", early_stopping=True, lr=3e-3,
                 augment="advanced", mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0),
    "demo": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=112, batch_size=32, epochs=4,
                 warmup_epochs=0.5, augment="basic", lr=3e-3),
    "ci": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=64, batch_size=32, epochs=1,
               warmup_epochs=0.5, augment="basic", lr=3e-3),
}
REFERENCE = {"full": ("04_mixup_cutmix", "mixup"), "demo": ("01_baseline", "baseline"), "ci": ("01_baseline", "baseline")}
TEACHER = {"full": ("08_ensemble", "b4"), "demo": ("07_high_resolution", "hires"), "ci": ("07_high_resolution", "hires")}
TECHNIQUE = dict(kd_alpha=0.7, kd_temperature=3.0)  # loss = α · T² · KL(teacher_T ‖ student_T) + (1 - α) · CE
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}

# %%
import helpers
from helpers import course, engine, plots

c = course.Course("09_distillation", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger, rehearse=rehearse)
alone = c.require(*REFERENCE[profile])
teacher = c.require(*TEACHER[profile])
cfg = c.config("student", {**SETTINGS[profile], **TECHNIQUE, "teacher": [str(teacher)], **overrides})
cfg

# %% [markdown]
# ## The loss on one batch
# The two terms of the distillation loss on one training batch, with the trainer's own `Teacher`, criterion and
# `kd_loss` (`engine.distillation_terms`), for the student trained alone: the hard term is its ordinary loss on
# the labels, the soft term how far its softened outputs are from the teacher's.

# %%
engine.distillation_terms(cfg, alone)

# %% [markdown]
# ## Train the student with the teacher
# A re-run after a crash continues from the last checkpoint.

# %%
helpers.train(cfg)
plots.training_curves({"student alone": alone, "student with the teacher": cfg.output_dir},
                      title="09 · The student alone and with the teacher", folder=c.figures,
                      name="09_training_curves")

# %% [markdown]
# ## Student against teacher

# %%
from helpers import inference

teachers = {inference.load_trained(t).config["backbone"]: c.evaluate(t) for t in cfg.teacher}
alone_test = c.evaluate(alone)
test = c.evaluate(cfg.output_dir)
plots.student_vs_teacher(teachers, (cfg.backbone, alone_test), (cfg.backbone, test), folder=c.figures,
                         name="09_student_vs_teacher")

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
