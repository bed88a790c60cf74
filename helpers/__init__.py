"""helpers: the Food-101 workbook's package: data, augmentation, models, the training loop, evaluation, plots.

    import helpers
    cfg = helpers.TrainConfig(backbone="tf_efficientnet_lite0", pretrained="offline", epochs=3,
                              output_dir="runs/demo")
    summary = helpers.train(cfg)
    helpers.evaluate("runs/demo", dataset="food-101", data_dir="data/food-101-tiny", split="test")

Importing the package has no side effects; heavy modules load when their functions are called.
"""

from .config import TrainConfig, UserError, make_config
from .utils import get_device, seed_everything

__all__ = ["TrainConfig", "UserError", "make_config", "train", "evaluate", "ensemble", "predict", "get_device", "seed_everything"]


def train(config: TrainConfig) -> dict:
    """Train with `config` (see helpers.engine.fit); returns the summary written to summary.json."""
    from .engine import fit

    return fit(config)


def evaluate(checkpoint: str, **kwargs) -> dict:
    """Evaluate a trained model (see helpers.inference.evaluate)."""
    from .inference import evaluate as _evaluate

    return _evaluate(checkpoint, **kwargs)


def ensemble(models: list[str], **kwargs) -> dict:
    """Evaluate the softmax average of several trained models (see helpers.inference.ensemble)."""
    from .inference import ensemble as _ensemble

    return _ensemble(models, **kwargs)


def predict(model_or_run, photos, **kwargs):
    """Top-k classes of photos (files, folders, globs) as a pandas table (see helpers.predict_photos.predict)."""
    from .predict_photos import predict as _predict

    return _predict(model_or_run, photos, **kwargs)
