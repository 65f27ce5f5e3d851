"""``styleda-fast mine``: mine a folder of images into a StyleBank (PODA's global PIN or FAMix's patch-wise PIN).

Work is cut into fixed chunks of ``--batch-size`` images (the public code's batches, in sorted file order). Each
finished chunk is written at once to ``OUT.parts/`` (atomically), so an interrupted run resumes where it stopped.
Under ``torchrun`` the chunks are dealt round-robin to the ranks; a chunk's result does not depend on which rank
mines it (same weights, same per-chunk seeds), so the bank equals the one a single process writes.

A run goes through these stages; every problem with the inputs is one line on stderr and exit status 2:

1. Every argument is checked without writing anything: numbers, the image folder (only regular files are read:
   a FIFO or a folder named ``x.png`` is skipped and reported), each image's and label map's header (sizes that
   cannot be mined together, unreadable files), the CLIP model name and weights, the device, the output path.
2. ``OUT.lock`` (next to the output) is locked with ``fcntl.flock``: a second run into the same ``--out`` stops
   with the PID and host of the first. The kernel releases the lock when its process dies, so a lock file left by
   a killed run does not block the next one. The CLIP model is loaded (weights that do not fit are an error).
3. ``OUT.parts/`` is created, or reused when its ``run.json`` holds the same arguments. Parts without a finished
   chunk are discarded silently; finished chunks of other arguments are an error naming each argument that
   differs (``--restart`` discards them).
4. Chunks are mined (progress with steps and time left on stderr) and the bank is written atomically, followed
   by a report of the styles per class and of the skipped files. Ctrl-C stops with exit status 130 and the
   command that resumes the run.

Patch mode (FAMix) mines, per chunk, the first patch of each distinct dominant class toward
``"<random FAMix style> <class name>"`` (``"photo"`` for class 255, the mostly unlabelled patches). Class 255 is
the fallback that training draws from for every class without styles of its own, so a chunk that has no mostly
unlabelled patch also mines its first patch (first image, top-left) toward ``"photo"`` under class 255, with the
loss weight of the chunk's other items (``1 / M`` for ``M`` distinct classes, as in FAMix's batch): every bank
then holds fallback styles, and training never meets a class with nothing to draw from.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FALLBACK = 255
PROGRESS_EVERY_S = 30.0  # when stderr is not a terminal: a progress line at most this often (and one per chunk)
PROBE_TIMEOUT_S = 3.0  # --clip-weights openai without a cached file: how long to wait for the download server


class MineError(Exception):
    """A problem with the command's inputs, reported to the user without a traceback."""


class _OtherRankFailed(Exception):
    """Another torchrun rank stopped; it reported why."""


# ---------------------------------------------------------------------------------------------------- arguments


class _HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to every option that has a default value (not to flags and unset options, whose
    help text says what happens without them)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and "(default:" not in text
            and action.default is not None
            and action.default is not False
        ):
            if action.default is not argparse.SUPPRESS and action.option_strings:
                text += " (default: %(default)s)"
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    parser.description = (
        "Mine styles from a folder of images into a StyleBank file: PODA's global styles toward one prompt "
        "(--prompt, --mode global) or FAMix's class styles of image patches (--class-styles --mode patch "
        "--labels DIR). Finished chunks are kept in OUT.parts/, so the same command resumes an interrupted run."
    )
    add = parser.add_argument
    add("--images", required=True, metavar="DIR", help="folder of source images, mined in name order")
    add(
        "--labels",
        metavar="DIR",
        help="folder of train-id label PNGs named like the images (patch mode; Cityscapes' "
        "*_gtFine_labelTrainIds.png are found too) (default: none)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--prompt", metavar="TEXT", help="target domain, e.g. 'driving at night' (global mode)")
    target.add_argument("--class-styles", action="store_true", help="FAMix: '<random style> <class>' per patch")
    add(
        "--out",
        required=True,
        metavar="FILE",
        help="output bank, e.g. bank.safetensors; OUT.parts/ and OUT.lock are kept next to it while mining",
    )
    add(
        "--clip-model",
        default="RN50",
        metavar="NAME",
        help="open_clip ModifiedResNet (RN50, RN101, RN50x4, ...) or VisionTransformer (ViT-B-16, ... with "
        "--split-block) (a *-quickgelu name for OpenAI weights as a PATH)",
    )
    add(
        "--split-block",
        type=int,
        metavar="K",
        help="ViT models: mine on the tokens after the first K transformer blocks (0: after the patch embedding and "
        "ln_pre); the synthesized tokens use no ReLU (default: none; required for a ViT)",
    )
    add(
        "--clip-weights",
        default="openai",
        metavar="WEIGHTS",
        help="'openai' (downloaded once, then read from the cache), 'none' (random weights, offline) or the PATH "
        "of a state dict",
    )
    add(
        "--mode",
        choices=["global", "patch"],
        default="global",
        help="global: one style per image (PODA); patch: one style per patch class (FAMix)",
    )
    add("--grid", type=int, default=3, metavar="G", help="patch grid (patch mode); must divide the feature map")
    add("--steps", type=int, default=100, metavar="N", help="SGD steps per style (lr 1, momentum 0.9, wd 1e-4)")
    add("--batch-size", type=int, default=16, metavar="N", help="images per chunk (the public batch size)")
    add("--seed", type=int, default=0, help="seed of the random weights, FAMix's style draws and feature noise")
    add(
        "--crop",
        type=int,
        metavar="N",
        help="center-crop images (and labels) to N x N (default: whole images, of one size per chunk)",
    )
    add("--templates", type=int, metavar="N", help="use the first N ImageNet prompt templates (default: all 80)")
    add("--feature-noise", type=float, default=0.0, metavar="SIGMA", help="noise std on the synthesized features")
    add(
        "--pool-to",
        type=int,
        default=56,
        metavar="N",
        help="ResNet models: pool layer1 features to N x N (0: no pooling)",
    )
    add("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    add("--max-chunks", type=int, metavar="N", help="stop after N chunks; rerun to continue (default: all)")
    add(
        "--keep-negative-std",
        action="store_true",
        help="keep mined std values below 0, as the public code does (default: clamp std to >= sqrt(1e-5))",
    )
    add(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images and label maps, list them at the end (default: stop with an error)",
    )
    add(
        "--restart",
        action="store_true",
        help="discard the finished chunks in OUT.parts/ of an earlier run and start over (default: resume them)",
    )


def _check_numbers(args) -> None:
    if args.mode == "patch" and not args.labels:
        raise MineError("--mode patch needs --labels")
    if args.mode == "patch" and args.prompt is not None:
        raise MineError("--mode patch mines class styles: use --class-styles instead of --prompt")
    if args.mode == "global" and args.class_styles:
        raise MineError("--class-styles needs --mode patch")
    if args.mode == "global" and args.labels:
        raise MineError("--labels is for --mode patch (global mode mines whole images)")
    if args.prompt is not None and not args.prompt.strip():
        raise MineError("--prompt must not be empty")
    from styleda_fast.ops.text.prompts import IMAGENET_TEMPLATES

    limits = {"steps": (0, None), "batch_size": (1, None), "grid": (1, None), "crop": (1, None),
              "templates": (1, len(IMAGENET_TEMPLATES)), "pool_to": (0, None), "max_chunks": (0, None),
              "seed": (0, 2**63 - 1), "split_block": (0, None)}  # fmt: skip
    for name, (low, high) in limits.items():
        value = getattr(args, name)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise MineError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
    if not math.isfinite(args.feature_noise) or args.feature_noise < 0:
        raise MineError(f"--feature-noise must be a finite number >= 0, got {args.feature_noise}")


def _check_device(device_arg: str | None) -> str:
    """The device string to use; ``MineError`` for unknown devices and CUDA without CUDA."""
    if device_arg is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except (RuntimeError, ValueError):
        raise MineError(f"--device {device_arg}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise MineError(f"--device {device_arg}: the mining runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            raise MineError(f"--device {device_arg}: CUDA is not available (this torch {built}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MineError(f"--device {device_arg}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device_arg


def _check_clip_model(name: str, split_block: int | None = None) -> None:
    """A ModifiedResNet (no --split-block) or a plain VisionTransformer (--split-block K in [0, layers])."""
    import open_clip

    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. RN50, RN101, RN50x4, ViT-B-16"
        raise MineError(f"--clip-model {name}: no such open_clip model{hint}")
    config = open_clip.get_model_config(name) or {}
    vision = config.get("vision_cfg", {})
    layers = vision.get("layers")
    if isinstance(layers, (list, tuple)):
        if split_block is not None:
            raise MineError(f"--split-block is for ViT models; {name} is a ModifiedResNet (mined after layer1)")
        return
    if not _is_plain_vit(config):
        resnets = [m for m in models if isinstance(open_clip.get_model_config(m)["vision_cfg"].get("layers"), list)]
        raise MineError(
            f"--clip-model {name} is neither a ModifiedResNet nor a plain open_clip VisionTransformer (timm and "
            f"Hugging Face towers are not supported); use a ViT such as ViT-B-16, or one of {', '.join(resnets)}"
        )
    if split_block is None:
        raise MineError(f"--clip-model {name} is a ViT: give --split-block K (0..{layers}), blocks before the split")
    if split_block > layers:
        raise MineError(f"--split-block {split_block}: {name} has {layers} transformer blocks (use 0..{layers})")


def _is_plain_vit(config: dict) -> bool:
    vision = config.get("vision_cfg", {})
    return (
        isinstance(vision.get("layers"), int) and not vision.get("timm_model_name") and not vision.get("hf_model_name")
    )


def _patch_size(name: str) -> int | None:
    """A ViT's patch size (None for a ModifiedResNet)."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        return None
    patch = vision.get("patch_size", 16)
    return patch[0] if isinstance(patch, (list, tuple)) else patch


def _cached_openai_weights(name: str) -> tuple[str | None, str, dict]:
    """(path of the cached 'openai' weights of ``name`` or None, where they would be downloaded from, the tag's
    config). Looks where open_clip's download keeps them, without touching the network."""
    import open_clip
    from open_clip import pretrained

    cfg = open_clip.get_pretrained_cfg(name, "openai")
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise MineError(
            f"--clip-weights openai: open_clip has no OpenAI weights for {name} (tags: {', '.join(tags) or 'none'}); "
            "use --clip-weights PATH or none"
        )
    if cfg.get("hf_hub") and pretrained.has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for candidate in names:
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str) and os.path.isfile(found):
                return found, constants.ENDPOINT, cfg
        return None, constants.ENDPOINT, cfg
    url = cfg.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    expected = url.split("/")[-2] if "openaipublic" in url else ""
    if os.path.isfile(path):  # open_clip downloads straight into this file: check that it is whole
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        if not expected or digest.hexdigest().startswith(expected):
            return path, url, cfg
    return None, url, cfg


def _server_answers(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds (name lookup included)."""
    from urllib.parse import urlparse

    parsed = urlparse(url if "://" in url else f"https://{url}")
    host, port = parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
    answered = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup can hang past any socket timeout
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _check_clip_weights(name: str, weights: str) -> tuple[str, str | None, bool]:
    """``(kind, path, quick_gelu)``: kind 'none', 'file' or 'openai'; path of the file to read (None: download)."""
    if weights == "none":
        return "none", None, False
    if weights != "openai":
        path = Path(weights)
        if not path.exists():
            raise MineError(f"--clip-weights {weights}: no such file (give a state dict PATH, 'openai' or 'none')")
        if not path.is_file():
            raise MineError(f"--clip-weights {weights}: not a regular file")
        if not os.access(path, os.R_OK):
            raise MineError(f"--clip-weights {weights}: not readable")
        return "file", str(path), False
    cached, source, cfg = _cached_openai_weights(name)
    quick_gelu = bool(cfg.get("quick_gelu", False))  # OpenAI's CLIPs use QuickGELU
    if cached is not None:
        return "openai", cached, quick_gelu
    hint = "use --clip-weights none (random weights, offline) or --clip-weights PATH to a local state dict"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        raise MineError(
            f"--clip-weights openai: {name}'s weights are not in the cache and HF_HUB_OFFLINE is set; {hint}"
        )
    if not _server_answers(source, PROBE_TIMEOUT_S):
        raise MineError(
            f"--clip-weights openai: {name}'s weights are not in the cache and {source} cannot be reached "
            f"(no network?); {hint}"
        )
    return "openai", None, quick_gelu


def _check_out(out: Path) -> None:
    parent = out.parent
    if not parent.exists():
        if any(p.exists() and not p.is_dir() for p in parent.parents):
            raise MineError(f"--out {out}: {next(p for p in parent.parents if p.exists())} is a file, not a folder")
        raise MineError(f"--out {out}: the parent folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise MineError(f"--out {out}: {parent} is a file, not a folder")
    if out.is_dir():
        raise MineError(f"--out {out}: is a directory; give a file name, e.g. {out / 'bank.safetensors'}")
    if out.exists() and not out.is_file():
        raise MineError(f"--out {out}: exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MineError(f"--out {out}: the folder {parent} is not writable")


# ---------------------------------------------------------------------------------------------------- files


@dataclass
class _Files:
    images: list[Path]
    labels: list[Path | None] | None
    sizes: list[tuple[int, int] | None]  # (height, width) from the header; None: unreadable (skipped)
    skipped: list[str] = field(default_factory=list)  # "name: reason", found before mining
    not_regular: list[str] = field(default_factory=list)


def _list_images(folder: str) -> tuple[list[Path], list[str]]:
    """Image files of ``folder`` in name order, and the entries with an image suffix that are not regular files
    (FIFOs, sockets, devices, folders): those are never opened, since reading a FIFO blocks."""
    root = Path(folder)
    if not root.exists():
        raise MineError(f"--images {folder}: the folder does not exist")
    if not root.is_dir():
        raise MineError(f"--images {folder}: not a folder")
    images, not_regular = [], []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            mode = path.stat().st_mode
        except OSError as exc:  # e.g. a dangling symbolic link
            not_regular.append(f"{path.name} ({exc.strerror.lower()})")
            continue
        if stat.S_ISREG(mode):
            images.append(path)
        else:
            not_regular.append(f"{path.name} ({_file_kind(mode)})")
    if not images:
        raise MineError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images, not_regular


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def _label_for(image: Path, folder: Path) -> Path:
    """The label of an image: same stem, or Cityscapes' ``_leftImg8bit`` -> ``_gtFine_labelTrainIds``."""
    stem = image.stem
    candidates = [stem, stem.replace("_leftImg8bit", "_gtFine_labelTrainIds"), stem + "_labelTrainIds"]
    for name in dict.fromkeys(candidates):
        path = folder / f"{name}.png"
        if path.exists():
            if not path.is_file():
                raise MineError(f"--labels: {path} is {_file_kind(path.stat().st_mode)}, not a label PNG")
            return path
    raise MineError(f"--labels: no label PNG for image {image.name} in {folder} (tried {', '.join(candidates)})")


class _BadFile(Exception):
    """An image or label map that cannot be read; ``--skip-bad-images`` skips it."""


def _open_image(path: Path, what: str):
    from PIL import Image

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _BadFile(f"{what} {path} is too large to decode safely (PIL's decompression-bomb limit): {exc}") from exc
    except Exception as exc:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise _BadFile(f"cannot read {what} {path}: {exc}") from exc


def _header_size(path: Path, what: str) -> tuple[int, int]:
    with _open_image(path, what) as img:
        return img.size[1], img.size[0]


def _scan_files(args) -> _Files:
    """The images (and labels) with their header sizes; checks that each chunk's files can be mined together."""
    images, not_regular = _list_images(args.images)
    labels = None
    if args.mode == "patch":
        folder = Path(args.labels)
        if not folder.exists():
            raise MineError(f"--labels {args.labels}: the folder does not exist")
        if not folder.is_dir():
            raise MineError(f"--labels {args.labels}: not a folder")
        labels = [_label_for(p, folder) for p in images]
    files = _Files(images, labels, [], not_regular=not_regular)
    for i, image in enumerate(images):
        try:
            size = _header_size(image, "image")
            if labels is not None:
                label_size = _header_size(labels[i], "label map")
                if label_size != size:
                    raise MineError(
                        f"label map {labels[i].name} is {_hw(label_size)} but its image {image.name} is {_hw(size)}; "
                        "label maps must have their image's size"
                    )
        except _BadFile as exc:
            if not args.skip_bad_images:
                raise MineError(f"{exc} (--skip-bad-images skips such files)") from None
            files.skipped.append(str(exc))
            size = None
        if size is not None and args.crop is not None and min(size) < args.crop:
            raise MineError(f"--crop {args.crop}: image {image.name} is only {_hw(size)}")
        files.sizes.append(size)
    if all(size is None for size in files.sizes):
        raise MineError(f"--images {args.images}: none of the {len(images)} image files can be read")
    _check_chunk_sizes(files, args)
    return files


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _feature_side(n: int, patch: int | None = None) -> int:
    """Side of the features for an image side ``n``: a ModifiedResNet's layer1 (stride-2 convolution, then 2x2
    pool), or a ViT's patch grid (``patch``: its patch size)."""
    if patch is not None:
        return n // patch
    return ((n - 1) // 2 + 1) // 2


def _check_chunk_sizes(files: _Files, args) -> None:
    shapes = set()
    for start in range(0, len(files.images), args.batch_size):
        known = [(p, s) for p, s in zip(files.images[start : start + args.batch_size],
                                        files.sizes[start : start + args.batch_size]) if s is not None]  # fmt: skip
        if args.crop is None and len({s for _, s in known}) > 1:
            (a, sa), (b, sb) = known[0], next((p, s) for p, s in known if s != known[0][1])
            raise MineError(
                f"images of different sizes in chunk {start // args.batch_size} ({a.name} is {_hw(sa)}, {b.name} "
                f"is {_hw(sb)}): the images of a chunk (--batch-size {args.batch_size}) are mined as one batch; "
                f"use --crop N (N at most the smallest side) to center-crop every image to N x N"
            )
        if known:
            shapes.add((args.crop, args.crop) if args.crop is not None else known[0][1])
    smallest = min((min(s) for s in shapes), default=0)
    patch = _patch_size(args.clip_model)
    stride = patch or 4
    for h, w in sorted(shapes):
        fh, fw = _feature_side(h, patch), _feature_side(w, patch)
        if fh < 1 or fw < 1:
            need = f"{patch} pixels (the patch size)" if patch else "3 pixels"
            raise MineError(f"images of {h}x{w} are too small: the CLIP stem needs a side of at least {need}")
        if args.mode == "patch" and (fh % args.grid or fw % args.grid):
            crop = smallest // stride // args.grid * args.grid * stride  # a feature side that is a multiple of the grid
            hint = f", e.g. --crop {crop}" if crop else f"; the images are too small for --grid {args.grid}"
            raise MineError(
                f"--grid {args.grid} does not divide the {fh}x{fw} feature map of {h}x{w} images (patches mined "
                f"together need one size): use a --crop N with N / {stride} a multiple of {args.grid}{hint}"
            )


def _read_image(path: Path, crop: int | None) -> torch.Tensor:
    """``(3, H, W)`` float32 normalized with CLIP's mean and std."""
    import numpy as np
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    try:
        with _open_image(path, "image") as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except _BadFile:
        raise
    except Exception as exc:  # truncated or corrupt data shows only when decoding
        raise _BadFile(f"cannot read image {path}: {exc}") from exc
    image = _center_crop(torch.from_numpy(array).permute(2, 0, 1), crop)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (image - mean) / std


def _read_labels(path: Path, crop: int | None) -> torch.Tensor:
    import numpy as np

    from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES

    try:
        with _open_image(path, "label map") as img:
            array = np.asarray(img, dtype=np.int64)
    except _BadFile:
        raise
    except Exception as exc:
        raise _BadFile(f"cannot read label map {path}: {exc}") from exc
    if array.ndim != 2:
        raise MineError(f"label map {path} must be a single-channel PNG of train ids, got shape {array.shape}")
    bad = (array >= len(CITYSCAPES_CLASSES)) & (array != FALLBACK)
    if bad.any():
        raise MineError(
            f"label map {path} holds values that are not train ids 0..{len(CITYSCAPES_CLASSES) - 1} or {FALLBACK} "
            f"(e.g. {int(array[bad][0])}); use the *_labelTrainIds.png label maps"
        )
    return _center_crop(torch.from_numpy(array.copy()), crop)


def _center_crop(t: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return t
    h, w = t.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top : top + size, left : left + size]


# ---------------------------------------------------------------------------------------------------- CLIP


class _DropRandomInitWarning:
    """open_clip logs 'Model initialized randomly' when it creates a model without weights; we load them after."""

    def filter(self, record) -> bool:
        return "initialized randomly" not in record.getMessage()


def load_clip(name: str, weights: str, seed: int, *, _checked: tuple[str, str | None, bool] | None = None):
    """An open_clip model (eval mode) and its tokenizer; ``weights`` is a state-dict path, 'openai' or 'none'."""
    import logging

    import open_clip

    kind, path, quick_gelu = _checked or _check_clip_weights(name, weights)
    torch.manual_seed(seed)  # 'none': the same random weights on every rank and every run
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        if kind == "openai":  # a cached file is read directly: no network access, not even a freshness check
            model = open_clip.create_model(name, pretrained=path or "openai", force_quick_gelu=quick_gelu)
        else:
            model = open_clip.create_model(name, pretrained=None)
        if kind == "file":
            state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise MineError(f"--clip-weights {weights}: not a state dict (a {type(state).__name__})")
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise MineError(
                    f"--clip-weights {weights} does not fit {name}: {len(missing)} missing keys "
                    f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
                )
    except MineError:
        raise
    except Exception as exc:  # unreadable file, shape mismatch, download failure
        raise MineError(f"cannot load CLIP {name} with weights {weights!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    from styleda_fast.mining.engine import _is_vision_transformer

    if not hasattr(model.visual, "attnpool") and not _is_vision_transformer(model.visual):
        raise MineError(f"--clip-model {name} is neither a ModifiedResNet nor an open_clip VisionTransformer")
    return model.eval(), open_clip.get_tokenizer(name)


class PromptTargets:
    """Text targets of descriptions, encoded once each (FAMix reuses '<style> <class>' pairs across batches)."""

    def __init__(self, model, tokenizer, templates: int | None):
        from styleda_fast.ops.text.prompts import IMAGENET_TEMPLATES

        self.model, self.tokenizer = model, tokenizer
        self.templates = IMAGENET_TEMPLATES[:templates] if templates else IMAGENET_TEMPLATES
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, descriptions: list[str]) -> torch.Tensor:
        from styleda_fast.ops.text import encode_prompts

        new = [d for d in dict.fromkeys(descriptions) if d not in self.cache]
        if new:
            for d, t in zip(new, encode_prompts(self.model, self.tokenizer, new, self.templates)):
                self.cache[d] = t
        return torch.stack([self.cache[d] for d in descriptions])


# ---------------------------------------------------------------------------------------------------- output lock


class _OutputLock:
    """An exclusive ``fcntl.flock`` on ``OUT.lock``, holding ``"PID host"`` of its owner.

    The kernel drops the lock when the process dies, so a file left behind by a killed run is simply locked
    again. The file is removed on release (while still locked); a run that locked a file removed meanwhile sees
    another inode at the path and locks again."""

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MineError(f"--out: cannot write next to the output ({self.path}: {exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise MineError(f"--out: cannot lock {self.path}: {exc.strerror}") from None
                who = f"PID {owner[0]} on {owner[1]}" if len(owner) >= 2 else "another process"
                raise MineError(
                    f"another styleda-fast mine ({who}) is writing this output (lock {self.path}); "
                    "wait for it to finish or stop it"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by its previous owner while we waited: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise MineError(f"--out: cannot write {self.path}: {exc.strerror}") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------------- console


class _Console:
    """Messages of rank 0 and one progress line on stderr. A message first ends an open progress line, so no
    message is ever printed in the middle of one. On a terminal the line is redrawn in place; otherwise (a log
    file, a pipe) a plain line is printed per finished chunk and at most every ``PROGRESS_EVERY_S`` seconds."""

    def __init__(self, rank: int):
        self.quiet = rank != 0
        self.tty = sys.stderr.isatty()
        self.open = False
        self.last_draw = 0.0
        self.last_line = time.monotonic()

    def end_line(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False

    def say(self, message: str, *, err: bool = False) -> None:
        if self.quiet:
            return
        self.end_line()
        print(message, file=sys.stderr if err else sys.stdout, flush=True)

    def progress(self, text: str, *, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if final or now - self.last_draw >= 0.1:
                width = max(20, shutil.get_terminal_size().columns - 1)
                sys.stderr.write("\r" + text[:width] + "\x1b[K")
                sys.stderr.flush()
                self.open, self.last_draw = True, now
        elif final or now - self.last_line >= PROGRESS_EVERY_S:
            print(text, file=sys.stderr, flush=True)
            self.last_line = now


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Eta:
    """Time left: the mean time of this run's finished chunks for the chunks to come, and the current chunk's step
    rate for the rest of it (its own estimate until a chunk has finished)."""

    def __init__(self, chunks: int):
        self.chunks, self.finished, self.spent = chunks, 0, 0.0
        self.chunk_start = time.monotonic()

    def start_chunk(self) -> None:
        self.chunk_start = time.monotonic()

    def finish_chunk(self) -> None:
        self.finished += 1
        self.spent += time.monotonic() - self.chunk_start

    def left(self, done: int = 0, total: int = 0) -> str:
        elapsed = time.monotonic() - self.chunk_start
        this_left = elapsed / done * (total - done) if done and total else None
        per_chunk = self.spent / self.finished if self.finished else (elapsed / done * total if done else None)
        after = self.chunks - self.finished - (1 if total else 0)
        if per_chunk is None:
            return "ETA ?"
        return f"ETA {_duration((this_left or 0.0) + max(after, 0) * per_chunk)}"


# ---------------------------------------------------------------------------------------------------- run


def _distributed(device: str):
    """(rank, world_size, device); initializes torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return rank, world, dev
    return 0, 1, torch.device(device)


def _all_ok(world: int, device: torch.device, ok: bool) -> bool:
    """Whether every rank is ``ok`` (one all-reduce); a single process is its own answer."""
    if world == 1:
        return ok
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _together(world: int, device: torch.device, step):
    """Run ``step()`` on every rank; if it fails on any rank, every rank stops (the failing one reports)."""
    try:
        result = step()
    except MineError:
        _all_ok(world, device, False)
        raise
    if not _all_ok(world, device, True):
        raise _OtherRankFailed
    return result


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _config(args, files: _Files) -> dict:
    keys = ("images", "labels", "prompt", "class_styles", "clip_model", "clip_weights", "mode", "grid", "steps",
            "batch_size", "seed", "crop", "templates", "feature_noise", "pool_to", "keep_negative_std")  # fmt: skip
    config = {k: getattr(args, k) for k in keys}
    if args.split_block is not None:  # recorded for ViT runs only, so earlier ResNet runs still resume
        config["split_block"] = args.split_block
    config["images"] = str(Path(args.images).resolve())
    config["labels"] = str(Path(args.labels).resolve()) if args.labels else None
    names = "\n".join(p.name for p in files.images).encode()
    config["image_files"] = f"{len(files.images)} files, sha256 {hashlib.sha256(names).hexdigest()[:16]}"
    config["fallback_styles"] = "first patch of a chunk without class 255" if args.mode == "patch" else None
    return config


def _config_name(key: str) -> str:
    """A run.json key as the user knows it: the option's name, or a description of what it records."""
    if key in ("image_files", "fallback_styles"):
        return key.replace("_", " ")
    return f"--{key.replace('_', '-')}"


def _chunk_file(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.safetensors"


def _prepare_parts(parts: Path, config: dict, restart: bool) -> str:
    """Create OUT.parts/ with the run's configuration, or check that an existing one belongs to this run.
    Returns what happened, for the log ('' when nothing worth saying)."""
    run_file = parts / "run.json"
    note = ""
    if parts.exists() and not parts.is_dir():
        raise MineError(f"{parts} exists and is not a folder; move it away")
    if parts.is_dir():
        finished = sorted(parts.glob("chunk-*.safetensors"))
        previous = None
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, ValueError):
            pass
        if restart and finished:
            note = f"--restart: discarded {len(finished)} finished chunks of an earlier run in {parts}"
        elif finished and previous != config:
            if not isinstance(previous, dict):
                raise MineError(
                    f"{parts} holds finished chunks but no readable run.json; use --restart to discard them"
                )
            changed = [k for k in config if previous.get(k, "(not recorded)") != config[k]]
            changed += [k for k in previous if k not in config]
            what = "; ".join(
                f"{_config_name(k)}: {previous.get(k, '(not recorded)')!r} before, {config.get(k)!r} now"
                for k in changed
            )
            raise MineError(
                f"{parts} holds {len(finished)} finished chunks of a run with other arguments ({what}); "
                "rerun with the earlier arguments to resume, or add --restart to discard them"
            )
        elif finished:
            return ""
        shutil.rmtree(parts)  # nothing finished (or --restart): start over
    parts.mkdir()
    tmp = parts / "run.json.tmp"
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp, run_file)  # atomic, like the chunk files
    return note


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a chunk file is complete or absent
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _disk_error(exc: BaseException, what: Path) -> MineError:
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
        return MineError(
            f"no space left on the device while writing {what}; free some space and run the same command again "
            "(finished chunks are kept)"
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return MineError(f"cannot write {what}: {detail}")


def run(args) -> int:
    rank = int(os.environ.get("RANK", "0"))
    console = _Console(rank)
    state = {"parts": None, "lock": None, "world": int(os.environ.get("WORLD_SIZE", "1"))}
    try:
        return _run(args, console, state)
    except KeyboardInterrupt:
        console.end_line()
        if rank == 0:
            print(_interrupted_message(state), file=sys.stderr, flush=True)
        return 130
    except _OtherRankFailed:
        console.end_line()
        return 2
    except MineError:
        console.end_line()
        if rank != 0 and state.get("validating"):
            return 2  # every rank checks the same arguments; rank 0 reports
        raise
    finally:
        if state["lock"] is not None:
            state["lock"].release()


def _interrupted_message(state) -> str:
    parts = state["parts"]
    kept = len(list(parts.glob("chunk-*.safetensors"))) if parts is not None and parts.is_dir() else 0
    argv = [a for a in sys.argv[1:] if not (a.startswith("--re") and "--restart".startswith(a))]
    if Path(sys.argv[0]).name.startswith("styleda-fast"):
        head = ["styleda-fast"] if shutil.which("styleda-fast") == sys.argv[0] else [sys.argv[0]]
    elif state["world"] > 1:
        head = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', state['world'])}", "-m",
                "styleda_fast.cli"]  # fmt: skip
    else:
        head = [sys.executable, "-m", "styleda_fast.cli"]
    where = f"kept in {parts}" if kept else "kept"
    return f"interrupted: {kept} finished chunk(s) {where}; resume with: {shlex.join(head + argv)}"


def _run(args, console: _Console, state: dict) -> int:
    try:
        import open_clip  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as exc:
        raise MineError(f"{exc}; install the mining extra: pip install --no-build-isolation '.[mining]'") from exc
    from safetensors.torch import load_file

    from styleda_fast.mining.engine import clip_image_head, clip_image_tail

    # 1. every argument, nothing written yet
    state["validating"] = True
    _check_numbers(args)
    out = Path(args.out)
    _check_out(out)
    device_name = _check_device(args.device)
    _check_clip_model(args.clip_model, args.split_block)
    weights = _check_clip_weights(args.clip_model, args.clip_weights)
    files = _scan_files(args)
    state["validating"] = False
    if files.not_regular:
        console.say(f"skipping {len(files.not_regular)} entries that are not regular files: "
                    + ", ".join(files.not_regular), err=True)  # fmt: skip

    # 2. the lock, then the model
    rank, world, device = _distributed(device_name)
    state["world"] = world
    parts = out.with_name(out.name + ".parts")

    def lock():
        if rank == 0:
            state["lock"] = _OutputLock(out)
            state["lock"].acquire()

    _together(world, device, lock)
    model, tokenizer = _together(world, device, lambda: load_clip(args.clip_model, args.clip_weights, args.seed,
                                                                  _checked=weights))  # fmt: skip
    model = model.to(device)
    if args.split_block is None:
        head = clip_image_head(model.visual)
        tail = clip_image_tail(model.visual, pool_to=args.pool_to or None)
    else:
        head = clip_image_head(model.visual, split_block=args.split_block)
        tail = clip_image_tail(model.visual, split_block=args.split_block)
    prompts = PromptTargets(model, tokenizer, args.templates)

    # 3. OUT.parts/
    def prepare():
        if rank == 0:
            try:
                note = _prepare_parts(parts, _config(args, files), args.restart)
            except OSError as exc:
                raise _disk_error(exc, parts) from None
            if note:
                console.say(note, err=True)

    _together(world, device, prepare)
    state["parts"] = parts

    # 4. mining
    chunks = [list(range(k, min(k + args.batch_size, len(files.images))))
              for k in range(0, len(files.images), args.batch_size)]  # fmt: skip
    todo = [k for k in range(len(chunks)) if k % world == rank and not _chunk_file(parts, k).exists()]
    if args.max_chunks is not None:
        todo = todo[: args.max_chunks]
    done_before = sum(_chunk_file(parts, k).exists() for k in range(len(chunks)))
    console.say(
        f"mining {len(files.images)} images in {len(chunks)} chunks of {args.batch_size} on {world} process(es) "
        f"({device.type}), {done_before} chunks done before"
    )
    eta = _Eta(len(todo))
    try:
        for i, k in enumerate(todo):
            eta.start_chunk()
            where = f"chunk {i + 1}/{len(todo)}"

            def show(done, total, where=where):
                console.progress(f"mining {where}: step {done}/{total}, {eta.left(done, total)}")

            result, skipped = _mine_file_chunk(k, chunks[k], files, args, head, tail, prompts, device, show)
            data = _chunk_bytes(result, skipped)
            try:
                _write_atomic(_chunk_file(parts, k), data)
            except OSError as exc:
                raise _disk_error(exc, _chunk_file(parts, k)) from None
            eta.finish_chunk()
            styles = len(result["mean"])
            console.progress(f"mining {where} done ({styles} style{'s' * (styles != 1)}), {eta.left()}", final=True)
            for line in skipped:
                console.say(f"skipped: {line}", err=True)
    finally:
        console.end_line()
    _barrier(world)
    if rank == 0:
        finished = [_chunk_file(parts, k) for k in range(len(chunks))]
        if all(p.exists() for p in finished):
            results, skipped = [], list(files.skipped)
            for p in finished:
                results.append(load_file(str(p)))
                skipped += _chunk_skipped(p)
            bank = _write_bank(out, results, args)
            shutil.rmtree(parts)
            console.say(f"wrote {out}")
            console.say(_class_report(bank))
            if skipped or files.not_regular:
                console.say(_skip_report(skipped, files.not_regular))
        else:
            missing = sum(not p.exists() for p in finished)
            console.say(f"stopped with {missing} chunks left; run the same command again to continue")
    _barrier(world)
    return 0


def _chunk_bytes(result: dict[str, torch.Tensor], skipped: list[str]) -> bytes:
    from safetensors.torch import save

    tensors = {name: t.contiguous().cpu() for name, t in result.items()}
    return save(tensors, metadata={"skipped": json.dumps(skipped)})


def _chunk_skipped(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("skipped", "[]"))


def _mine_file_chunk(k, indices, files: _Files, args, head, tail, prompts, device, show):
    """Mine chunk ``k`` (images ``indices`` of ``files``): its styles and the files skipped as unreadable."""
    from styleda_fast.mining.engine import derived_seed, mine_styles
    from styleda_fast.ops.text.prompts import famix_descriptions

    images, label_maps, skipped = [], [], []
    for i in indices:
        if files.sizes[i] is None:  # unreadable header, reported before mining
            continue
        try:
            image = _read_image(files.images[i], args.crop)
            label = _read_labels(files.labels[i], args.crop) if files.labels is not None else None
        except _BadFile as exc:
            if not args.skip_bad_images:
                raise MineError(f"{exc} (--skip-bad-images skips such files)") from None
            skipped.append(str(exc))
            continue
        images.append(image)
        label_maps.append(label)
    seed = derived_seed(args.seed, k)
    if not images:
        channels = tail.channels if hasattr(tail, "channels") else tail.layer2[0].conv1.in_channels
        empty = torch.zeros(0, channels)
        return {"mean": empty, "std": empty.clone(), "class_ids": torch.zeros(0, dtype=torch.int64),
                "loss": torch.zeros(0)}, skipped  # fmt: skip
    prefix = getattr(tail, "prefix_tokens", 0)
    with torch.no_grad():
        features = head(torch.stack(images).to(device))
        features = features.float() if not prefix else _float_token_grid(features, prefix)
    reference_batch_size = None
    if args.mode == "global":
        content = features
        targets = prompts([args.prompt]).expand(len(images), -1)
        class_ids = torch.full((len(images),), FALLBACK, dtype=torch.int64)
    else:
        content, class_ids = _select(features, torch.stack(label_maps).to(device), args.grid, f"chunk {k}", prefix)
        descriptions = famix_descriptions(class_ids.tolist(), generator=torch.Generator().manual_seed(seed))
        reference_batch_size = len(descriptions)  # FAMix's batch: the M distinct classes
        if FALLBACK not in class_ids.tolist():  # no "photo" patch: the first patch gives a fallback style too
            content = _append_first(content, prefix)
            class_ids = torch.cat([class_ids, torch.tensor([FALLBACK])])
            descriptions.append(famix_descriptions([FALLBACK])[0])
        targets = prompts(descriptions)
    result = mine_styles(
        tail, content, targets.to(device), steps=args.steps, feature_noise=args.feature_noise, seed=seed,
        clamp_std=args.mode == "global", final_clamp=not args.keep_negative_std,
        reference_batch_size=reference_batch_size, step_progress=show,
    )  # fmt: skip
    return {"mean": result.mean, "std": result.std, "class_ids": class_ids.cpu(), "loss": result.loss}, skipped


def _float_token_grid(grid: torch.Tensor, prefix: int) -> torch.Tensor:
    """A ViT head's token grid in float32, still a token grid (``.float()`` of a half one would drop the prefix)."""
    from styleda_fast.nn.tokens import grid_as_tokens, tokens_as_grid

    if grid.dtype == torch.float32:
        return grid
    return tokens_as_grid(grid_as_tokens(grid).float(), grid.shape[2], grid.shape[3], prefix)


def _append_first(content: torch.Tensor, prefix: int) -> torch.Tensor:
    """``content`` with its first item once more at the end (for a token grid: tokens and all)."""
    if not prefix:
        return torch.cat([content, content[:1]])
    from styleda_fast.nn.tokens import grid_as_tokens, tokens_as_grid

    tokens = grid_as_tokens(content)
    return tokens_as_grid(torch.cat([tokens, tokens[:1]]), content.shape[2], content.shape[3], prefix)


def _select(features, label_maps, grid, where, prefix=0):
    from styleda_fast.mining.engine import select_patches

    try:
        selection = select_patches(features, label_maps, grid=grid, prefix=prefix)
    except ValueError as exc:
        raise MineError(f"{where}: {exc}") from exc
    return selection.content, selection.class_ids


def _write_bank(out: Path, results: list[dict], args):
    from styleda_fast.bank.style_bank import StyleBank
    from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES, FAMIX_STYLES

    mean = torch.cat([r["mean"] for r in results])
    std = torch.cat([r["std"] for r in results])
    class_ids = torch.cat([r["class_ids"] for r in results])
    layer = "layer1" if args.split_block is None else f"tokens after {args.split_block} transformer blocks"
    about = {"backbone": args.clip_model, "layer": layer}
    if args.mode == "global":  # PODA: class-less, every style in the fallback list
        bank = StyleBank(mean.shape[1], num_classes=0, prompts={str(FALLBACK): args.prompt}, **about)
    else:
        prompts = {name: f"<one of {len(FAMIX_STYLES)} FAMix styles> {name}" for name in CITYSCAPES_CLASSES}
        bank = StyleBank(mean.shape[1], prompts={**prompts, str(FALLBACK): "photo"}, **about)
    bank.add(mean, std, class_ids, allow_negative_std=args.keep_negative_std)
    tmp = out.with_name(out.name + ".tmp")
    try:
        bank.save(tmp)
        os.replace(tmp, out)
    except Exception as exc:  # safetensors reports write errors as its own exception type
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _disk_error(exc, out) from None
    return bank


def _class_report(bank) -> str:
    """How many styles each class got (class names for Cityscapes train ids)."""
    counts = bank.class_counts()
    total = len(bank)
    if bank.num_classes == 0:
        return f"styles: {total} (global bank: every style can be drawn for any image)"
    lines = [f"styles per class ({total} in all):"]
    empty = []
    for k, name in enumerate(bank.class_names):
        if counts[name]:
            lines.append(f"  {k:>3} {name:<14} {counts[name]:>6}")
        else:
            empty.append(name)
    fallback = counts[str(bank.fallback)]
    lines.append(f"  {bank.fallback:>3} {'(fallback)':<14} {fallback:>6}")
    if empty:
        source = f"drawn from the fallback {bank.fallback}" if fallback else "and no fallback: sampling them fails"
        lines.append(f"  no styles ({source}): {', '.join(empty)}")
    return "\n".join(lines)


def _skip_report(skipped: list[str], not_regular: list[str]) -> str:
    lines = []
    if not_regular:
        lines.append(f"skipped {len(not_regular)} entries that are not regular files: {', '.join(not_regular)}")
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable files (--skip-bad-images):")
        lines += [f"  {line}" for line in skipped]
    return "\n".join(lines)
