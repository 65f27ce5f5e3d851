"""The images and label maps of a mining run: listing, pairing, header checks and reading.

Only regular files are read (a FIFO or a folder named ``x.png`` is skipped and reported; reading a FIFO blocks).
File names are any bytes Linux allows: a name that is not UTF-8 is read like any other and shown with its
undecodable bytes escaped (``\\xff.png``)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch

from styleda_fast.mining.clip import attention_grid, patch_size
from styleda_fast.mining.config import FALLBACK, MineConfig, MineError
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def shown(path: Path | str) -> str:
    """``path`` as text that any terminal or log takes: bytes that are not UTF-8 escaped as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


@dataclass
class ImageFiles:
    """The images of a run in name order, their label maps (patch mode) and header sizes."""

    images: list[Path]
    labels: list[Path | None] | None
    sizes: list[tuple[int, int] | None]  # (height, width) from the header; None: unreadable (skipped)
    skipped: list[str] = field(default_factory=list)  # "name: reason", found before mining
    not_regular: list[str] = field(default_factory=list)

    def names_sha256(self) -> str:
        """SHA-256 of the image file names (bytes, one a line, in mining order)."""
        return hashlib.sha256(b"\n".join(os.fsencode(p.name) for p in self.images)).hexdigest()


class BadFile(Exception):
    """An image or label map that cannot be read; ``--skip-bad-images`` skips it."""


def file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a symbolic link"))  # fmt: skip
    for test, kind in kinds:
        if test(mode):
            return kind
    return "not a regular file"


def list_images(folder: str) -> tuple[list[Path], list[str]]:
    """Image files of ``folder`` in name order, and the entries with an image suffix that are not regular files
    (FIFOs, sockets, devices, folders): those are never opened."""
    root = Path(folder)
    if not root.exists():
        raise MineError(f"--images {shown(folder)}: the folder does not exist")
    if not root.is_dir():
        raise MineError(f"--images {shown(folder)}: not a folder")
    images, not_regular = [], []
    for path in sorted(root.iterdir(), key=lambda p: os.fsencode(p.name)):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            mode = path.stat().st_mode
        except OSError as exc:  # e.g. a dangling symbolic link
            not_regular.append(f"{shown(path.name)} ({exc.strerror.lower()})")
            continue
        if stat.S_ISREG(mode):
            images.append(path)
        else:
            not_regular.append(f"{shown(path.name)} ({file_kind(mode)})")
    if not images:
        raise MineError(f"--images {shown(folder)}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images, not_regular


def label_for(image: Path, folder: Path) -> Path:
    """The label of an image: same stem, or Cityscapes' ``_leftImg8bit`` -> ``_gtFine_labelTrainIds``."""
    stem = image.stem
    candidates = [stem, stem.replace("_leftImg8bit", "_gtFine_labelTrainIds"), stem + "_labelTrainIds"]
    for name in dict.fromkeys(candidates):
        path = folder / f"{name}.png"
        if path.exists():
            if not path.is_file():
                raise MineError(f"--labels: {shown(path)} is {file_kind(path.stat().st_mode)}, not a label PNG")
            return path
    raise MineError(
        f"--labels: no label PNG for image {shown(image.name)} in {shown(folder)} "
        f"(tried {', '.join(shown(c) for c in candidates)})"
    )


def open_image(path: Path, what: str):
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise BadFile(
            f"{what} {shown(path)} is too large to decode safely (PIL's decompression-bomb limit): {exc}"
        ) from exc
    except Exception as exc:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise BadFile(f"cannot read {what} {shown(path)}: {exc}") from exc


def header_size(path: Path, what: str) -> tuple[int, int]:
    with open_image(path, what) as img:
        return img.size[1], img.size[0]


def hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def scan_files(config: MineConfig) -> ImageFiles:
    """The images (and labels) with their header sizes; checks that each chunk's files can be mined together."""
    images, not_regular = list_images(config.images)
    labels = None
    if config.mode == "patch":
        folder = Path(config.labels)
        if not folder.exists():
            raise MineError(f"--labels {shown(config.labels)}: the folder does not exist")
        if not folder.is_dir():
            raise MineError(f"--labels {shown(config.labels)}: not a folder")
        labels = [label_for(p, folder) for p in images]
    files = ImageFiles(images, labels, [], not_regular=not_regular)
    for i, image in enumerate(images):
        try:
            size = header_size(image, "image")
            if labels is not None:
                label_size = header_size(labels[i], "label map")
                if label_size != size:
                    raise MineError(
                        f"label map {shown(labels[i].name)} is {hw(label_size)} but its image {shown(image.name)} "
                        f"is {hw(size)}; label maps must have their image's size"
                    )
        except BadFile as exc:
            if not config.skip_bad_images:
                raise MineError(f"{exc} (--skip-bad-images skips such files)") from None
            files.skipped.append(str(exc))
            size = None
        if size is not None and config.crop is not None and min(size) < config.crop:
            raise MineError(f"--crop {config.crop}: image {shown(image.name)} is only {hw(size)}")
        files.sizes.append(size)
    if all(size is None for size in files.sizes):
        raise MineError(f"--images {shown(config.images)}: none of the {len(images)} image files can be read")
    check_chunk_sizes(files, config)
    return files


def feature_side(n: int, patch: int | None = None) -> int:
    """Side of the features for an image side ``n``: a ModifiedResNet's layer1 (stride-2 convolution, then 2x2
    pool), or a ViT's patch grid (``patch``: its patch size)."""
    if patch is not None:
        return n // patch
    return ((n - 1) // 2 + 1) // 2


def check_chunk_sizes(files: ImageFiles, config: MineConfig) -> None:
    """One image size per chunk (or ``--crop``), features the patch grid divides, and, for a ModifiedResNet,
    features that reach its attention pool at the grid its positional embedding has (``--pool-to``)."""
    shapes = set()
    for start in range(0, len(files.images), config.batch_size):
        known = [(p, s) for p, s in zip(files.images[start : start + config.batch_size],
                                        files.sizes[start : start + config.batch_size]) if s is not None]  # fmt: skip
        if config.crop is None and len({s for _, s in known}) > 1:
            (a, sa), (b, sb) = known[0], next((p, s) for p, s in known if s != known[0][1])
            raise MineError(
                f"images of different sizes in chunk {start // config.batch_size} ({shown(a.name)} is {hw(sa)}, "
                f"{shown(b.name)} is {hw(sb)}): the images of a chunk (--batch-size {config.batch_size}) are mined as "
                "one batch; use --crop N (N at most the smallest side) to center-crop every image to N x N"
            )
        if known:
            shapes.add((config.crop, config.crop) if config.crop is not None else known[0][1])
    smallest = min((min(s) for s in shapes), default=0)
    patch = patch_size(config.clip_model)
    stride = patch or 4
    grid = attention_grid(config.clip_model)
    if grid is not None and config.pool_to and config.pool_to // 8 != grid:
        raise MineError(
            f"--pool-to {config.pool_to}: {config.clip_model}'s attention pool takes a {grid}x{grid} grid, i.e. "
            f"layer1 features of {grid * 8}x{grid * 8} (--pool-to {grid * 8}, or 0 for images of {grid * 32} px)"
        )
    for h, w in sorted(shapes):
        fh, fw = feature_side(h, patch), feature_side(w, patch)
        if fh < 1 or fw < 1:
            need = f"{patch} pixels (the patch size)" if patch else "3 pixels"
            raise MineError(f"images of {h}x{w} are too small: the CLIP stem needs a side of at least {need}")
        if config.mode == "patch" and (fh % config.grid or fw % config.grid):
            crop = smallest // stride // config.grid * config.grid * stride  # a feature side that the grid divides
            hint = f", e.g. --crop {crop}" if crop else f"; the images are too small for --grid {config.grid}"
            raise MineError(
                f"--grid {config.grid} does not divide the {fh}x{fw} feature map of {h}x{w} images (patches mined "
                f"together need one size): use a --crop N with N / {stride} a multiple of {config.grid}{hint}"
            )
        if grid is not None and config.pool_to == 0:
            pw, ph = (fw // config.grid, fh // config.grid) if config.mode == "patch" else (fw, fh)
            if ph // 8 != grid or pw // 8 != grid:
                what = "patches" if config.mode == "patch" else "images"
                raise MineError(
                    f"--pool-to 0 (no pooling) needs layer1 features of {grid * 8}x{grid * 8} for "
                    f"{config.clip_model}'s {grid}x{grid} attention pool, but these {what} give {ph}x{pw} "
                    f"({h}x{w} images); use --pool-to {grid * 8} (the default) or images of {grid * 32} px"
                )


def read_image(path: Path, crop: int | None) -> torch.Tensor:
    """``(3, H, W)`` float32 normalized with CLIP's mean and std."""
    import numpy as np
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    try:
        with open_image(path, "image") as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except BadFile:
        raise
    except Exception as exc:  # truncated or corrupt data shows only when decoding
        raise BadFile(f"cannot read image {shown(path)}: {exc}") from exc
    image = center_crop(torch.from_numpy(array).permute(2, 0, 1), crop)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (image - mean) / std


def read_labels(path: Path, crop: int | None) -> torch.Tensor:
    """``(H, W)`` int64 train ids (``0..18`` or 255)."""
    import numpy as np

    try:
        with open_image(path, "label map") as img:
            array = np.asarray(img, dtype=np.int64)
    except BadFile:
        raise
    except Exception as exc:
        raise BadFile(f"cannot read label map {shown(path)}: {exc}") from exc
    if array.ndim != 2:
        raise MineError(f"label map {shown(path)} must be a single-channel PNG of train ids, got shape {array.shape}")
    bad = (array >= len(CITYSCAPES_CLASSES)) & (array != FALLBACK)
    if bad.any():
        raise MineError(
            f"label map {shown(path)} holds values that are not train ids 0..{len(CITYSCAPES_CLASSES) - 1} or "
            f"{FALLBACK} (e.g. {int(array[bad][0])}); use the *_labelTrainIds.png label maps"
        )
    return center_crop(torch.from_numpy(array.copy()), crop)


def center_crop(t: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return t
    h, w = t.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top : top + size, left : left + size]
