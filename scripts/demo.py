"""The README's main command (`make demo`): train and evaluate on the tiny real Food-101 set in the repo.

Runs in a few minutes on a laptop CPU and prints where everything went.
"""

import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import helpers  # noqa: E402
from helpers.base.errors import UserError  # noqa: E402


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    cfg = helpers.TrainConfig(dataset="food-101", data_dir=str(ROOT / "data/food-101-tiny"),
                              backbone="tf_efficientnet_lite0", pretrained="offline", epochs=4, image_size=160,
                              output_dir=str(out))
    try:
        summary = helpers.train(cfg)
        test = helpers.evaluate(str(out), dataset="food-101", data_dir=cfg.data_dir, split="test",
                                predictions=str(out / "test_predictions.csv"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(test))
    print(f"\nDemo finished: test top-1 {test['top1']:.1f}% on {test['n']} photos "
          f"(trained {summary['train_seconds'] / 60:.1f} min).\nOutputs: {out}\n"
          f"  metrics.csv (per epoch), best.pt / last.pt, summary.json, test_predictions.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
