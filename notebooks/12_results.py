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
# # 12 · Results: the plan's roadmap, measured
#
# Every notebook appended its final numbers to the results ledger (one CSV for all runs). This notebook reads
# it and puts the measured test top-1 of each phase beside what the plan expects. The measured gain of each
# phase is taken against the run it builds on (the "gain against" column), not against the plan's cumulative
# sum.
#
# Read the demo profile's numbers with care: 10 classes and 150 test photos (`00_setup` prints what a test split of
# that size can tell), a few epochs, stand-in models at half the resolution. They show that the pipeline works and
# what each picture looks like, not what the techniques are worth on Food-101. The medium profile (2,525 test
# photos) tells the techniques apart; only the full profile measures what they are worth on Food-101.

# %% tags=["parameters"]
profile = "demo"  # demo: tiny set, CPU minutes · medium: 10% of Food-101, an evening on a Mac · full: the plan
data_dir = None  # None: the profile's (demo: data/food-101-tiny, medium: data/food-101-medium, full: data/food-101)
device = "auto"  # auto (cuda, then mps, then cpu) | cuda | mps | cpu

# %%
from helpers.course import analysis, course, plots, roadmap

c = course.Course("12_results", profile, data_dir=data_dir, device=device)
c.times()

# %%
table = roadmap.results(c)
print(f"ledger {c.ledger_path}, course run {c.output_dir}")
analysis.format_table(table.drop(columns=["in plan table"]))

# %% [markdown]
# Every measured top-1 carries its 95% interval (Wilson, over the test photos): how precisely that one number is
# known. A gain is tested on the photos themselves: both runs saw the same test photos, so only the photos one got
# right and the other wrong tell them apart ("fixed" and "broken"). The exact McNemar test ("paired p") asks how
# likely that split is if the change did nothing; at p < 0.05 the gain is "real", at p >= 0.05 "within noise": it
# may be real, but this test set cannot tell. A row whose ledger entry has no such counts says "no paired test":
# overlapping intervals decide nothing. The plan's figure and a published one (with its source) are separate
# columns; "this run trained" says what ran in this profile, which is not the plan's recipe beside it, and the
# training minutes name the machine they were measured on. The rows follow the course's order: 3.5 before 3.4,
# whose views average the 3.5 model's predictions.

# %%
plots.roadmap_table(table, title=f"The plan's roadmap with the measured numbers ({profile} profile)",
                    folder=c.figures, name="12_roadmap_table")

# %%
plots.roadmap_chart(table, title=f"Expected (plan, Food-101) against measured ({profile} profile)",
                    folder=c.figures, name="12_roadmap")

# %%
roadmap.save_results(c, table)

# %% [markdown]
# ## The plan, the published figures and this run
# The table of `00_setup` again, now with this run's numbers: per phase, the plan's expectation on full Food-101, a
# published full-scale figure (with its source) and this run's top-1 with its 95% interval.

# %%
from helpers.course import expectations

expectations.table(c)

# %% [markdown]
# **Why this run's numbers differ from both.** In the demo profile the models are stand-ins (efficientnet-lite0/1/2
# at 96-144 px, not B0-B4 at 224-384 px), trained 1-3 epochs (not 50-150) on 360 photos of 10 classes (not
# 75,750 of 101), and tested on 150 photos: chance is one in ten, and a gain must pass the paired test to mean
# anything. Techniques made for long runs (restarts, strong augmentation, mixup) cost accuracy in a few epochs, and
# techniques that need a strong reference (distillation, ensembles of diverse members) have little to work with.
# The published figures come from full Food-101 or, where none exists, from ImageNet. The plan's own figures are
# expectations, optimistic at the top (95.5-99.5%, where the best published EfficientNet reaches 93.0%, Tan & Le
# 2019) and cautious at the bottom (75-80% for B0, where a published ResNet-50 fine-tune reaches 90.5%, Redkar et
# al. 2019).

# %% [markdown]
# Every ledger row of this profile, newest last (all course runs):

# %%
from helpers.course import ledger

history = ledger.read(c.ledger_path)
analysis.format_table(history[history["profile"].astype(str) == profile].tail(30))
