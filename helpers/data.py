"""Datasets: Food-101 (official layout) and class folders, seeded train/val/test splits, robust image reading.

The validation split is carved from train (seeded, stratified): early stopping and the best checkpoint use it.
The test split is evaluated once at the end and never chooses anything.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from .config import UserError

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Sample = tuple[str, int]  # (image path, class index)


@dataclass
class Splits:
    """The image lists of one dataset. Paths are absolute strings, labels index `class_names`."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def fingerprint(self) -> str:
        """A hash of every split's images (class folder and file name, not the root, so a moved dataset keeps it)
        and labels: a resumed run checks that it continues on the data it started on."""
        if "_fingerprint" in self.__dict__:  # computed once: the lists do not change during a run
            return self.__dict__["_fingerprint"]
        digest = hashlib.sha1("\n".join(self.class_names).encode("utf-8", "surrogateescape"))
        for split in (self.train, self.val, self.test):
            for path, label in split:
                digest.update(f"{'/'.join(Path(path).parts[-2:])}\t{label}\n".encode("utf-8", "surrogateescape"))
            digest.update(b"--\n")
        self.__dict__["_fingerprint"] = digest.hexdigest()
        return self.__dict__["_fingerprint"]

    def get(self, split: str) -> list[Sample]:
        if split not in ("train", "val", "test"):
            raise UserError(f"Unknown split {split!r}: use train, val or test.")
        return getattr(self, split)


# ----------------------------------------------------------------------------------------------------------------
# Finding the images


def load_splits(
    dataset: str, data_dir: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 42,
    download: bool = False,
) -> Splits:
    """Read a dataset's file lists and split them.

    Args:
        dataset: "food-101" (images/<class>/<id>.jpg + meta/{classes,train,test}.txt) or "imagefolder".
        data_dir: the dataset root (for food-101 also its parent, as torchvision extracts it to food-101/).
        val_fraction: share of each class of train held out for validation.
        test_fraction: imagefolder without train/ and test/ sub-folders: share of each class for test.
        seed: seeds the val (and imagefolder test) split, so the same seed gives the same split.
        download: food-101 only: download the full dataset with torchvision when it is missing.
    """
    root = Path(data_dir).expanduser()
    if dataset == "food-101":
        root = _food101_root(root, download)
        class_names, train, test = _read_food101(root)
    elif dataset == "imagefolder":
        class_names, train, test = _read_imagefolder(root, test_fraction, seed)
    else:
        raise UserError(f"Unknown dataset {dataset!r}: use food-101 or imagefolder.")
    if len(class_names) < 2:
        raise UserError(
            f"{root} has {len(class_names)} class ({', '.join(class_names) or 'none'}): a classifier needs at "
            "least two. Check --data-dir (for class folders: one folder per class) and --dataset."
        )
    train, val = stratified_split(train, val_fraction, seed)
    return Splits(class_names, train, val, test)


def _food101_root(root: Path, download: bool) -> Path:
    for candidate in (root, root / "food-101"):
        if (candidate / "meta" / "classes.txt").is_file():
            return candidate
    if download:
        from torchvision.datasets import Food101

        _logger.info("Downloading Food-101 (about 5 GB) into %s", root)
        root.mkdir(parents=True, exist_ok=True)
        Food101(str(root), download=True)
        return root / "food-101"
    if not root.exists():
        raise UserError(
            f"Data folder {root} does not exist. Point --data-dir at a Food-101 folder (with images/ and meta/), "
            "add --download to fetch the full dataset (about 5 GB), or use the tiny set shipped in data/food-101-tiny."
        )
    raise UserError(
        f"{root} is not a Food-101 folder: meta/classes.txt is missing. The official layout is images/<class>/<id>.jpg "
        "with meta/classes.txt, meta/train.txt and meta/test.txt. For plain class folders use --dataset imagefolder; "
        "to fetch Food-101 (about 5 GB) into it, add --download."
    )


# Files and folders that archive tools, operating systems and editors leave next to the data: never classes.
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "@eaDir"})


def is_junk(name: str) -> bool:
    """A file or folder name that is not data: hidden (`.x`, macOS `._x` copies), `__MACOSX`, `Thumbs.db`..."""
    return name in JUNK_NAMES or name.startswith(".")


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a list file, as editors leave them: a UTF-8 BOM, CRLF line ends, trailing spaces."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing. A Food-101 folder needs meta/classes.txt, meta/train.txt and meta/test.txt "
            "(ids like apple_pie/1005649, one per line)."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc}). Save it as UTF-8 (plain text).") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _image_id(line: str) -> str:
    """A list line as an image id: Windows separators and a `.jpg` suffix that some tools add are removed."""
    image_id = line.replace("\\", "/").strip("/")
    return image_id[:-4] if image_id.lower().endswith(".jpg") else image_id


@dataclass
class Food101Lists:
    """What meta/ lists, with every oddity found, for `train` and `check-data` alike."""

    root: Path
    class_names: list[str]
    listed: dict[str, list[Sample]]  # "train", "test": (path, label), each image once per split
    unknown: list[str]  # "meta/test.txt line 3: ghost/1" (a class that classes.txt lacks)
    duplicates: list[str]  # "meta/train.txt line 9: apple_pie/1 (also line 2)": dropped
    overlaps: list[str]  # image ids in both train.txt and test.txt: the test set would be trained on
    no_train: list[str]  # classes without a train line
    no_test: list[str]  # classes without a test line


def read_food101_lists(root: Path) -> Food101Lists:
    """Parse meta/classes.txt, meta/train.txt and meta/test.txt of a Food-101 folder (the one parser)."""
    class_names = _read_lines(root / "meta" / "classes.txt")
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise UserError(f"{root / 'meta' / 'classes.txt'} lists {', '.join(repeated[:5])} more than once. List "
                        "each class once.")
    index = {name: i for i, name in enumerate(class_names)}
    lists = Food101Lists(root, class_names, {}, [], [], [], [], [])
    ids: dict[str, set[str]] = {}
    for split in ("train", "test"):
        samples, first_line = [], {}
        for line_no, line in enumerate(_read_lines(root / "meta" / f"{split}.txt"), start=1):
            image_id = _image_id(line)
            label = index.get(image_id.split("/")[0])
            if label is None or "/" not in image_id:
                lists.unknown.append(f"meta/{split}.txt line {line_no}: {line}")
            elif image_id in first_line:
                lists.duplicates.append(f"meta/{split}.txt line {line_no}: {image_id} (also line {first_line[image_id]})")
            else:
                first_line[image_id] = line_no
                samples.append((str(root / "images" / f"{image_id}.jpg"), label))
        lists.listed[split] = samples
        ids[split] = set(first_line)
    lists.overlaps = sorted(ids["train"] & ids["test"])
    for split, missing in (("train", lists.no_train), ("test", lists.no_test)):
        have = {label for _, label in lists.listed[split]}
        missing += [c for i, c in enumerate(class_names) if i not in have]
    return lists


def _read_food101(root: Path) -> tuple[list[str], list[Sample], list[Sample]]:
    lists = read_food101_lists(root)
    meta = root / "meta"
    if lists.unknown:
        raise UserError(
            f"{meta} has {len(lists.unknown)} list line(s) naming a class that is not in meta/classes.txt, the first: "
            f"{lists.unknown[0]}. Fix the lines or add the classes (`python -m helpers check-data` lists them all)."
        )
    if lists.overlaps:
        raise UserError(
            f"{len(lists.overlaps)} image(s) are listed in both meta/train.txt and meta/test.txt (e.g. "
            f"{', '.join(lists.overlaps[:3])}): the test would score photos the model trained on. Remove them from "
            "one of the lists."
        )
    if lists.no_train:
        raise UserError(
            f"{len(lists.no_train)} class(es) of meta/classes.txt have no line in meta/train.txt "
            f"({', '.join(lists.no_train[:5])}): the model could never learn them. Add their images or remove the "
            "classes from classes.txt."
        )
    if lists.duplicates:
        _logger.warning("%d duplicate line(s) in %s, each image is used once: %s", len(lists.duplicates), meta,
                        "; ".join(lists.duplicates[:3]))
    if lists.no_test:
        _logger.warning("%d class(es) have no test image: %s", len(lists.no_test), ", ".join(lists.no_test[:5]))
    return lists.class_names, lists.listed["train"], lists.listed["test"]


def _list_class_folders(root: Path) -> dict[str, list[str]]:
    """{class: image paths} of the class folders of `root`. Hidden files and folders and what archive tools
    and operating systems leave (`__MACOSX`, `.DS_Store`, `Thumbs.db`, `.ipynb_checkpoints`) are skipped; a
    folder without images is no class (with a warning naming it)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(p.name)):
        files = sorted(str(f) for f in folder.rglob("*")
                       if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                       and not any(is_junk(part) for part in f.relative_to(folder).parts))
        if files:
            found[folder.name] = files
        else:
            _logger.warning("Folder %s has no images (%s): it is not made a class", folder,
                            ", ".join(IMAGE_EXTENSIONS))
    return found


def read_test_folder(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Every image of a folder of class folders (<class>/<image>.jpg), to evaluate on: (class names, samples)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Test folder {root} does not exist. Give a folder of class folders (<class>/<image>.jpg).")
    folders = _list_class_folders(root)
    class_names = sorted(folders)
    samples = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
    if not samples:
        raise UserError(f"{root} has no images in class folders. The expected layout is <class>/<image>.jpg.")
    return class_names, samples


def _read_imagefolder(root: Path, test_fraction: float, seed: int) -> tuple[list[str], list[Sample], list[Sample]]:
    if not root.is_dir():
        raise UserError(f"Data folder {root} does not exist. Point --data-dir at a folder of class folders.")
    if (root / "train").is_dir():
        train_folders = _list_class_folders(root / "train")
        test_folders = _list_class_folders(root / "test") if (root / "test").is_dir() else {}
        class_names = sorted(train_folders)
        extra = sorted(set(test_folders) - set(class_names))
        if extra:
            raise UserError(f"{root / 'test'} has classes that {root / 'train'} lacks: {', '.join(extra[:5])}.")
        train = [(f, i) for i, c in enumerate(class_names) for f in train_folders[c]]
        test = [(f, i) for i, c in enumerate(class_names) for f in test_folders.get(c, [])]
        if not test:
            train, test = stratified_split(train, test_fraction, seed + 1)
    else:
        folders = _list_class_folders(root)
        class_names = sorted(folders)
        all_samples = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
        train, test = stratified_split(all_samples, test_fraction, seed + 1)
    if not class_names or not train:
        raise UserError(
            f"{root} has no images in class folders. The expected layout is <class>/<image>.jpg, "
            "optionally under train/ and test/."
        )
    return class_names, train, test


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off `fraction` of every class (at least one image of classes with two or more), seeded.

    Returns:
        (kept, held_out), each in the original order.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(samples):
        by_class[label].append(i)
    rng = random.Random(seed)
    held = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n_held = min(len(indices) - 1, max(1, round(len(indices) * fraction))) if len(indices) > 1 else 0
        held.update(rng.sample(indices, n_held))
    kept = [s for i, s in enumerate(samples) if i not in held]
    return kept, [s for i, s in enumerate(samples) if i in held]


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


# ----------------------------------------------------------------------------------------------------------------
# Dataset and sampler


class ImageDataset(torch.utils.data.Dataset):
    """Images with labels, transformed by an albumentations pipeline.

    Items are requested as (index, sample_seed) by `EpochSampler`: the augmentation of a sample depends only on
    that seed, never on the worker or the batch it lands in, so a resumed or distributed run sees exactly the
    same augmented images as an uninterrupted single-process run.

    A file that cannot be decoded is replaced by the next readable sample (so a night's run never stops for one
    bad photo) and reported in the item's last field; with `strict=True` it raises instead.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, *, strict: bool = False,
                 min_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.strict = strict
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(0, 0, key))
        for attempt in range(min(len(self.samples), 50)):
            i = (index + attempt) % len(self.samples)
            path, label = self.samples[i]
            try:
                image = read_image(path, self.min_side)
            except (BadImageError, OSError) as exc:
                if self.strict:
                    raise BadImageError(f"{exc} (run without --strict-data to skip unreadable images)") from exc
                _announce_skip(path, exc)
                continue
            self.transform.set_random_seed(seed)
            tensor = self.transform(image=image)["image"]
            return tensor, label, index, (index if attempt else -1)
        raise BadImageError(f"{self.samples[index][0]} and the 49 images after it are unreadable")


_announced: set[str] = set()


def _announce_skip(path: str, exc: BaseException) -> None:
    """Log why an image is skipped, once per file and process, at INFO: the callers list the skipped paths and
    warn once per discovery (a night with many bad photos must not fill the log with one warning each)."""
    if path not in _announced:
        _announced.add(path)
        _logger.info("Skipped an unreadable image: %s", exc)


def index_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) pairs: a seeded permutation per epoch, sharded across ranks.

    Rank r of w takes positions r, r+w, r+2w, ... of the permutation, so with a per-rank batch of B/w the ranks
    together see exactly the global batches of a single process with batch B. `set_epoch(epoch, start)` skips
    the first `start` positions of the permutation, which is how a run resumes in the middle of an epoch.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        if self.world_size > 1 and self.shuffle:  # pad so every rank takes the same number of training steps
            order += order[: (-len(order)) % self.world_size]
        return order[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        for index in order[self.rank:: self.world_size]:
            yield index, index_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return len(self._order()[self.rank:: self.world_size])


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


def worker_init(worker_id: int) -> None:
    """Each spawned DataLoader worker (macOS): one OpenCV thread (the workers are the parallelism; OpenCV's own
    pool in every worker oversubscribes the cores). Top-level, so the spawned workers can pickle it. Forked
    workers (Linux) do not call it: OpenCV's pool copied by fork can hang in setNumThreads (seen in the test
    suite: a worker blocked there for 12 minutes)."""
    cv2.setNumThreads(1)


def _spawned_workers() -> bool:
    import multiprocessing

    return sys.platform == "darwin" or multiprocessing.get_start_method() != "fork"


MAC_EVAL_WORKERS = 2  # macOS: workers of a validation/test loader (spawned per pass, each a fresh Python + torch)


def make_loader(
    dataset: ImageDataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int = -1, rank: int = 0,
    world_size: int = 1, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` driven by an `EpochSampler` (call `loader.sampler.set_epoch` each epoch).

    Workers stay alive between epochs (the sampler runs in the main process), and with `pin_memory` batches
    come in page-locked memory so host-to-device copies can be non-blocking. On macOS, where workers are
    spawned (each one a new interpreter importing torch, a few hundred MB), an evaluation loader (`shuffle=False`)
    gets at most `MAC_EVAL_WORKERS` workers and does not keep them between passes, so they do not sit idle
    beside the training loader's workers for the whole run.
    """
    from .utils import workers_for_open_files

    workers = default_num_workers() if num_workers < 0 else num_workers
    persistent = True
    if sys.platform == "darwin" and not shuffle:
        workers, persistent = min(workers, MAC_EVAL_WORKERS), False
    workers = workers_for_open_files(workers)
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers > 0 else None, drop_last=False,
        worker_init_fn=worker_init if workers > 0 and _spawned_workers() else None,
    )
