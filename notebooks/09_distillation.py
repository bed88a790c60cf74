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
# **The comparison.** The student copies the settings of a run trained alone (full: the B3 of `04`; medium and
# demo: the lite0 baseline of `01`) and adds the teacher, so the teacher is the only difference. The teacher is
# the ensemble of `08` (its three members averaged), as in the README's measured ladder: a teacher must know
# more than the student, and the ensemble is the strongest model the course has.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu
# The student's settings: exactly those of the run it is compared with (REFERENCE), plus a teacher.
SETTINGS = {
    "full": dict(backbone="efficientnet_b3", pretrained="hub", image_size=300, batch_size=16, epochs=150,
                 warmup_epochs=5, patience=15, scheduler="cosine_restart", early_stopping=True, lr=3e-3,
                 augment="advanced", mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0),
    "medium": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=224, batch_size=32, epochs=8,
                   augment="basic", lr=3e-3),
    "demo": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=112, batch_size=32, epochs=4,
                 warmup_epochs=0.5, augment="basic", lr=3e-3),
    "ci": dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=64, batch_size=32, epochs=1,
               warmup_epochs=0.5, augment="basic", lr=3e-3),
}
REFERENCE = {"full": ("04_mixup_cutmix", "mixup"), "medium": ("01_baseline", "baseline"),
             "demo": ("01_baseline", "baseline"), "ci": ("01_baseline", "baseline")}
# The teacher: the ensemble of 08 (its members, averaged), per profile.
TEACHER = {
    "full": [("07_high_resolution", "hires"), ("08_ensemble", "b4"), ("08_ensemble", "resnet101")],
    "medium": [("07_high_resolution", "hires"), ("02_b3_upgrade", "resnet50"), ("04_mixup_cutmix", "mixup")],
    "demo": [("07_high_resolution", "hires"), ("02_b3_upgrade", "resnet50"), ("04_mixup_cutmix", "mixup")],
    "ci": [("07_high_resolution", "hires"), ("02_b3_upgrade", "resnet50"), ("04_mixup_cutmix", "mixup")],
}
TECHNIQUE = dict(kd_alpha=0.7, kd_temperature=3.0)  # loss = α · T² · KL(teacher_T ‖ student_T) + (1 - α) · CE
overrides = {}  # any TrainConfig setting over the above for this run, e.g. {"epochs": 2, "num_workers": 2}
# Set by `run-notebooks` (papermill passes them) and the tests; leave them: run folder, ledger, --rehearse
output_dir, ledger, rehearse = None, None, False

# %%
import helpers
from helpers import course, engine, plots

c = course.Course("09_distillation", profile, data_dir=data_dir, device=device, output_dir=output_dir,
                  ledger=ledger, rehearse=rehearse)
alone = c.require(*REFERENCE[profile])
teacher = [str(c.require(notebook, run)) for notebook, run in TEACHER[profile]]  # averaged, as in 08
cfg = c.config("student", {**SETTINGS[profile], **TECHNIQUE, "teacher": teacher, **overrides})
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

# %% [markdown]
# What differs from the student trained alone: the teacher's soft targets in the loss; settings, data and seed
# are the same.

# %%
teacher_test = c.ensemble(list(cfg.teacher), tag="09-teacher")
alone_test = c.evaluate(alone)
test = c.evaluate(cfg.output_dir)
plots.student_vs_teacher({f"ensemble of {len(cfg.teacher)} (08)": teacher_test}, (cfg.backbone, alone_test),
                         (cfg.backbone, test), folder=c.figures, name="09_student_vs_teacher")

# %%
plots.prediction_changes(alone_test["predictions"], test["predictions"], labels=("alone", "distilled"),
                         folder=c.figures, name="09_changes")

# %%
plots.error_analysis(test["predictions"], title="09 · Distilled student", prefix="09",
                     compare_with="01 (the student alone) and 08 (the teacher)", folder=c.figures)

# %%
c.record("4.3", cfg.output_dir, test, reference_top1=alone_test)
