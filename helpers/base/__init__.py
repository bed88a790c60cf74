"""The base wing: what everything stands on, no machine learning.

errors (UserError: the user's input or environment, exit 2), config (TrainConfig, the typed dataclass of every
training setting, and its validation), io (atomic writes, fsync, write errors named), lock (one writer per run
folder), progress (progress bars for terminals, notebooks and logs), devices (device, seeds, mixed precision),
mps_check (Apple MPS limits enforced on any device: HELPERS_CHECK_MPS=1), distributed (torchrun helpers).

May import: nothing of helpers outside base. Files, locks and progress bars know no config (import-linter,
pyproject.toml).
"""
