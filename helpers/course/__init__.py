"""The course wing: what the notebooks need beside the library.

course (the Course class: a notebook's run folders, the runs it needs, ledger rows), roadmap (the plan's phases
and the results table), runner and execute (`run-notebooks`: papermill, headless), kernels and zygote (on Linux, each notebook's kernel forked
from a server that loaded torch once), pairing (jupytext pairs),
parameters (parameters cells read without running them), environment (00_setup's checks), ledger (the results
ledger CSV), analysis (intervals, McNemar, tables), comparison (one comparison stated one way: intervals,
fixed/broken, McNemar p, verdict), run_names (run folders named after a Try it's change, identical runs reused,
keyed caches), times (each notebook's time per profile, docs/times.csv), expectations (plan vs published vs
measured), plots (figure style, curves, comparisons, roadmap, the learning-rate finder), failures (confusion
matrix, failure gallery with activation maps), previews (techniques on real photos), predict_figures,
probe_figures, widgets (ipywidgets explorers).

May import: use, training, data, base.
"""
