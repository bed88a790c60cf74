"""The medium profile's expected minutes per notebook on an Apple-silicon Mac, by arithmetic (an estimate, not a
measurement on a Mac).

    PYTHONPATH=. python scripts/medium_estimate.py                 # measures this CPU's train step, prints the table
    PYTHONPATH=. python scripts/medium_estimate.py --no-measure    # FLOP arithmetic only

How: (1) each notebook's work in the medium profile (its runs' backbones, sizes and epochs read from the
notebooks' parameters cells; 6,818 train + 757 val photos an epoch, 2,525 test photos per evaluation) as images
through a forward pass (evaluation, features, a teacher) or a training step (about 3 forward passes: forward,
backward for activations and for weights); (2) the FLOPs of one forward pass of each backbone at its size,
counted by torch's FlopCounterMode; (3) a device's sustained rate: measured here for this CPU (the trainer's
own step on synthetic batches, `bench`'s section 1), and for the Mac's GPU its published FP32 peak (Apple: M1
2.6, M1 Pro 5.2, M1 Max 10.4 TFLOPS) times a utilisation of 10%, the share an EfficientNet's depthwise
convolutions in float32 typically reach of a GPU's peak. Re-measure on the Mac with `python -m helpers bench
--device mps` and scale the table by the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers.course.parameters import parameters

ROOT = Path(__file__).resolve().parents[1]
TRAIN, VAL, TEST = 6818, 757, 2525  # 75 train photos of 101 classes, 10% held out for validation; 25 test
TRAIN_STEP = 3.0  # a training step costs about three forward passes
MAC_GPUS = {"M1 (8-core GPU)": 2.6e12, "M1 Pro (16-core GPU)": 5.2e12}  # Apple's published FP32 peaks
UTILISATION = 0.10


def forward_flops(backbone: str, size: int) -> float:
    """FLOPs of one forward pass of one image (a multiply-add counts 2)."""
    model = timm.create_model(backbone, pretrained=False, num_classes=101).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def cpu_rate(backbone: str, size: int, batch: int = 8, steps: int = 3) -> float:
    """Images/s of a plain training step (AdamW) on this CPU, synthetic batches."""
    model = timm.create_model(backbone, pretrained=False, num_classes=101).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 101, (batch,))
    for i in range(steps + 1):
        if i == 1:
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * steps / (time.perf_counter() - started)


def _settings(notebook: str) -> dict:
    return parameters(ROOT / "notebooks" / f"{notebook}.ipynb")


def _train(s: dict, epochs: int | None = None) -> list[tuple[str, int, float]]:
    """A training run: its steps, a validation pass an epoch and one test pass, as (backbone, size, forwards)."""
    e = epochs or s["epochs"]
    return [(s["backbone"], s["image_size"], e * (TRAIN * TRAIN_STEP + VAL) + TEST)]


def workload() -> dict[str, list[tuple[str, int, float]]]:
    """Per notebook: (backbone, image size, forward passes of one image) in the medium profile."""
    m = {nb: _settings(nb) for nb in ("01_baseline", "02_b3_upgrade", "03_augmentations", "04_mixup_cutmix",
                                      "05_two_stage", "06_tta", "07_high_resolution", "09_distillation",
                                      "10_beyond_95")}
    base = m["01_baseline"]["SETTINGS"]["medium"]
    b3, r50 = m["02_b3_upgrade"]["SETTINGS"]["medium"]["b3"], m["02_b3_upgrade"]["SETTINGS"]["medium"]["resnet50"]
    aug = m["03_augmentations"]["SETTINGS"]["medium"]
    s1, s2 = (m["05_two_stage"]["SETTINGS"]["medium"][k] for k in ("stage1", "stage2"))
    hires = m["07_high_resolution"]["SETTINGS"]["medium"]
    student = m["09_distillation"]["SETTINGS"]["medium"]
    views = sum(m["06_tta"]["VIEWS"]["medium"])
    probes = m["10_beyond_95"]["backbones"]["medium"]
    lpft = {**dict(zip(("backbone", "pretrained", "image_size"), probes["lite0"])),
            **m["10_beyond_95"]["finetune"]["medium"]}
    members = [(hires["backbone"], hires["image_size"]), (r50["backbone"], r50["image_size"]),
               (aug["backbone"], aug["image_size"])]
    teacher = [(b, size, (TRAIN + VAL) * student["epochs"]) for b, size in members]  # a forward per photo
    return {
        "01_baseline": _train(base) * 2,  # and the run with BatchNorm statistics updated
        "02_b3_upgrade": _train(b3) + _train(b3 | {"image_size": base["image_size"]}) + _train(r50),  # + control
        "03_augmentations": _train(aug) * 3,  # the control without restarts, 3.1 and 3.2
        "04_mixup_cutmix": _train(aug),
        "05_two_stage": [(s1["backbone"], s1["image_size"], s1["epochs"] * (TRAIN * 1.3 + VAL) + TEST)]  # frozen
        + _train(s2) + _train(s2, s1["epochs"] + s2["epochs"]),
        "06_tta": [(s2["backbone"], s2["image_size"], views * TEST)],
        "07_high_resolution": _train(hires) + _train(hires | {"image_size": s2["image_size"]})
        + [(s2["backbone"], s2["image_size"], 2 * TEST), (s2["backbone"], hires["image_size"], TEST)],
        "08_ensemble": [(b, size, 2 * TEST) for b, size in members],  # the ensemble, and each member alone
        "09_distillation": _train(student) + teacher + [(b, size, TEST) for b, size in members],
        "10_beyond_95": [(name, size, TRAIN + VAL + 4 * TEST) for name, _, size in probes.values()]  # + paired tests
        + _train(lpft) * 2,  # LP-FT and the same fine-tune from a new head
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-measure", action="store_true", help="skip measuring this CPU's train step")
    args = p.parse_args()
    torch.manual_seed(0)
    work = workload()
    pairs = sorted({(b, s) for runs in work.values() for b, s, _ in runs})
    flops = {pair: forward_flops(*pair) for pair in pairs}
    rates = {} if args.no_measure else {pair: cpu_rate(*pair) for pair in pairs}
    for (b, s), f in flops.items():
        cpu = f"; this CPU {rates[(b, s)]:.1f} train images/s" if rates else ""
        print(f"{b} @{s} px: {f / 1e9:.2f} GFLOP a forward pass{cpu}")
    header = "| notebook | forward passes (millions) | PFLOP |" + "".join(f" {g} min |" for g in MAC_GPUS)
    header += " this CPU min |" if rates else ""
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    totals = [0.0] * (len(MAC_GPUS) + 1)
    for notebook, runs in work.items():
        total = sum(n * flops[(b, s)] for b, s, n in runs)
        minutes = [total / (peak * UTILISATION) / 60 for peak in MAC_GPUS.values()]
        if rates:  # this CPU: images of a training step at its measured rate, forwards at three times it
            minutes.append(sum(n / TRAIN_STEP / rates[(b, s)] for b, s, n in runs) / 60)
        totals = [t + m for t, m in zip(totals, minutes)]
        print(f"| {notebook} | {sum(n for *_, n in runs) / 1e6:.2f} | {total / 1e15:.2f} | "
              + " | ".join(f"{m:.0f}" for m in minutes) + " |")
    print("| all | | | " + " | ".join(f"{t:.0f}" for t in totals[:len(MAC_GPUS) + (1 if rates else 0)]) + " |")


if __name__ == "__main__":
    main()
