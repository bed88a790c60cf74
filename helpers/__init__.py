"""helpers: the Food-101 workbook's package: data, augmentation, models, the training loop, evaluation, plots.

    import helpers
    cfg = helpers.TrainConfig(backbone="tf_efficientnet_lite0", pretrained="offline", epochs=3,
                              output_dir="runs/demo")
    summary = helpers.train(cfg)
    helpers.evaluate("runs/demo", dataset="food-101", data_dir="data/food-101-tiny", split="test")

Heavy modules load when their functions are called. Importing the package does two things besides: it turns off
albumentations' check for a newer release, a web request to PyPI at every import (in every DataLoader worker and
notebook kernel; up to 2 s each offline; NO_ALBUMENTATIONS_UPDATE=0 in the environment keeps the check), and it
keeps jsonschema (under nbformat, papermill and jupytext) from importing rfc3987_syntax, which compiles an Earley
grammar at import (0.85 s of every process that reads a notebook) for the "iri" string format only, which no
notebook schema uses (jsonschema issue 1428); scripts/lab.py does the same for JupyterLab and the git filters.
"""

import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .base.config import TrainConfig, make_config
from .base.devices import get_device, seed_everything
from .base.errors import UserError

sys.modules.setdefault("rfc3987_syntax", None)  # None: importing it raises ImportError, which jsonschema skips

__all__ = ["TrainConfig", "UserError", "make_config", "train", "lr_find", "evaluate", "ensemble", "predict", "get_device",
           "seed_everything"]


def train(config: TrainConfig) -> dict:
    """Train with `config` (helpers.training.engine.fit, with the runs that --teacher and --init-from name loaded
    by helpers.use.runs.train); returns the summary written to summary.json."""
    from .use.runs import train as _train

    return _train(config)


def lr_find(config: TrainConfig, *, output_dir: str, steps: int = 100, start_lr: float = 1e-7,
            end_lr: float = 10.0):
    """A learning-rate range test on `config`'s model and data (fastai's lr_find; see
    helpers.training.lr_find): the loss against an exponentially growing rate for at most `steps` steps of the
    real train step, stopping when the loss diverges, and the rates suggested from it (valley, steep, minimum/10).
    With head_warmup_epochs > 0 the backbone is held still, as in the first epoch of `train`.

    Writes only into `output_dir` (new, or an earlier finder's folder; never a run's): lr_find.csv,
    lr_find.json and the figure lr_find.png (`helpers.course.plots.lr_finder`, with `config.lr` marked). The
    runs of --teacher and --init-from are loaded as `train` loads them; nothing on disk is trained.

    Returns:
        An LRFinderResult: `.suggestion` (the valley rule's rate), `.suggestions`, the curve (`.rates`,
        `.losses`, `.smoothed`) and `.summary()`, the JSON of lr_find.json.
    """
    from .base.config import validate
    from .course.plots import lr_finder, save_figure
    from .training.lr_find import FIGURE, find_lr
    from .use.runs import init_loader, load_teachers

    cfg = validate(config)

    def figure(result, folder):
        return save_figure(lr_finder(result, current_lr=cfg.lr), FIGURE, folder)

    return find_lr(cfg, output_dir, steps=steps, start_lr=start_lr, end_lr=end_lr,
                   teachers=load_teachers(cfg.teacher), init=init_loader(cfg), figure=figure)


def evaluate(checkpoint: str, **kwargs) -> dict:
    """Evaluate a trained model (see helpers.use.inference.evaluate)."""
    from .use.inference import evaluate as _evaluate

    return _evaluate(checkpoint, **kwargs)


def ensemble(models: list[str], **kwargs) -> dict:
    """Evaluate the softmax average of several trained models (see helpers.use.inference.ensemble)."""
    from .use.inference import ensemble as _ensemble

    return _ensemble(models, **kwargs)


def predict(model_or_run, photos, **kwargs):
    """Top-k classes of photos (files, folders, globs) as a pandas table (see helpers.use.predict.predict)."""
    from .use.predict import predict as _predict

    return _predict(model_or_run, photos, **kwargs)
