"""Build data/food-101-thumbs: 101 classes x 4 thumbnails (3 train, 1 test) in the official Food-101 layout, for
`python -m helpers run-notebooks --rehearse` (the full profile's chain in minutes, with random weights).

Run once by the maintainers (the result is committed):
    python scripts/make_thumbs_dataset.py ../shared/data/food-101-64px data/food-101-thumbs
"""

import shutil
import sys
from pathlib import Path

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def main(src: Path, dst: Path) -> None:
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for name in classes:
        photos = sorted(p for p in (src / name).iterdir() if p.suffix.lower() == ".jpg")
        for split, chosen in (("train", photos[:TRAIN_PER_CLASS]),
                              ("test", photos[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])):
            for photo in chosen:
                target = dst / "images" / name / photo.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, target)
                splits[split].append(f"{name}/{photo.stem}")
    (dst / "meta").mkdir(parents=True, exist_ok=True)
    (dst / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (dst / "meta" / "labels.txt").write_text("\n".join(c.replace("_", " ").capitalize() for c in classes) + "\n")
    for split, ids in splits.items():
        (dst / "meta" / f"{split}.txt").write_text("\n".join(ids) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
