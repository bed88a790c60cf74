"""Reference preprocessing of an exported ONNX model: `preprocess(path)` turns a photo file into the model's
input, float32 (1, 3, S, S), RGB in [0, 1], NCHW, exactly as the course reads a photo in PyTorch (`predict`),
with numpy, Pillow (pillow-heif for HEIC photos) and OpenCV only. Copy FILE.py beside your code:

    import onnxruntime
    import FILE   # this file
    session = onnxruntime.InferenceSession("FILE.onnx")
    probabilities = session.run(None, FILE.inputs("lunch.jpg"))[0]   # (1, classes), in FILE.json's order

The steps (the sidecar FILE.json says the same in words):
1. Read: PNG with alpha or a transparent colour, GIF and WebP through Pillow (EXIF orientation applied,
   transparency composited on white); any other file through OpenCV's decoder (which applies the EXIF
   orientation itself), at full size; what OpenCV cannot decode (HEIC) or a JPEG cut short through Pillow.
2. Resize: the short side to SHORT px with the size rule of albumentations 2.0.8 (scale = SHORT / short side,
   each side max(1, round(side * scale)), Python's round), cv2.resize with INTER_CUBIC on the uint8 image, no
   antialiasing.
3. Crop: the centre S x S, top = (height - S) // 2, left = (width - S) // 2.
4. float32 / 255, HWC -> CHW, a batch axis. Mean/std normalisation is inside the graph.
A model whose members read photos at different sizes or crops has one input per preprocessing: `inputs(path)`
gives them all by name, ready for `session.run`.
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# The graph's inputs: name -> (crop S, short side before the crop, OpenCV interpolation). Written by the export.
INPUTS = {"images": (224, 256, "INTER_CUBIC")}


def preprocess(path, name=None) -> np.ndarray:
    """A photo file -> float32 (1, 3, S, S), RGB in [0, 1], for input `name` (default: the first input)."""
    size, short_side, interpolation = INPUTS[name or next(iter(INPUTS))]
    image = resize_crop(read_rgb(path), size, short_side, interpolation)
    return (image.astype(np.float32) / 255).transpose(2, 0, 1)[None]


def inputs(path) -> dict:
    """Every input of the graph for one photo: {name: float32 (1, 3, S, S)}, the feed of `session.run`."""
    image = read_rgb(path)
    return {name: (resize_crop(image, *spec).astype(np.float32) / 255).transpose(2, 0, 1)[None]
            for name, spec in INPUTS.items()}


def read_rgb(path) -> np.ndarray:
    """Decode a photo to RGB uint8 (H, W, 3), upright, transparency on white."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"{path}: empty file")
    if _pillow_format(data):  # OpenCV would drop the alpha channel and keep whatever colour lies under it
        return _read_with_pillow(path)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies the EXIF orientation
    except cv2.error:
        image = None
    if image is None or (data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-64:].tobytes()):
        return _read_with_pillow(path)  # not for OpenCV, or a JPEG cut short (OpenCV would fill it with grey)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_crop(image: np.ndarray, size: int, short_side: int, interpolation: str = "INTER_CUBIC") -> np.ndarray:
    """Resize the short side to `short_side` (albumentations' SmallestMaxSize), then centre-crop size x size."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))  # round half to even
    if (new_height, new_width) != (height, width):
        image = cv2.resize(image, (new_width, new_height), interpolation=getattr(cv2, interpolation))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    if top < 0 or left < 0:
        raise ValueError(f"a {new_height} x {new_width} image is smaller than the {size} x {size} crop")
    return image[top:top + size, left:left + size]


def _pillow_format(data: np.ndarray) -> bool:
    """PNG with an alpha channel (colour type 4 or 6) or a tRNS chunk in its first 64 KiB, GIF, WebP."""
    head = data[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return head[25:26] in (b"\x04", b"\x06") or b"tRNS" in data[: 1 << 16].tobytes()
    return head.startswith(b"GIF8") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _read_with_pillow(path) -> np.ndarray:
    if Path(path).suffix.lower() in (".heic", ".heif"):
        import pillow_heif  # pip install pillow-heif

        pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return np.asarray(im.convert("RGB"))
