"""helpers: the Food-101 workbook's package: data, augmentation, models, the training loop, evaluation, plots.

    import helpers
    cfg = helpers.TrainConfig(backbone="tf_efficientnet_lite0", pretrained="offline", epochs=3,
                              output_dir="runs/demo")
    summary = helpers.train(cfg)
    helpers.evaluate("runs/demo", dataset="food-101", data_dir="data/food-101-tiny", split="test")

Importing the package has no side effects; heavy modules load when their functions are called.
"""

from .base.config import TrainConfig, make_config
from .base.devices import get_device, seed_everything
from .base.errors import UserError

__all__ = ["TrainConfig", "UserError", "make_config", "train", "evaluate", "ensemble", "predict", "get_device", "seed_everything"]


def train(config: TrainConfig) -> dict:
    """Train with `config` (helpers.training.engine.fit, with the runs that --teacher and --init-from name loaded
    by helpers.use.runs.train); returns the summary written to summary.json."""
    from .use.runs import train as _train

    return _train(config)


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
