"""``styleda-fast mine``: mine a folder of images into a StyleBank (PODA's global PIN or FAMix's patch-wise PIN).

Work is cut into fixed chunks of ``--batch-size`` images (the public code's batches, in sorted file order). Each
finished chunk is written at once to ``OUT.parts/`` (atomically), so an interrupted run resumes where it stopped.
Under ``torchrun`` the chunks are dealt round-robin to the ranks; a chunk's result does not depend on which rank
mines it (same weights, same per-chunk seeds), so the bank equals the one a single process writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class MineError(Exception):
    """A problem with the command's inputs, reported to the user without a traceback."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of source images (sorted by name)")
    parser.add_argument("--labels", help="folder of train-id label PNGs, same stem as the images (patch mode)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--prompt", help="target domain description, e.g. 'driving at night' (global mode)")
    target.add_argument("--class-styles", action="store_true", help="FAMix: '<random style> <class>' per patch")
    parser.add_argument("--out", required=True, help="output bank, e.g. bank.safetensors")
    parser.add_argument("--clip-model", default="RN50", help="open_clip ModifiedResNet name (RN50, RN101, ...)")
    parser.add_argument("--clip-weights", default="openai", help="PATH to a state dict, 'openai', or 'none'")
    parser.add_argument("--mode", choices=["global", "patch"], default="global")
    parser.add_argument("--grid", type=int, default=3, help="patch grid (patch mode)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="images per chunk (the public batch size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=None, help="center-crop images (and labels) to N x N")
    parser.add_argument("--templates", type=int, default=None, help="use only the first N ImageNet templates")
    parser.add_argument("--feature-noise", type=float, default=0.0, help="noise on synthesized features")
    parser.add_argument("--pool-to", type=int, default=56, help="pool layer1 features to N x N (0: no pooling)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--max-chunks", type=int, default=None, help="stop after N chunks (rerun to continue)")


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


def _distributed(device_arg: str | None):
    """(rank, world_size, device); initializes torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return rank, world, device
    return 0, 1, torch.device(device_arg or ("cuda" if use_cuda else "cpu"))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _list_images(folder: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise MineError(f"--images: {folder} is not a folder")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise MineError(f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return images


def _label_for(image: Path, folder: Path) -> Path:
    """The label of an image: same stem, or Cityscapes' ``_leftImg8bit`` -> ``_gtFine_labelTrainIds``."""
    stem = image.stem
    candidates = [stem, stem.replace("_leftImg8bit", "_gtFine_labelTrainIds"), stem + "_labelTrainIds"]
    for name in candidates:
        path = folder / f"{name}.png"
        if path.is_file():
            return path
    raise MineError(f"--labels: no label PNG for image {image.name} in {folder} (tried {', '.join(candidates)})")


def _center_crop(t: torch.Tensor, size: int | None, what: str) -> torch.Tensor:
    if size is None:
        return t
    h, w = t.shape[-2:]
    if h < size or w < size:
        raise MineError(f"--crop {size}: {what} is only {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top : top + size, left : left + size]


def _read_image(path: Path, crop: int | None) -> torch.Tensor:
    """``(3, H, W)`` float32 normalized with CLIP's mean and std."""
    import numpy as np
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MineError(f"cannot read image {path}: {exc}") from exc
    image = _center_crop(torch.from_numpy(array).permute(2, 0, 1), crop, f"image {path.name}")
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    return (image - mean) / std


def _read_labels(path: Path, crop: int | None) -> torch.Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img, dtype=np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MineError(f"cannot read label map {path}: {exc}") from exc
    if array.ndim != 2:
        raise MineError(f"label map {path} must be a single-channel PNG of train ids, got shape {array.shape}")
    return _center_crop(torch.from_numpy(array.copy()), crop, f"label map {path.name}")


def load_clip(name: str, weights: str, seed: int):
    """An open_clip model (eval mode) and its tokenizer; ``weights`` is a state-dict path, 'openai' or 'none'."""
    import open_clip

    torch.manual_seed(seed)  # 'none': the same random weights on every rank and every run
    try:
        if weights == "none":
            model = open_clip.create_model(name, pretrained=None)
        elif weights == "openai":
            model = open_clip.create_model(name, pretrained="openai")
        else:
            model = open_clip.create_model(name, pretrained=None)
            state = torch.load(weights, map_location="cpu", weights_only=True)  # never runs code from the file
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise MineError(
                    f"--clip-weights {weights} does not fit {name}: {len(missing)} missing keys "
                    f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
                )
    except MineError:
        raise
    except Exception as exc:  # unknown model name, download impossible offline, unreadable file, shape mismatch
        raise MineError(f"cannot load CLIP {name} with weights {weights!r}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(model.visual, "attnpool"):
        raise MineError(f"--clip-model {name} is not a ModifiedResNet (RN50, RN101, RN50x4, ...)")
    return model.eval(), open_clip.get_tokenizer(name)


def _config(args) -> dict:
    keys = ("images", "labels", "prompt", "class_styles", "clip_model", "clip_weights", "mode", "grid", "steps",
            "batch_size", "seed", "crop", "templates", "feature_noise", "pool_to")  # fmt: skip
    config = {k: getattr(args, k) for k in keys}
    config["images"] = str(Path(args.images).resolve())
    config["labels"] = str(Path(args.labels).resolve()) if args.labels else None
    return config


def _prepare_parts(parts: Path, config: dict, rank: int) -> None:
    """Create OUT.parts/ with the run's configuration, or check that an existing one belongs to this run."""
    run_file = parts / "run.json"
    if rank == 0:
        parts.mkdir(parents=True, exist_ok=True)
        if run_file.exists():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, ValueError) as exc:
                raise MineError(f"{run_file} is unreadable ({exc}); delete {parts} to start over") from exc
            if previous != config:
                changed = sorted(k for k in config if previous.get(k) != config[k])
                raise MineError(
                    f"{parts} holds the partial work of a different run (differs in {', '.join(changed)}); "
                    "delete it or use the same arguments to resume"
                )
        else:
            tmp = parts / "run.json.tmp"
            tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
            os.replace(tmp, run_file)  # atomic, like the chunk files


def run(args) -> int:
    from safetensors.torch import load_file, save_file

    try:
        import open_clip  # noqa: F401
        import PIL  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as exc:
        raise MineError(f"{exc}; install the mining extra: pip install --no-build-isolation '.[mining]'") from exc

    from styleda_fast.mining import clip_image_head, clip_image_tail

    if args.mode == "patch" and not args.labels:
        raise MineError("--mode patch needs --labels")
    if args.mode == "patch" and args.prompt is not None:
        raise MineError("--mode patch mines class styles: use --class-styles instead of --prompt")
    if args.mode == "global" and args.class_styles:
        raise MineError("--class-styles needs --mode patch")
    for name in ("steps", "batch_size", "grid"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            raise MineError(f"--{name.replace('_', '-')} must be positive")
    rank, world, device = _distributed(args.device)
    images = _list_images(args.images)
    labels = [_label_for(p, Path(args.labels)) for p in images] if args.mode == "patch" else None
    out = Path(args.out)
    parts = out.with_name(out.name + ".parts")
    _prepare_parts(parts, _config(args), rank)
    _barrier(world)

    model, tokenizer = load_clip(args.clip_model, args.clip_weights, args.seed)
    model = model.to(device)
    head = clip_image_head(model.visual)
    tail = clip_image_tail(model.visual, pool_to=args.pool_to or None)
    prompts = PromptTargets(model, tokenizer, args.templates)

    chunks = [images[k : k + args.batch_size] for k in range(0, len(images), args.batch_size)]
    todo = [k for k in range(len(chunks)) if k % world == rank and not (parts / f"chunk-{k:06d}.safetensors").exists()]
    if args.max_chunks is not None:
        todo = todo[: args.max_chunks]
    done_before = sum((parts / f"chunk-{k:06d}.safetensors").exists() for k in range(len(chunks)))
    _log(rank, f"mining {len(images)} images in {len(chunks)} chunks on {world} process(es), {done_before} done before")
    progress = _progress(rank, len(todo))
    for k in todo:
        started = time.perf_counter()
        result = _mine_chunk(k, chunks[k], labels, args, head, tail, prompts, device)
        tmp = parts / f"chunk-{k:06d}.tmp"
        save_file({name: t.contiguous().cpu() for name, t in result.items()}, str(tmp))
        os.replace(tmp, parts / f"chunk-{k:06d}.safetensors")  # atomic: a chunk file is complete or absent
        if progress is not None:
            progress.set_postfix(styles_per_s=f"{len(result['mean']) / (time.perf_counter() - started):.2f}")
            progress.update(1)
    if progress is not None:
        progress.close()
    _barrier(world)
    if rank == 0:
        finished = [parts / f"chunk-{k:06d}.safetensors" for k in range(len(chunks))]
        if all(p.exists() for p in finished):
            results = [load_file(str(p)) for p in finished]
            _write_bank(out, results, args)
            shutil.rmtree(parts)
            _log(rank, f"wrote {out}")
        else:
            missing = sum(not p.exists() for p in finished)
            _log(rank, f"stopped with {missing} chunks left; run the same command again to continue")
    _barrier(world)
    return 0


def _progress(rank: int, total: int):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="mining")


class PromptTargets:
    """Text targets of descriptions, encoded once each (FAMix reuses '<style> <class>' pairs across batches)."""

    def __init__(self, model, tokenizer, templates: int | None):
        from styleda_fast.prompts import IMAGENET_TEMPLATES

        self.model, self.tokenizer = model, tokenizer
        self.templates = IMAGENET_TEMPLATES[:templates] if templates else IMAGENET_TEMPLATES
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, descriptions: list[str]) -> torch.Tensor:
        from styleda_fast.text import encode_prompts

        new = [d for d in dict.fromkeys(descriptions) if d not in self.cache]
        if new:
            for d, t in zip(new, encode_prompts(self.model, self.tokenizer, new, self.templates)):
                self.cache[d] = t
        return torch.stack([self.cache[d] for d in descriptions])


def _mine_chunk(k, files, labels, args, head, tail, prompts, device) -> dict[str, torch.Tensor]:
    from styleda_fast.mining import derived_seed, mine_styles

    images = torch.stack([_read_image(p, args.crop) for p in files]).to(device)
    with torch.no_grad():
        features = head(images).float()
    seed = derived_seed(args.seed, k)
    if args.mode == "global":
        content = features
        targets = prompts([args.prompt]).expand(len(files), -1)
        class_ids = torch.full((len(files),), 255, dtype=torch.int64)
    else:
        first = k * args.batch_size
        label_maps = torch.stack([_read_labels(labels[first + i], args.crop) for i in range(len(files))])
        content, class_ids = _select(features, label_maps.to(device), args.grid, f"chunk {k}")
        generator = torch.Generator().manual_seed(seed)
        from styleda_fast.prompts import famix_descriptions

        targets = prompts(famix_descriptions(class_ids.tolist(), generator=generator))
    result = mine_styles(
        tail, content, targets.to(device), steps=args.steps, feature_noise=args.feature_noise, seed=seed,
        clamp_std=args.mode == "global",
    )  # fmt: skip
    return {"mean": result.mean, "std": result.std, "class_ids": class_ids.cpu(), "loss": result.loss}


def _select(features, label_maps, grid, where):
    from styleda_fast.mining import select_patches

    try:
        selection = select_patches(features, label_maps, grid=grid)
    except ValueError as exc:
        raise MineError(f"{where}: {exc}") from exc
    return selection.content, selection.class_ids


def _write_bank(out: Path, results: list[dict], args) -> None:
    from styleda_fast.prompts import CITYSCAPES_CLASSES, FAMIX_STYLES
    from styleda_fast.style_bank import StyleBank

    mean = torch.cat([r["mean"] for r in results])
    std = torch.cat([r["std"] for r in results])
    class_ids = torch.cat([r["class_ids"] for r in results])
    about = {"backbone": args.clip_model, "layer": "layer1"}
    if args.mode == "global":  # PODA: class-less, every style in the fallback list
        bank = StyleBank(mean.shape[1], num_classes=0, prompts={"255": args.prompt}, **about)
    else:
        prompts = {name: f"<one of {len(FAMIX_STYLES)} FAMix styles> {name}" for name in CITYSCAPES_CLASSES}
        bank = StyleBank(mean.shape[1], prompts={**prompts, "255": "photo"}, **about)
    bank.add(mean, std, class_ids)
    bank.save(out)
