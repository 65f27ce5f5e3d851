"""Cityscapes -> ACDC: train DeepLabv3+ on CLIP RN50 with a style augmentation, evaluate mIoU per ACDC condition.

The study of PODA and FAMix as one job: train on a Cityscapes-like folder with one augmentation of the ``layer1``
features, drawn from a style bank file, then evaluate on the Cityscapes val split and on each ACDC condition, and
write ``results.md`` and ``results.json`` (mIoU, per-class IoU, the options, the bank's provenance).

Augmentations (``--aug``), all inserted after ``backbone.layer1`` (``styleda_fast.nn.StyleBankAugment``):

* ``none``: the source-only baseline;
* ``poda``: PODA's global transfer, a style per image from the whole bank (``StyleBank.sample_any``), ``U[0, 1)``
  mixing: a bank from ``styleda-fast mine --mode global --prompt "driving at night"`` or a PODA folder of pickles;
* ``famix``: FAMix's local transfer, 3x3 patches, each with a style of its dominant class (``StyleBank.sample``,
  FAMix's fallback class), ``Beta(0.1, 0.1)`` mixing, through ``local_style_mix``: a bank from ``mine --mode patch
  --class-styles`` or FAMix's ``saved_params.pkl``;
* ``zero-shot-local``: the same local transfer with a bank of class-aware styles toward the target domain (``mine
  --mode patch --prompt "driving at night" --labels DIR``, optionally with ``--text-noise`` / ``--feature-noise``).

Bank files: a ``StyleBank`` file (``StyleBank.load``), a ``.pkl`` / ``.pickle`` FAMix pickle
(``StyleBank.from_famix_pickle``) or a folder of PODA pickles (``StyleBank.from_poda_dir``).

Training (the same for every augmentation, so that an ablation compares augmentations only): FAMix's recipe, the
stem and ``layer1``..``layer3`` frozen, ``layer4`` (``--finetune``) and the head trained, SGD (momentum 0.9, weight
decay 1e-4, ``--lr`` for the head, a tenth of it for the backbone), poly schedule over ``--iters``, cross-entropy
with label smoothing (ignore 255), random crops and flips. A checkpoint (model, optimizer, schedule, every random
generator of every process, the iteration) is written atomically every ``--checkpoint-every`` iterations to
``--out``; rerunning the command resumes from it (with the same training options) and continues the uninterrupted
run exactly (on one process; with several, each process's generators are restored too).

Distributed: ``torchrun --nproc-per-node N -m styleda_fast.train.study ...`` (DistributedDataParallel, gloo on CPU,
nccl on GPU, a ``DistributedSampler``, ``--batch`` per process; only rank 0 writes). Memory: ``--in-place``,
``--checkpoint`` (``layer4`` recomputed in backward) and ``--bf16`` (autocast, only where bfloat16 is native: CUDA
or a CPU with avx512_bf16 / amx_bf16); the peak memory is printed and recorded.

mIoU: a confusion matrix (``torch.bincount``) per split, summed over processes; a class absent from both the
prediction and the ground truth of a split is left out of that split's mean (the table lists them).

Bad input (a missing folder, a layout mismatch, an unknown ``--aug``, a bank without classes for a local
augmentation, ...) prints one line and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from styleda_fast import CITYSCAPES_CLASSES, StyleBank
from styleda_fast.memory import format_bytes
from styleda_fast.nn import StyleBankAugment, insert
from styleda_fast.train import data
from styleda_fast.train import deeplab_clip as dc
from styleda_fast.train.metrics import confusion_matrix, iou_per_class, mean_iou

AUGS = ("none", "poda", "famix", "zero-shot-local")
LOCAL_AUGS = ("famix", "zero-shot-local")
# The options that define the trained model: a run resumes only with the same values.
TRAINING_OPTIONS = (
    "aug", "bank", "pretrained", "iters", "batch", "crop", "scale", "lr", "finetune", "label_smoothing",
    "checkpoint", "bf16", "in_place", "seed",
)  # fmt: skip
MIOU_NOTE = "classes absent from both the prediction and the ground truth of a split are left out of its mean"


class StudyError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage and the message
        raise StudyError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cityscapes_to_acdc",
        description=__doc__.split("\n")[0],
        epilog="The augmentations, folder layouts and the whole ablation: docs/experiments.md.",
    )
    p.add_argument("--cityscapes", metavar="DIR", required=True, help="Cityscapes-like folder (leftImg8bit/, gtFine/)")
    p.add_argument("--acdc", metavar="DIR", help="ACDC-like folder (rgb_anon/, gt/); default: Cityscapes val only")
    p.add_argument("--conditions", nargs="+", default=list(data.ACDC_CONDITIONS), choices=data.ACDC_CONDITIONS)
    p.add_argument("--out", metavar="DIR", required=True, help="folder of the checkpoint and the results")
    p.add_argument("--aug", metavar="NAME", default="none", help=f"augmentation: {', '.join(AUGS)} (default none)")
    p.add_argument("--bank", metavar="FILE", help="style bank: StyleBank file, FAMix .pkl, or PODA folder of pickles")
    p.add_argument("--pretrained", metavar="WEIGHTS", default="openai", help="CLIP RN50: openai (default), none, PATH")
    p.add_argument("--iters", metavar="N", type=int, default=40_000, help="training iterations (default 40000)")
    p.add_argument("--batch", metavar="N", type=int, default=8, help="images per step and process (default 8)")
    p.add_argument("--crop", metavar="PX", type=int, default=768, help="training crop, a multiple of 16 (default 768)")
    p.add_argument("--scale", metavar="F", type=float, default=1.0, help="resize training images by this factor first")
    p.add_argument("--eval-scale", metavar="F", type=float, default=1.0, help="resize evaluation inputs (not labels)")
    p.add_argument("--lr", metavar="LR", type=float, default=0.1, help="head lr; the backbone gets lr/10 (default 0.1)")
    p.add_argument("--finetune", choices=["layer4", "layer4.2", "none"], default="layer4", help="trained backbone")
    p.add_argument("--label-smoothing", metavar="EPS", type=float, default=0.1)
    p.add_argument("--checkpoint", action="store_true", help="recompute layer4 in the backward pass")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA, or a CPU with native bf16)")
    p.add_argument("--in-place", action="store_true", help="write the augmentation into the layer1 output")
    p.add_argument("--checkpoint-every", metavar="N", type=int, default=1000, help="iterations between checkpoints")
    p.add_argument("--stop-after", metavar="N", type=int, default=0, help="stop after N iterations; rerun to resume")
    p.add_argument("--log-every", metavar="N", type=int, default=50)
    p.add_argument("--workers", metavar="N", type=int, default=2, help="data loading processes per training process")
    p.add_argument("--device", metavar="DEVICE", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--seed", metavar="SEED", type=int, default=0)
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.aug not in AUGS:
        raise StudyError(f"--aug must be one of {', '.join(AUGS)}, got {args.aug!r}")
    if args.aug == "none" and args.bank:
        raise StudyError("--bank is an option of --aug poda, famix or zero-shot-local")
    if args.aug != "none" and not args.bank:
        raise StudyError(f"--aug {args.aug} needs --bank FILE")
    if args.in_place and args.aug == "none":
        raise StudyError("--in-place is an option of an augmentation (--aug poda, famix or zero-shot-local)")
    if args.batch < 2:  # the head's image-pooling branch normalizes one value per channel and image
        raise StudyError(f"--batch must be >= 2 (BatchNorm of the ASPP image pooling), got {args.batch}")
    for name in ("iters", "checkpoint_every", "log_every"):
        if getattr(args, name) < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("stop_after", "workers"):
        if getattr(args, name) < 0:
            raise StudyError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.crop < 16 or args.crop % 16:
        raise StudyError(f"--crop must be a positive multiple of 16 (output stride 16), got {args.crop}")
    for name in ("scale", "eval_scale", "lr"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise StudyError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0 <= args.label_smoothing < 1:
        raise StudyError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.acdc is None and args.conditions != list(data.ACDC_CONDITIONS):
        raise StudyError("--conditions needs --acdc DIR")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} exists and is not a folder")


def bf16_native(device: torch.device) -> bool:
    """Whether bfloat16 matmuls and convolutions run natively: a CUDA device that supports it, or a CPU with the
    avx512_bf16 or amx_bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def load_bank(path: str, aug: str) -> StyleBank:
    """The bank of ``--bank`` for ``--aug``: its kind from the path, checked against the model and the aug."""
    p = Path(path)
    try:
        if p.is_dir():
            bank = StyleBank.from_poda_dir(p)
        elif not p.is_file():
            raise StudyError(f"--bank {path}: no such file or folder")
        elif p.suffix in (".pkl", ".pickle"):
            bank = StyleBank.from_famix_pickle(p)
        else:
            bank = StyleBank.load(p)
    except (ValueError, TypeError, OSError) as exc:
        raise StudyError(f"--bank {path}: {exc}") from None
    if bank.channels != 256:
        raise StudyError(f"--bank {path}: styles of {bank.channels} channels; CLIP RN50 layer1 has 256")
    if len(bank) == 0:
        raise StudyError(f"--bank {path}: the bank holds no styles")
    if aug in LOCAL_AUGS:
        if bank.num_classes == 0:
            raise StudyError(f"--bank {path}: --aug {aug} needs a bank with classes; this one has none (PODA's?)")
        if tuple(bank.class_names) != tuple(CITYSCAPES_CLASSES):
            raise StudyError(f"--bank {path}: --aug {aug} needs the 19 Cityscapes classes, got {bank.num_classes}")
    return bank


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def choose_device(name: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise StudyError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise StudyError("--device cuda: no CUDA device here")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group (``WORLD_SIZE > 1``): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist(0, 1, device)
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


# ---------------------------------------------------------------------------------------------- model


@dataclasses.dataclass
class Trainer:
    model: dc.SegmentationModel  # the model itself (``ddp`` wraps it when distributed)
    ddp: nn.Module
    aug: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module


def build_trainer(args, bank: StyleBank | None, dist: Dist, visual: nn.Module | None = None) -> Trainer:
    """The model (the same initial weights on every process), its augmentation, optimizer and schedule."""
    if visual is None:
        from styleda_fast.mining.command import MineError

        try:
            visual = dc.load_visual(args.pretrained, seed=args.seed)
        except MineError as exc:
            raise StudyError(f"--pretrained {args.pretrained}: {exc}") from None
    torch.manual_seed(args.seed)
    model = dc.SegmentationModel(visual, checkpoint_layer4=args.checkpoint)
    backbone = model.backbone
    frozen = [backbone.stem, backbone.layer1, backbone.layer2, backbone.layer3]
    frozen += {"layer4": [], "layer4.2": [backbone.layer4[0], backbone.layer4[1]], "none": [backbone.layer4]}[
        args.finetune
    ]
    dc.freeze(model, *frozen)
    model.to(dist.device).train()
    aug = None
    if bank is not None:
        recipe = "poda" if args.aug == "poda" else "famix"
        seed = args.seed + 1000 * dist.rank  # each process its own draws
        bank = bank.to(dist.device)
        if args.in_place:
            aug = dc.InPlaceBankAugment(bank, recipe, seed=seed)
        else:
            aug = getattr(StyleBankAugment, recipe)(bank, generator=seed)
        insert(model, "backbone.layer1", aug)
    torch.manual_seed(args.seed + dist.rank)  # the head's dropout
    groups = [{"params": model.classifier.parameters(), "lr": args.lr}]
    trained = [p for p in backbone.parameters() if p.requires_grad]
    if trained:
        groups.insert(0, {"params": trained, "lr": 0.1 * args.lr})
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = dc.poly_schedule(optimizer, args.iters)
    criterion = nn.CrossEntropyLoss(ignore_index=data.IGNORE, label_smoothing=args.label_smoothing)
    ddp: nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    return Trainer(model, ddp, aug, optimizer, scheduler, criterion)


# ---------------------------------------------------------------------------------------------- checkpoints


def save_atomic(write, path: Path) -> None:
    """Write ``path`` through ``write(tmp_path)`` into a temporary file of the same folder, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rng_state(trainer: Trainer, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if trainer.aug is not None:
        state["aug"] = trainer.aug.generator.get_state()
    return state


def _set_rng_state(trainer: Trainer, device: torch.device, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if trainer.aug is not None and "aug" in state:
        trainer.aug.generator.set_state(state["aug"])


def save_checkpoint(path: Path, trainer: Trainer, iteration: int, options: dict, dist: Dist) -> None:
    """Rank 0 writes model, optimizer, schedule, iteration, options and every process's generators."""
    rng = _rng_state(trainer, dist.device)
    if dist.world > 1:
        import torch.distributed as tdist

        states = [None] * dist.world
        tdist.all_gather_object(states, {k: v.cpu() for k, v in rng.items()})
    else:
        states = [rng]
    if dist.main:
        state = {
            "iteration": iteration,
            "options": options,
            "world_size": dist.world,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "rng": states,
        }
        save_atomic(lambda tmp: torch.save(state, tmp), path)
    if dist.world > 1:
        torch.distributed.barrier()


def read_checkpoint(path: Path, options: dict) -> dict | None:
    """The checkpoint in ``path`` (None when there is none), refused when its training options differ."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["options"]
    except Exception as exc:  # a truncated or foreign file
        raise StudyError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    differ = [k for k in TRAINING_OPTIONS if saved.get(k) != options.get(k)]
    if differ:
        k = differ[0]
        raise StudyError(
            f"{path} is a run with other options ({k}: {saved.get(k)!r} there, {options.get(k)!r} now); "
            "rerun with its options or use another --out"
        )
    return state


def restore(state: dict | None, trainer: Trainer, dist: Dist) -> int:
    """Put a checkpoint's state into ``trainer``; returns the iteration to continue from (0 without one)."""
    if state is None:
        return 0
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if state["world_size"] == dist.world:
        _set_rng_state(trainer, dist.device, state["rng"][dist.rank])
    elif dist.main:
        print(f"note: the checkpoint ran on {state['world_size']} processes, this run on {dist.world}: "
              "the continuation draws other random numbers than an uninterrupted run")  # fmt: skip
    return state["iteration"]


# ---------------------------------------------------------------------------------------------- training


class _Indices(Sampler):
    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train(args, trainer: Trainer, dataset: data.SegmentationFolder, dist: Dist, out: Path, options: dict,
          resumed: dict | None = None) -> bool:  # fmt: skip
    """Train from ``resumed`` (a checkpoint's state, or None) to ``--iters``, checkpointing into ``out``; returns
    False when ``--stop-after`` ended it."""
    ckpt = out / "checkpoint.pt"
    it = restore(resumed, trainer, dist)
    if it >= args.iters:
        if dist.main:
            print(f"{ckpt}: training finished ({it} iterations)")
        return True
    sampler = DistributedSampler(dataset, dist.world, dist.rank, shuffle=True, seed=args.seed, drop_last=True)
    per_epoch = len(sampler) // args.batch
    if per_epoch == 0:
        raise StudyError(
            f"--batch {args.batch} x {dist.world} processes is more than the {len(dataset)} training images"
        )
    device, start, ran = dist.device, time.perf_counter(), 0
    if dist.main:
        print(f"training {args.aug} from iteration {it} to {args.iters} ({len(dataset)} images, {per_epoch} "
              f"steps per epoch, {dist.world} process(es) on {device})")  # fmt: skip
    while it < args.iters:
        epoch, offset = divmod(it, per_epoch)
        sampler.set_epoch(epoch)
        dataset.epoch = epoch
        indices = list(sampler)[offset * args.batch : per_epoch * args.batch]
        loader = DataLoader(
            dataset, batch_size=args.batch, sampler=_Indices(indices), drop_last=True, num_workers=args.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(args.seed),  # leaves torch's global generator alone
        )  # fmt: skip
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if trainer.aug is not None and hasattr(trainer.aug, "set_labels"):
                trainer.aug.set_labels(labels)
            trainer.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                logits = trainer.ddp(images)
            loss = trainer.criterion(logits.float(), labels)
            loss.backward()
            trainer.model.backbone.after_backward()
            trainer.optimizer.step()
            trainer.scheduler.step()
            it, ran = it + 1, ran + 1
            if dist.main and (it % args.log_every == 0 or it == args.iters or ran == 1):
                lr = trainer.optimizer.param_groups[-1]["lr"]
                print(f"iter {it}/{args.iters}: loss {loss.item():.4f}, head lr {lr:.3g}, "
                      f"{(time.perf_counter() - start) / ran:.2f} s/iter")  # fmt: skip
            stop = args.stop_after and ran == args.stop_after
            if it % args.checkpoint_every == 0 or it == args.iters or stop:
                save_checkpoint(ckpt, trainer, it, options, dist)
            if stop and it < args.iters:
                if dist.main:
                    print(f"stopped after {ran} iterations at {it}/{args.iters}; rerun the command to resume")
                return False
            if it == args.iters:
                break
    return True


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(args, model: dc.SegmentationModel, pairs, dist: Dist) -> torch.Tensor:
    """The ``(19, 19)`` confusion matrix of ``model`` on ``pairs`` (each process a share, summed)."""
    model.eval()
    dataset = data.SegmentationFolder(pairs, crop=None, scale=args.eval_scale)
    shard = Subset(dataset, list(range(dist.rank, len(dataset), dist.world)))
    loader = DataLoader(shard, batch_size=1, num_workers=args.workers)
    confusion = torch.zeros(data.NUM_CLASSES, data.NUM_CLASSES, dtype=torch.int64, device=dist.device)
    for image, label in loader:
        image, label = image.to(dist.device), label.to(dist.device)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(image)
        if logits.shape[-2:] != label.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear")
        confusion += confusion_matrix(logits.argmax(1), label, data.NUM_CLASSES, data.IGNORE)
    if dist.world > 1:
        torch.distributed.all_reduce(confusion)
    model.train()
    return confusion.cpu()


def split_result(confusion: torch.Tensor, images: int) -> dict:
    ious = iou_per_class(confusion)
    return {
        "miou": mean_iou(confusion),
        "iou": {name: (None if math.isnan(v) else v) for name, v in zip(CITYSCAPES_CLASSES, ious)},
        "left_out": [name for name, v in zip(CITYSCAPES_CLASSES, ious) if math.isnan(v)],
        "images": images,
        "confusion": confusion.tolist(),
    }


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    import resource  # Unix

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "CPU peak RSS of the process"


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def results_markdown(report: dict) -> str:
    splits = report["results"]
    lines = [
        f"# Cityscapes -> ACDC, --aug {report['options']['aug']}",
        "",
        "| split | images | mIoU |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {r['images']} | {_pct(r['miou'])} |" for name, r in splits.items()]
    if "acdc/mean" in report:
        lines.append(f"| ACDC mean of conditions | | {_pct(report['acdc/mean'])} |")
    lines += ["", f"mIoU in %: {MIOU_NOTE} (listed below as `-`).", "", "Per-class IoU (%):", ""]
    lines.append("| split | " + " | ".join(CITYSCAPES_CLASSES) + " |")
    lines.append("|---|" + "---:|" * len(CITYSCAPES_CLASSES))
    lines += [f"| {name} | " + " | ".join(_pct(v) for v in r["iou"].values()) + " |" for name, r in splits.items()]
    peak = report["peak_memory"]
    lines += [
        "",
        f"Trained {report['iterations']} iterations on {report['world_size']} process(es), {report['device']}; "
        f"peak training memory {format_bytes(peak['bytes'])} ({peak['kind']}, the largest of the processes).",
        "",
        "Options:",
        "",
        "```json",
        json.dumps(report["options"], indent=1),
        "```",
        "",
        "Bank:",
        "",
        "```json",
        json.dumps(report["bank"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the job


def run(argv=None, visual: nn.Module | None = None) -> dict | None:
    """The whole job; returns the report (rank 0 after evaluation), or None when ``--stop-after`` stopped it.
    ``visual``: a CLIP image tower used (a copy) instead of loading ``--pretrained``."""
    args = build_parser().parse_args(argv)
    check_args(args)
    device = choose_device(args.device)
    if args.bf16 and not bf16_native(device):
        raise StudyError(f"--bf16 needs native bfloat16 (CUDA, or a CPU with avx512_bf16 or amx_bf16); not on {device}")
    try:
        train_pairs = data.cityscapes_pairs(args.cityscapes, "train")
        evals = {"cityscapes/val": data.cityscapes_pairs(args.cityscapes, "val")}
        for cond in args.conditions if args.acdc else ():
            evals[f"acdc/{cond}"] = data.acdc_pairs(args.acdc, cond)
    except data.DataError as exc:
        raise StudyError(str(exc)) from None
    bank = load_bank(args.bank, args.aug) if args.bank else None
    options = {k: v for k, v in vars(args).items()}
    options["bank"] = str(Path(args.bank).resolve()) if args.bank else None
    resumed = read_checkpoint(Path(args.out) / "checkpoint.pt", options)

    dist = setup_distributed(device)
    out = Path(args.out)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = build_trainer(args, bank, dist, copy.deepcopy(visual) if visual is not None else None)
    dataset = data.SegmentationFolder(train_pairs, crop=args.crop, scale=args.scale, seed=args.seed)
    start = time.perf_counter()
    if not train(args, trainer, dataset, dist, out, options, resumed):
        return None
    train_seconds = time.perf_counter() - start
    peak, kind = peak_memory(device)  # of the training (and, on a CPU, of the model's loading)
    if dist.world > 1:
        peaks = [None] * dist.world
        torch.distributed.all_gather_object(peaks, peak)
    else:
        peaks = [peak]
    if dist.main:
        print(f"peak memory: {format_bytes(max(peaks))} ({kind}, training)")
    if dist.world > 1:  # every process evaluates rank 0's BatchNorm statistics
        for b in trainer.model.buffers():
            torch.distributed.broadcast(b, 0)

    results = {
        name: split_result(evaluate(args, trainer.model, pairs, dist), len(pairs)) for name, pairs in evals.items()
    }
    if not dist.main:
        return None
    conds = [r["miou"] for n, r in results.items() if n.startswith("acdc/")]
    report = {
        "options": options,
        "bank": {
            "path": options["bank"],
            "styles": len(bank) if bank is not None else 0,
            "num_classes": bank.num_classes if bank is not None else None,
            "provenance": getattr(bank, "provenance", {}) if bank is not None else {},
        },
        "iterations": args.iters,
        "world_size": dist.world,
        "device": str(device),
        "train_seconds_this_run": train_seconds,
        "peak_memory": {"bytes": max(peaks), "per_process": peaks, "kind": kind},
        "miou_note": MIOU_NOTE,
        "results": results,
    }
    if conds:
        report["acdc/mean"] = sum(conds) / len(conds)
    for name, r in results.items():
        print(f"{name}: mIoU {_pct(r['miou'])} ({r['images']} images)")
    save_atomic(lambda tmp: tmp.write_text(json.dumps(report, indent=1, default=str) + "\n"), out / "results.json")
    save_atomic(lambda tmp: tmp.write_text(results_markdown(report)), out / "results.md")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return report


def main(argv=None, visual: nn.Module | None = None) -> int:
    """The command line: 0 when done (or stopped by ``--stop-after``), 2 with one line on bad input."""
    try:
        run(argv, visual)
    except (StudyError, data.DataError) as exc:  # a DataError here: a file found unreadable while reading it
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}" if not str(exc).startswith("cityscapes_to_acdc:") else str(exc), file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
