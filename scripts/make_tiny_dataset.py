"""Build data/food-101-tiny: a small, downscaled copy of food-101-mini in the official Food-101 layout.

Run once by the maintainers (the result is committed):
    python scripts/make_tiny_dataset.py ../shared/data/food-101-mini data/food-101-tiny
"""

import sys
from pathlib import Path

from PIL import Image

TRAIN_PER_CLASS, TEST_PER_CLASS, LONG_SIDE, QUALITY = 40, 15, 224, 82


def main(src: Path, dst: Path) -> None:
    classes = (src / "meta/classes.txt").read_text().split()
    (dst / "meta").mkdir(parents=True, exist_ok=True)
    for name in ("classes.txt", "labels.txt"):
        (dst / "meta" / name).write_text((src / "meta" / name).read_text())
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        ids = (src / f"meta/{split}.txt").read_text().split()
        keep = [i for c in classes for i in [x for x in ids if x.split("/")[0] == c][:per_class]]
        for image_id in keep:
            out = dst / "images" / f"{image_id}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src / "images" / f"{image_id}.jpg") as im:
                im = im.convert("RGB")
                im.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
                im.save(out, quality=QUALITY, optimize=True)
        (dst / f"meta/{split}.txt").write_text("\n".join(keep) + "\n")
    license_file = src / "license_agreement.txt"
    if license_file.exists():
        (dst / "license_agreement.txt").write_text(license_file.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
