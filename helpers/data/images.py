"""The photo reader: `read_image(path)` decodes JPEG, PNG, BMP and WebP with OpenCV (HEIC/HEIF with Pillow and
pillow-heif), applies EXIF orientation, composites transparency on white and returns RGB uint8; JPEGs larger
than needed are decoded at a reduced size. Files beyond `MAX_PIXELS` are refused from their header before
decoding (a decompression bomb), truncated JPEGs are named, and a file that is not a photo raises BadImageError."""

from __future__ import annotations

import functools

import cv2
import numpy as np
from PIL import Image, ImageOps

from ..base.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ----------------------------------------------------------------------------------------------------------------
# Reading images


class BadImageError(UserError):
    """An image file that cannot be decoded (a UserError, so that --strict-data ends with one paragraph, exit 2)."""

    def __init__(self, message: str = ""):
        if message.startswith("Caught BadImageError"):  # re-raised from a DataLoader worker, with its traceback:
            message = message.rstrip().rsplit("BadImageError: ", 1)[-1]  # keep the original message
        super().__init__(message)


def read_image(path: str, min_side: int | None = None) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3), with EXIF orientation applied.

    OpenCV decodes JPEGs about twice as fast as PIL, and with `min_side` it decodes at 1/2, 1/4 or 1/8 of the
    size in the JPEG decoder itself (the image stays at least `min_side` px on its short side), which cuts the
    decode work of 512 px photos for small training sizes. Anything OpenCV cannot read goes through PIL.

    Raises:
        BadImageError: the file is empty, truncated beyond repair, not an image, or over `MAX_PIXELS` (refused
            from its header, before decoding).
    """
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise BadImageError(f"{path}: empty file")
    check_pixels(data, path)
    if _may_have_alpha(data):  # OpenCV would drop the alpha channel and keep whatever colour lies under it
        return _read_with_pil(path)
    flag = cv2.IMREAD_COLOR
    if min_side and path.lower().endswith((".jpg", ".jpeg")):
        flag = _reduced_flag(data, min_side)
    try:
        image = cv2.imdecode(data, flag)
    except cv2.error:  # OpenCV's own limits and decoder failures: PIL below decides, like any odd file
        image = None
    if image is not None and _jpeg_truncated(data):
        image = None  # OpenCV fills missing rows with grey; PIL below decides whether the file is usable
    if image is None:
        return _read_with_pil(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# A photo's pixel limit: 150 Mpx decodes to 450 MB of RGB (a 12000 x 12000 scan); phone panoramas stay under it.
# A 40000 x 40000 PNG of one colour is 1.5 MB on disk and 4.8 GB decoded (OpenCV refuses it with an error
# beyond 1 Gpx, and decodes a 32000 x 32000 one to 3 GB): such files are refused from their header.
MAX_PIXELS = 150_000_000


def check_pixels(data: np.ndarray | bytes, path: str, limit: int = MAX_PIXELS) -> None:
    """Refuse an image whose header declares more than `limit` pixels, before anything decodes it.

    Every reader calls it (`read_image`: train, evaluate, features, check-data; predict's reader should too), so
    such a file is one more unreadable photo: skipped and listed, or an error with --strict-data.

    Raises:
        BadImageError: the image is over the limit (its size and the limit in the message).
    """
    size = header_size(data)
    if size is None:
        return
    width, height = size
    if width * height > limit:
        raise BadImageError(
            f"{path}: {width} x {height} px ({width * height / 1e6:.0f} Mpx) is over the limit of "
            f"{limit / 1e6:.0f} Mpx for one photo (it would take {3 * width * height / 1e9:.1f} GB decoded); it is "
            "not decoded. Downscale it (a training photo needs a few hundred pixels a side) or remove it.")


def header_size(data: np.ndarray | bytes) -> tuple[int, int] | None:
    """(width, height) of an image from its header, without decoding (JPEG and PNG parsed here, other formats
    by PIL's lazy open); None when the header gives no size (the decoder then reports the file)."""
    head = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    size = jpeg_size(head)
    if size is not None:
        return size[1], size[0]
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    import io

    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only the header is read: no bomb to fear
    try:
        with Image.open(io.BytesIO(head)) as im:
            return im.size
    except Exception:  # not an image PIL knows: the decoder reports it
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def _may_have_alpha(data: np.ndarray) -> bool:
    """PNG with an alpha channel or a transparent colour, GIF, WebP: formats PIL composites on white."""
    head = data[:32].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return head[25:26] in (b"\x04", b"\x06") or b"tRNS" in data[: 1 << 16].tobytes()  # colour type at byte 25
    return head.startswith(b"GIF8") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _jpeg_truncated(data: np.ndarray) -> bool:
    return data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-64:].tobytes()


def _reduced_flag(data: np.ndarray, min_side: int) -> int:
    """The coarsest of OpenCV's 1/8, 1/4, 1/2 JPEG decodes that keeps the short side at least `min_side`."""
    size = jpeg_size(data)
    if size is None:
        return cv2.IMREAD_COLOR
    short = min(size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if -(-short // factor) >= min_side:  # libjpeg rounds the scaled size up
            return flag
    return cv2.IMREAD_COLOR


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)


def jpeg_size(data: np.ndarray | bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, without decoding; None if it is not found.

    Walks the marker segments from the start of the file (usually a dozen), so it costs microseconds where a
    reduced decode to learn the size would cost a third of a millisecond.
    """
    head = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)  # EXIF blocks can be 64 KB long
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return int.from_bytes(head[pos + 5:pos + 7], "big"), int.from_bytes(head[pos + 7:pos + 9], "big")
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(head[pos + 2:pos + 4], "big")
    return None


@functools.cache
def _register_heif() -> bool:
    """Let PIL open HEIC/HEIF photos (an iPhone's default format) when pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _read_with_pil(path: str) -> np.ndarray:
    if path.lower().endswith((".heic", ".heif")):
        _register_heif()
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises many types for broken files
        raise BadImageError(f"{path}: {type(exc).__name__}: {exc}") from exc
