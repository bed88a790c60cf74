"""The measured ladder (issue 3): the baseline and each technique of the plan on real photos, one table.

    python scripts/ladder.py --data-dir ../shared/data/food-101-mini --out runs/ladder

Every row trains (or evaluates) with the offline ImageNet weights of tf_efficientnet_lite{0,1,2} on
food-101-mini (10 classes, 540 train / 60 val / 250 test photos) and reports test top-1 and the minutes it took.
Runs that already finished are reused, so an interrupted ladder continues where it stopped. Writes
OUT/ladder.csv and prints a Markdown table.

The ladder changes one thing at a time on one base run (the course changes them cumulatively, as the plan
does); each technique's settings are read from the notebook that teaches it (its parameters cell), so the two
cannot drift apart: 03's advanced preset, 04's mixup/CutMix, 05's discriminative rate, 09's distillation.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import helpers  # noqa: E402
from helpers.base.config import TrainConfig
from helpers.course.parameters import parameters

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_setting(notebook: str, name: str) -> dict:
    """A setting literal of a course notebook's parameters cell, e.g. 04's TECHNIQUE."""
    return parameters(NOTEBOOKS / f"{notebook}.ipynb")[name]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/food-101-mini")
    p.add_argument("--out", default="runs/ladder")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-workers", type=int, default=-1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    base = TrainConfig(dataset="food-101", data_dir=args.data_dir, backbone="tf_efficientnet_lite0",
                       pretrained="offline", epochs=args.epochs, image_size=args.image_size,
                       num_workers=args.num_workers, resume="auto")
    data = dict(dataset="food-101", data_dir=args.data_dir, split="test", num_workers=args.num_workers)
    rows: list[dict] = []

    def train(name: str, cfg: TrainConfig) -> dict:
        cfg = replace(cfg, output_dir=str(out / name))
        started = time.perf_counter()
        summary = helpers.train(cfg)
        timing = out / name / "ladder_minutes.json"
        if not timing.exists():  # the time of the run that trained it, not of a reuse
            timing.write_text(json.dumps({"minutes": (time.perf_counter() - started) / 60}))
        summary["minutes"] = json.loads(timing.read_text())["minutes"]
        return summary

    def add(technique: str, setting: str, top1: float, top5: float, minutes: float) -> None:
        rows.append({"technique": technique, "setting": setting, "test_top1": round(top1, 1),
                     "test_top5": round(top5, 1), "minutes": round(minutes, 1)})
        logging.info("LADDER %s | %s | %.1f", technique, setting, top1)

    s = train("baseline", base)
    setting = f"lite0 {args.image_size}px, {args.epochs} epochs, the trainer's defaults (augment {base.augment})"
    add("baseline (plain fine-tune)", setting, s["test_top1"], s["test_top5"], s["minutes"])
    baseline = s

    advanced = notebook_setting("03_augmentations", "AUGMENT")["3.2"]
    s = train("advanced_aug", replace(base, augment=advanced))
    add("advanced augmentation", f"--augment {advanced}", s["test_top1"], s["test_top5"], s["minutes"])

    mix = notebook_setting("04_mixup_cutmix", "TECHNIQUE")
    s = train("mixup_cutmix", replace(base, **mix))
    add("mixup + cutmix", f"--mixup --cutmix (alpha {mix['mixup_alpha']:g} / {mix['cutmix_alpha']:g})",
        s["test_top1"], s["test_top5"], s["minutes"])

    s1 = train("two_stage_1", replace(base, freeze_backbone=True, epochs=2, lr=1e-2))
    ratio = notebook_setting("05_two_stage", "STAGE2")["backbone_lr_ratio"]
    s2 = train("two_stage_2", replace(base, init_from=str(out / "two_stage_1"), lr=1e-3, backbone_lr_ratio=ratio,
                                      warmup_epochs=0.5))
    add("two-stage + discriminative LR", f"2 epochs frozen (lr 1e-2), then lr 1e-3, backbone x{ratio:g}",
        s2["test_top1"], s2["test_top5"], s1["minutes"] + s2["minutes"])

    s = train("ema", replace(base, model_ema=True))
    add("model EMA", "--model-ema (decay 0.998), EMA weights", s["test_ema_top1"], s["test_ema_top5"], s["minutes"])

    for n in (2, 6):
        started = time.perf_counter()
        r = helpers.evaluate(str(out / "baseline"), tta=n, **data)
        add("test-time augmentation", f"baseline, evaluate --tta {n}", r["top1"], r["top5"], (time.perf_counter() - started) / 60)

    hi = args.image_size + 64
    started = time.perf_counter()
    r = helpers.evaluate(str(out / "baseline"), image_size=hi, **data)
    add("higher resolution (eval only)", f"baseline evaluated at {hi}px", r["top1"], r["top5"], (time.perf_counter() - started) / 60)
    s = train("high_res", replace(base, init_from=str(out / "baseline"), image_size=hi, epochs=2, lr=1e-3,
                                  warmup_epochs=0.2))
    add("higher resolution", f"baseline + 2 epochs at {hi}px", s["test_top1"], s["test_top5"], baseline["minutes"] + s["minutes"])

    members = [out / "baseline"]
    # lite1 and lite2 at their native resolutions' offset from lite0's 224 (240 and 260 at the default size)
    for backbone, size in (("tf_efficientnet_lite1", args.image_size + 16), ("tf_efficientnet_lite2", args.image_size + 36)):
        name = backbone.replace("tf_efficientnet_", "")
        s = train(name, replace(base, backbone=backbone, image_size=size))
        add("bigger backbone", f"{name} {size}px", s["test_top1"], s["test_top5"], s["minutes"])
        members.append(out / name)
    started = time.perf_counter()
    r = helpers.ensemble([str(m) for m in members], **data)
    minutes = sum(json.loads((m / "ladder_minutes.json").read_text())["minutes"] for m in members)
    add("ensemble", "lite0 + lite1 + lite2, mean softmax", r["top1"], r["top5"], minutes + (time.perf_counter() - started) / 60)

    kd = notebook_setting("09_distillation", "TECHNIQUE")
    s = train("distilled", replace(base, teacher=tuple(str(m) for m in members), **kd))
    add("distillation", f"lite0 student of the ensemble (alpha {kd['kd_alpha']:g}, T {kd['kd_temperature']:g})",
        s["test_top1"], s["test_top5"], s["minutes"])

    for r in rows:
        r["vs_baseline"] = round(r["test_top1"] - rows[0]["test_top1"], 1)
    with open(out / "ladder.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| technique | setting | test top-1 % | vs baseline | test top-5 % | minutes |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['technique']} | {r['setting']} | {r['test_top1']} | {r['vs_baseline']:+.1f} | {r['test_top5']} "
              f"| {r['minutes']} |")


if __name__ == "__main__":
    main()
