"""Make data/my-photos/: a few real Food-101 photos saved as a phone or a browser saves them, for notebook 11
(`11_use_your_model`) and the predict tests: a JPEG whose pixels are stored turned with an EXIF orientation tag,
a PNG, a PNG with transparency (the dish cut out in a soft-edged oval: outside it the photo's pixels stay, fully
transparent, so a reader that drops the alpha channel sees them and one that composites on white does not), a
WebP, an HEIC (with pillow-heif) and a photo of a class the course's models never saw (pizza).

    python scripts/make_my_photos.py --mini ../shared/data/food-101-mini --pizza ../shared/data/pizza_steak_sushi

The photos are test photos of food-101-mini that are not in data/food-101-tiny, resized to 320 px on the long
side; the same license as the tiny set applies (Food-101, research and testing only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
PICKS = {"apple_pie": "apple_pie_rotated_exif.jpg", "baklava": "baklava.png", "bibimbap": "bibimbap.webp",
         "beignets": "beignets.heic", "beet_salad": "beet_salad_cutout.png"}
ORIENTATION = 0x0112  # EXIF tag; 6: rotate 90 degrees clockwise to display


def pick(mini: Path, name: str, landscape: bool = False) -> Path:
    """The first test photo of a class of food-101-mini that data/food-101-tiny does not hold (with `landscape`,
    the first wider than high, so that a wrong orientation shows in its shape)."""
    tiny = set((ROOT / "data" / "food-101-tiny" / "meta" / "test.txt").read_text().split())
    tiny |= set((ROOT / "data" / "food-101-tiny" / "meta" / "train.txt").read_text().split())
    ids = [i for i in (mini / "meta" / "test.txt").read_text().split() if i.startswith(f"{name}/") and i not in tiny]
    paths = [mini / "images" / f"{i}.jpg" for i in ids]
    return next(p for p in paths if not landscape or Image.open(p).width > Image.open(p).height)


def small(path: Path) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.thumbnail((320, 320), Image.Resampling.LANCZOS)
    return im


def cut_out(im: Image.Image) -> Image.Image:
    """The photo as RGBA, opaque in a centred oval (80% of each side) with an edge feathered over about 6 px, fully
    transparent outside it; the RGB values under the transparent pixels are the photo's own."""
    mask = Image.new("L", im.size, 0)
    w, h = im.size
    ImageDraw.Draw(mask).ellipse((w // 10, h // 10, w - w // 10, h - h // 10), fill=255)
    rgba = im.convert("RGBA")
    rgba.putalpha(mask.filter(ImageFilter.GaussianBlur(3)))
    return rgba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", type=Path, required=True)
    parser.add_argument("--pizza", type=Path, required=True, help="the pizza_steak_sushi folder")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "my-photos")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, target in PICKS.items():
        im = small(pick(args.mini, name, landscape=target.endswith("_rotated_exif.jpg")))
        path = args.out / target
        if target.endswith("_rotated_exif.jpg"):  # pixels stored turned left; the tag says: turn right to display
            exif = Image.Exif()
            exif[ORIENTATION] = 6
            im.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
        elif target.endswith("_cutout.png"):
            cut_out(im).save(path)
        elif target.endswith(".heic"):
            import pillow_heif

            pillow_heif.register_heif_opener()
            im.save(path, quality=85)
        else:
            im.save(path, **({"quality": 90} if target.endswith(".webp") else {}))
    pizza = sorted((args.pizza / "test" / "pizza").glob("*.jpg"))[0]
    small(pizza).save(args.out / "pizza_not_a_course_class.jpg", quality=90)
    print(f"wrote {len(list(args.out.iterdir()))} photos to {args.out}")


if __name__ == "__main__":
    main()
