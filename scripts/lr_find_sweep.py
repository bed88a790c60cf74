"""The learning-rate finder held against a sweep (issue 24): where its suggestions fall among rates trained for real.

    python scripts/lr_find_sweep.py --data-dir ../shared/data/food-101-mini --out runs/lr-find-sweep

The settings are notebook 01's demo run, read from its parameters cell (SETTINGS["demo"] and TECHNIQUE:
tf_efficientnet_lite0 with the offline ImageNet weights, 112 px, batch 32, augment basic, 4 epochs, warmup 0.5
epoch), on food-101-mini (10 classes; 540 train / 60 val / 250 test photos). First the finder runs on them
(`helpers.lr_find`, `--steps` steps, fastai's range 1e-7 to 10), then one run trains at each rate of `--rates`
with everything else equal. A rate is judged by its best validation top-1 (what the course chooses by); the test
top-1 of its best epoch is shown with its 95% interval and a paired test against 01's rate (McNemar on the test
photos each run fixed and broke), never used to choose. Finished runs are reused, so an interrupted sweep
continues where it stopped.

Writes OUT/finder/ (lr_find.csv, lr_find.json, lr_find.png), OUT/lr-<rate>/ (the runs), OUT/predictions/ (their
test predictions), OUT/sweep.csv, and OUT/lr_find_vs_sweep.png (the finder's curve with the sweep's validation
top-1 on the same rate axis); prints a Markdown table and where each suggestion falls.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import helpers  # noqa: E402
from helpers.course import analysis, plots  # noqa: E402
from helpers.course.parameters import parameters  # noqa: E402
from helpers.data.splits import load_splits  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_baseline.ipynb"
RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def notebook_01_config(data_dir: str, num_workers: int, device: str) -> helpers.TrainConfig:
    """01's demo settings (its parameters cell) on `data_dir`."""
    cell = parameters(NOTEBOOK)
    return helpers.TrainConfig(**{**cell["SETTINGS"]["demo"], **cell["TECHNIQUE"]}, dataset="food-101",
                               data_dir=data_dir, num_workers=num_workers, device=device, resume="auto")


def where(rate: float, swept: list[float]) -> str:
    """Where `rate` falls among the swept rates, e.g. "between 1e-03 and 3e-03 (nearer 3e-03)"."""
    i = bisect.bisect_left(swept, rate)
    if i == 0:
        return f"below the sweep (under {swept[0]:.0e})"
    if i == len(swept):
        return f"above the sweep (over {swept[-1]:.0e})"
    lo, hi = swept[i - 1], swept[i]
    nearer = lo if rate / lo < hi / rate else hi  # nearer on the log axis
    return f"between {lo:.0e} and {hi:.0e} (nearer {nearer:.0e})"


def sweep_figure(found, rows: list[dict], current_lr: float, out: Path) -> Path | None:
    """The finder's figure with the sweep's best validation top-1 per rate on a second axis."""
    fig = plots.lr_finder(found, current_lr=current_lr,
                          title="lr-find on food-101-mini (01's demo settings) and the sweep trained there")
    ax = fig.axes[0].twinx()
    ax.plot([r["lr"] for r in rows], [r["val_top1"] for r in rows], color="#d62728", marker="s", lw=1.5,
            label="sweep: best val top-1 (%)")
    ax.set_ylabel("best validation top-1 of a 4-epoch run (%)", color="#d62728")
    ax.set_ylim(0, 100)
    ax.grid(False)
    ax.legend(loc="upper right", frameon=False)
    return plots.save_figure(fig, "lr_find_vs_sweep", out)


def train_minutes(run: Path) -> float:
    """The minutes the run's epochs took (metrics.csv: a reused run's summary counts only its reuse)."""
    with open(run / "metrics.csv", newline="") as f:
        return sum(float(row["epoch_seconds"]) for row in csv.DictReader(f)) / 60


def paired_against_01(rows: list[dict], cfg: helpers.TrainConfig, out: Path) -> None:
    """Add to each row the paired test against 01's rate on the test photos: the photos it gets right that 01's
    run gets wrong (fixed), the reverse (broken), and McNemar's p. The predictions go to OUT/predictions/, not
    into the runs."""
    files = {}
    for r in rows:
        files[r["lr"]] = out / "predictions" / f"lr-{r['lr']:.0e}.csv"
        if not files[r["lr"]].is_file():
            files[r["lr"]].parent.mkdir(parents=True, exist_ok=True)
            helpers.evaluate(str(out / f"lr-{r['lr']:.0e}"), dataset=cfg.dataset, data_dir=cfg.data_dir,
                             split="test", predictions=str(files[r["lr"]]), num_workers=cfg.num_workers)
    for r in rows:
        if cfg.lr not in files or r["lr"] == cfg.lr:
            r.update(fixed_vs_01="", broken_vs_01="", p_vs_01="")
            continue
        changes = analysis.paired_changes(files[cfg.lr], files[r["lr"]])
        r.update(fixed_vs_01=len(changes["fixed"]), broken_vs_01=len(changes["broken"]), p_vs_01=changes["p"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="food-101-mini (the official layout)")
    p.add_argument("--out", default="runs/lr-find-sweep")
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--steps", type=int, default=100, help="the finder's steps at most (fastai: 100)")
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    cfg = notebook_01_config(args.data_dir, args.num_workers, args.device)

    started = time.perf_counter()
    found = helpers.lr_find(replace(cfg, output_dir=str(out / "unused")), output_dir=str(out / "finder"),
                            steps=args.steps)
    finder_minutes = (time.perf_counter() - started) / 60

    rows = []
    for rate in sorted(args.rates):
        run = out / f"lr-{rate:.0e}"
        summary = helpers.train(replace(cfg, lr=rate, output_dir=str(run)))
        rows.append({"lr": rate, "val_top1": summary["val_top1"], "best_epoch": summary["best_epoch"],
                     "test_top1": summary["test_top1"], "test_n": summary["test_n"],
                     "train_minutes": train_minutes(run)})
    paired_against_01(rows, cfg, out)
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    swept = [r["lr"] for r in rows]
    best = max(rows, key=lambda r: r["val_top1"])  # the first (lowest) rate on a tie
    marks = {r["lr"]: [] for r in rows}
    for rule, rate in found.suggestions.items():
        nearest = min(swept, key=lambda s: abs(math.log(s / rate)))
        marks[nearest].append(f"{rule} {rate:.1e}")
    n_val = len(load_splits(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed).val)
    print(f"\nlr-find: {len(found.rates)} steps ({found.stopped}), {finder_minutes:.1f} min; backbone "
          f"{'held (the head-only warm-up phase)' if found.backbone_held else 'trained'}")
    print(f"\n| lr | best val top-1 (% of {n_val}) | at epoch | test top-1 (%, 95% interval) | vs 01's {cfg.lr:.0e} on "
          "test: fixed / broken, McNemar p | train min | finder's suggestions nearest |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        paired = (f"{r['fixed_vs_01']} / {r['broken_vs_01']}, p = {r['p_vs_01']:.3g}" if r["p_vs_01"] != ""
                  else "(01's rate)" if r["lr"] == cfg.lr else "")
        print(f"| {r['lr']:.0e} | {r['val_top1']:.1f} | {r['best_epoch']} | "
              f"{analysis.with_interval(r['test_top1'], r['test_n'])} | {paired} | {r['train_minutes']:.1f} | "
              f"{', '.join(marks[r['lr']]) or ''} |")
    print(f"\nBest rate by validation: {best['lr']:.0e} ({best['val_top1']:.1f}% of {n_val} val photos).")
    for rule, rate in found.suggestions.items():
        print(f"  {rule:8s} {rate:.2e}: {where(rate, swept)}")
    figure = sweep_figure(found, rows, cfg.lr, out)
    print(f"\nFigures: {found.figure} and {figure}; table: {out / 'sweep.csv'}")


if __name__ == "__main__":
    main()
