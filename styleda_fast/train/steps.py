"""What the PODA and FAMix training-step jobs share (:mod:`.poda_train_step`, :mod:`.famix_train_step`): their
common command-line options, the :class:`Job` of one step, the augmentation choice and the timed step loop."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from styleda_fast.bank import StyleBank
from styleda_fast.memory import SavedBytes, format_bytes, state_bytes
from styleda_fast.nn import StyleBankAugment, insert
from styleda_fast.train import deeplab_clip as dc


def add_step_arguments(p: argparse.ArgumentParser, *, recipe: str, lr: float, lr_help: str, total_iters: int):
    """The options both step jobs take (the crop and the recipe's own options are added by its module)."""
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clip-weights", default="none", help="none (random, offline), openai, or a state dict PATH")
    p.add_argument("--bank", help=f"StyleBank file of {recipe.upper()} styles (default: a random bank)")
    p.add_argument("--aug", choices=["ours", "public", "none"], default="ours", help="augmentation (default ours)")
    p.add_argument("--in-place", action="store_true", help="augment the layer1 output in place")
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--total-iters", type=int, default=total_iters, help=f"poly schedule length (default {total_iters})")
    p.add_argument("--steps", type=int, default=1, help="training steps to run (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="model dtype (tests)")


def check_step_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.in_place and args.aug != "ours":
        p.error("--in-place is an option of --aug ours")


@dataclasses.dataclass
class Job:
    """Everything one training step uses."""

    model: dc.SegmentationModel
    aug: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    images: Tensor
    labels: Tensor
    bf16: bool = False


def attach_augmentation(model: dc.SegmentationModel, bank: StyleBank, recipe: str, args) -> nn.Module | None:
    """The augmentation ``--aug`` / ``--in-place`` ask for (``recipe``: ``"poda"`` or ``"famix"``), inserted after
    ``backbone.layer1``; ``None`` for ``--aug none``."""
    if args.aug == "ours" and args.in_place:
        aug = dc.InPlaceBankAugment(bank, recipe, seed=args.seed)
    elif args.aug == "ours":
        aug = getattr(StyleBankAugment, recipe)(bank, generator=args.seed)
    elif args.aug == "public":
        aug = {"poda": dc.PublicPodaTransfer, "famix": dc.PublicFamixTransfer}[recipe](bank, seed=args.seed)
    else:
        return None
    insert(model, "backbone.layer1", aug)
    return aug


def forward_backward(job: Job, forward_loss: Callable[[Job], Tensor]) -> Tensor:
    """Gradients of one step (no update); returns the loss."""
    job.optimizer.zero_grad(set_to_none=True)
    loss = forward_loss(job)
    loss.backward()
    job.model.backbone.after_backward()
    return loss.detach()


def step(job: Job, forward_loss: Callable[[Job], Tensor]) -> Tensor:
    """One training step: forward, backward, SGD update, schedule; returns the loss."""
    loss = forward_backward(job, forward_loss)
    job.optimizer.step()
    job.scheduler.step()
    return loss


def run_steps(args: argparse.Namespace, job: Job, forward_loss: Callable) -> dict:
    """``--steps`` training steps with their times, then what autograd keeps for backward in one more forward."""
    for k in range(args.steps):
        start = time.perf_counter()
        loss = step(job, forward_loss)
        if job.images.device.type == "cuda":
            torch.cuda.synchronize()
        print(f"step {k + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.2f} s)")
    saved = SavedBytes(exclude=job.model.parameters())
    loss = forward_loss(job, saved)  # one more forward, to count what autograd keeps (no backward)
    state = state_bytes(job.model, job.optimizer)
    print(
        f"held for backward: {format_bytes(saved.bytes)} saved activations + {format_bytes(state['total'])} "
        f"parameters, buffers, gradients and momentum (crop {args.crop}, batch {args.batch})"
    )
    return {"loss": loss.item(), "saved_bytes": saved.bytes, "state_bytes": state["total"]}
