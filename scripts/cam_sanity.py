"""Do the class activation maps follow the food? Real test photos pasted at 112 px in the corners of larger grey
canvases: the share of each map's mass inside the photo's box against the box's share of the image (what a uniform
map gives), per canvas size, with the model reading the whole canvas at its size (the photo at 112 px) and reading
it as any photo (resized to its input size and centre-cropped: the photo much smaller); then seconds per map on
the CPU. Saves the sanity figure (examples per canvas size, the box outlined) to FIGURE.

    python scripts/cam_sanity.py --run runs/course-demo/01_baseline-baseline --figure /tmp/cam_sanity.png
    python scripts/cam_sanity.py --figure /tmp/cam_sanity.png          # trains the tests' run first (3 epochs)

Without --run it trains the tests' fixture run (lite0, offline ImageNet weights, 96 px, 3 epochs on the tiny set)
into --workdir. HELPERS_CHECK_MPS=1 runs the maps under the MPS check mode (slower: time with it unset).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ROOT / "data" / "food-101-tiny"
FAST = dict(dataset="food-101", data_dir=str(TINY), backbone="tf_efficientnet_lite0", pretrained="offline",
            image_size=96, batch_size=32, num_workers=0, lr=3e-3, warmup_epochs=0.5)  # tests/conftest.py's


def _samples(per_class: int) -> list[tuple[str, str]]:
    from helpers.data.splits import load_splits

    splits = load_splits("food-101", TINY)
    taken: dict[str, list[str]] = {}
    for path, label in splits.test:
        taken.setdefault(splits.class_names[label], [])
        if len(taken[splits.class_names[label]]) < per_class:
            taken[splits.class_names[label]].append(path)
    return [(p, c) for i in range(per_class) for c, ps in taken.items() for p in ps[i:i + 1]]


def _seconds_per_map(trained, photos: list[str], batch_size: int, image_size: int | None, repeats: int = 5) -> float:
    """The fastest of `repeats` passes over the photos, per map (the minimum: the CPU is shared, and other work
    only ever adds time)."""
    from helpers.use.cam import photo_maps

    photo_maps(trained, photos[:batch_size], batch_size=batch_size, image_size=image_size)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        photo_maps(trained, photos, batch_size=batch_size, image_size=image_size)  # the top-1's map: one pass
        times.append((time.perf_counter() - start) / len(photos))
    return min(times)


def _layer_shares(trained, rows: list[dict], boxes: list, data_config: dict) -> dict[str, tuple[float, float]]:
    """{layer: (mean share inside of the true class's map, share of all-zero maps)} for the layer the course reads
    (the feature map the head pools) and timm's `feature_info[-1]`, with the library called directly."""
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from helpers.data.augment import DeviceNormalize
    from helpers.use.cam import load_crop, mass_inside, target_layer

    model = trained.model
    module, layer, reshape = target_layer(model)
    last = model.feature_info[-1]
    layers = {"the feature map the head pools (the course's)": (module, layer, reshape),
              f"feature_info[-1] ({last['module']}, {last['num_chs']} channels)":
                  (model, model.get_submodule(last["module"]), None)}
    crops = np.stack([load_crop(r["pasted"], data_config) for r in rows])
    x = DeviceNormalize(data_config["mean"], data_config["std"])(torch.from_numpy(crops).permute(0, 3, 1, 2)
                                                                 .contiguous())
    targets = [ClassifierOutputTarget(trained.class_names.index(r["true"])) for r in rows]
    out = {}
    model.requires_grad_(False)
    for name, (run, read, transform) in layers.items():
        cam = GradCAM(model=run, target_layers=[read], reshape_transform=transform)
        cam.compute_input_gradient = True
        maps = cam(x, targets=targets)
        cam.activations_and_grads.release()
        out[name] = (statistics.mean(mass_inside(m, b) for m, b in zip(maps, boxes)),
                     statistics.mean(float(m.max() == 0) for m in maps))
    model.requires_grad_(True)
    return out


def _figure(examples: dict[str, list], side: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from helpers.data.splits import pretty
    from helpers.use.cam import overlay

    cols = max(len(v) for v in examples.values())
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.3 * cols, 2.6 * len(examples)), squeeze=False,
                             layout="constrained")
    for r, (label, items) in enumerate(examples.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c >= len(items):
                continue
            row, m, box = items[c]
            ax.imshow(overlay(m.crop, m.maps[row["true"]]))
            ys, xs = box.nonzero()
            ax.add_patch(Rectangle((xs.min() - 0.5, ys.min() - 0.5), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1,
                                   fill=False, ec="white", lw=1.5, ls="--"))
            ax.set_title(f"{pretty(row['true'], 18)}: {row['inside_true']:.0%} inside", fontsize=8, loc="left")
            if c == 0:
                ax.text(-0.08, 0.5, f"{label}\nuniform {row['uniform']:.0%}", rotation=90, va="center",
                        ha="right", fontsize=9, transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM of the true class: a {side} px test photo pasted on a grey canvas (box dashed), in what "
                 "the model read", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained run (default: train the tests' 3-epoch lite0 run into --workdir)")
    parser.add_argument("--figure", required=True, help="where to save the sanity figure (PNG)")
    parser.add_argument("--canvas", type=int, nargs="+", default=[224, 336, 448], help="canvas sizes, px")
    parser.add_argument("--side", type=int, default=112, help="the pasted photo's side, px")
    parser.add_argument("--per-class", type=int, default=3, help="test photos a class")
    parser.add_argument("--workdir", help="pasted photos (and the trained run); default: a temporary folder")
    args = parser.parse_args()

    import torch

    import helpers
    from helpers.base import mps_check
    from helpers.use.cam import canvas_check
    from helpers.use.runs import load_trained

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cam_sanity_"))
    run = args.run
    if run is None:
        run = str(work / "lite0")
        if not (Path(run) / "best.pt").is_file():
            helpers.train(helpers.TrainConfig(**FAST, epochs=3, output_dir=run))
    trained = load_trained(run, device="cpu")
    samples = _samples(args.per_class)
    d = trained.data_config
    print(f"run {run}: {trained.config['backbone']} at {d['image_size']} px (crop_pct {d['crop_pct']}), "
          f"{len(samples)} test photos, MPS check mode {'on' if mps_check.enabled() else 'off'}")
    print()
    print("| the model reads | canvas px | photo px in what it reads | photos | top-1 on them | uniform share | "
          "mean share inside, true class's map | the same, photos it got right | mean share inside, predicted "
          "class's map | photos above uniform (true class's map) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    examples, layers, uniform_of = {}, {}, {}
    for whole in (True, False):
        for canvas in args.canvas:
            label = f"{canvas} px canvas, {'read whole' if whole else 'its crop'}"
            rows, maps, boxes = canvas_check(trained, samples, work / f"canvas{canvas}{'w' if whole else 'c'}",
                                             canvas=canvas, side=args.side, whole=whole)
            right = [r for r in rows if r["true"] == r["predicted"]]
            mean = lambda rs, key: statistics.mean(r[key] for r in rs) if rs else float("nan")  # noqa: E731
            above = sum(r["inside_true"] > r["uniform"] for r in rows)
            uniform_of[label] = mean(rows, "uniform")
            side_px = statistics.mean(b.sum() ** 0.5 for b in boxes)
            print(f"| {'the whole canvas at its size' if whole else 'its crop (as evaluate)'} | {canvas} | "
                  f"{side_px:.0f} | {len(rows)} | {len(right)}/{len(rows)} | {mean(rows, 'uniform'):.3f} | "
                  f"{mean(rows, 'inside_true'):.3f} | {mean(right, 'inside_true'):.3f} | "
                  f"{mean(rows, 'inside_predicted'):.3f} | {above}/{len(rows)} |")
            if whole or canvas == args.canvas[0]:
                examples[label] = list(zip(rows, maps, boxes))[:4]  # the four corners
            if canvas == args.canvas[0] and hasattr(trained.model, "feature_info"):
                layers[label] = _layer_shares(trained, rows, boxes, {**d, "image_size": canvas, "crop_pct": 1.0}
                                              if whole else d)
    print()
    print("| layer Grad-CAM reads | pasted photos | uniform share | mean share inside, true class's map | "
          "all-zero maps |")
    print("|---|---|---|---|---|")
    for label, shares in layers.items():
        for name, (inside, zero) in shares.items():
            print(f"| {name} | {label} | {uniform_of[label]:.3f} | {inside:.3f} | {zero:.0%} |")
    _figure(examples, args.side, Path(args.figure))
    print()
    photos = [p for p, _ in samples]
    print(f"| seconds per map on CPU ({torch.get_num_threads()} threads), {trained.config['backbone']} | batch 1 | "
          "batch 8 |")
    print("|---|---|---|")
    for size in (None, max(args.canvas)):
        what = f"its crop, {d['image_size']} px" if size is None else f"a photo read whole at {size} px"
        print(f"| one class's map (forward + backward), {what} | {_seconds_per_map(trained, photos, 1, size):.4f} | "
              f"{_seconds_per_map(trained, photos, 8, size):.4f} |")
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
