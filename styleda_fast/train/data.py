"""Segmentation folders laid out like Cityscapes and ACDC, and the per-sample random crop and flip of training.

Cityscapes (``--cityscapes ROOT``)::

    ROOT/leftImg8bit/{train,val}/CITY/NAME_leftImg8bit.png
    ROOT/gtFine/{train,val}/CITY/NAME_gtFine_labelTrainIds.png

ACDC (``--acdc ROOT``), per condition ``fog``, ``night``, ``rain``, ``snow``::

    ROOT/rgb_anon/COND/val/SEQ/NAME_rgb_anon.png
    ROOT/gt/COND/val/SEQ/NAME_gt_labelTrainIds.png

Labels are train ids (0..18 the Cityscapes classes, 255 unlabelled); any other value is read as 255.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

NUM_CLASSES = 19
IGNORE = 255
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


class DataError(ValueError):
    """A folder that does not hold what its layout promises (the message names the path)."""


def _pairs(image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths under ``image_dir/SUB/*image_suffix`` with their ``label_dir/SUB/...`` twins, each
    pair checked to be readable images of one size (headers only)."""
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DataError(f"missing folder {d}")
    images = sorted(p for p in image_dir.glob(f"*/*{image_suffix}") if p.is_file())
    if not images:
        raise DataError(f"no images {image_dir}/*/*{image_suffix}")
    pairs = []
    for image in images:
        label = label_dir / image.parent.name / (image.name[: -len(image_suffix)] + label_suffix)
        if not label.is_file():
            raise DataError(f"layout mismatch: {image} has no label file {label}")
        if _size(image) != _size(label):
            raise DataError(f"{image} is {_size(image)} pixels (w, h) but its label {label} {_size(label)}")
        pairs.append((image, label))
    return pairs


def _size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header (the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def cityscapes_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(image, label)`` pairs of a Cityscapes-like ``split`` (``"train"`` or ``"val"``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"missing folder {root}")
    return _pairs(
        root / "leftImg8bit" / split, root / "gtFine" / split, "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
    )


def acdc_pairs(root: str | Path, condition: str, split: str = "val") -> list[tuple[Path, Path]]:
    """The ``(image, label)`` pairs of an ACDC-like ``condition`` (fog, night, rain, snow) and ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"missing folder {root}")
    return _pairs(
        root / "rgb_anon" / condition / split, root / "gt" / condition / split, "_rgb_anon.png", "_gt_labelTrainIds.png"
    )


def read_image(path: Path) -> Tensor:
    """``(3, H, W)`` float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        data = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
        w, h = im.size
    return data.view(h, w, 3).permute(2, 0, 1).float().div_(255)


def read_label(path: Path) -> Tensor:
    """``(H, W)`` int64 train ids; values outside 0..18 become 255."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: a label map must be a single-channel image, got mode {im.mode}")
        if im.mode.startswith("I"):  # 16/32-bit integer maps
            import numpy as np

            labels = torch.from_numpy(np.asarray(im).astype(np.int64))
        else:
            w, h = im.size
            labels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w).long()
    return labels.masked_fill_((labels < 0) | (labels >= NUM_CLASSES), IGNORE)


def normalize(images: Tensor) -> Tensor:
    """CLIP's normalization of ``(..., 3, H, W)`` images in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def resize(image: Tensor, scale: float) -> Tensor:
    """``(3, H, W)`` bilinearly resized by ``scale`` (no-op for 1)."""
    if scale == 1:
        return image
    size = [max(1, round(s * scale)) for s in image.shape[-2:]]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


class SegmentationFolder(Dataset):
    """``(image (3, h, w) normalized, label (h, w) int64)`` of ``pairs``.

    ``crop`` set (training): the image is resized by ``scale`` (labels nearest), a random ``crop x crop`` window is
    taken (padded with 0 / 255 where the image is smaller) and flipped horizontally with probability 1/2, drawn
    from a generator seeded by ``(seed, epoch, index)``: a sample is the same whatever the worker, process or
    resumed run that reads it. ``crop`` None (evaluation): the full image resized by ``scale`` and the full-size
    label.
    """

    def __init__(self, pairs, crop: int | None = None, scale: float = 1.0, seed: int = 0):
        self.pairs, self.crop, self.scale, self.seed = list(pairs), crop, scale, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.pairs[index]
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[-2:] != label.shape:
            raise DataError(f"{image_path} is {tuple(image.shape[-2:])} but {label_path} {tuple(label.shape)}")
        image = resize(image, self.scale)
        if self.crop is None:
            return normalize(image), label
        if self.scale != 1:
            label = F.interpolate(label[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0].long()
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        c = self.crop
        h, w = image.shape[-2:]
        image = F.pad(normalize(image), (0, max(0, c - w), 0, max(0, c - h)), value=0.0)
        label = F.pad(label, (0, max(0, c - w), 0, max(0, c - h)), value=IGNORE)
        top, left = rng.randint(0, image.shape[-2] - c), rng.randint(0, image.shape[-1] - c)
        image, label = image[:, top : top + c, left : left + c], label[top : top + c, left : left + c]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()
