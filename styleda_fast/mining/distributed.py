"""torchrun: one process group (gloo on the CPU, NCCL on GPUs), and steps that every rank takes together."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from styleda_fast.mining.config import MineError


class OtherRankFailed(Exception):
    """Another torchrun rank stopped; it reported why."""


def start(device: str):
    """(rank, world_size, device); initializes torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda")
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return rank, world, dev
    return 0, 1, torch.device(device)


def all_ok(world: int, device: torch.device, ok: bool) -> bool:
    """Whether every rank is ``ok`` (one all-reduce); a single process is its own answer."""
    if world == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def together(world: int, device: torch.device, step):
    """Run ``step()`` on every rank; if it fails on any rank, every rank stops (the failing one reports)."""
    try:
        result = step()
    except MineError:
        all_ok(world, device, False)
        raise
    if not all_ok(world, device, True):
        raise OtherRankFailed
    return result


def barrier(world: int) -> None:
    """Wait for every rank (nothing for a single process)."""
    if world > 1:
        dist.barrier()


def end(world: int) -> None:
    """Leave the process group (torchrun runs)."""
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
