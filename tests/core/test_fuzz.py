"""Fuzz comparison of the style-mix operators against the float64 reference: random shapes (1-pixel patches, a grid
equal to the size, many channels on tiny planes), both layouts, every dtype, per-image or per-patch styles, with or
without mixing and ReLU, forward and every gradient. The seed of a failing case is in the message; rerun one with
``STYLEDA_FAST_FUZZ_SEED=<seed> python -m pytest tests/core/test_fuzz.py``."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, assert_close, available_backends, backend_device, kernel_dtypes

from styleda_fast import local_style_mix, patch_mean_std, use_backend
from styleda_fast.ops.style_mix import reference

KERNEL_BACKENDS = [b for b in available_backends() if b != "reference"]
# cases per backend: the Triton interpreter runs one program at a time, so it gets fewer
CASES = {"cpp": 150, "triton": 25}


def _draw_case(seed: int, backend: str) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def randint(low, high):
        return int(torch.randint(low, high + 1, (), generator=gen))

    kind = randint(0, 3)
    if kind == 0:  # 1-pixel patches: grid equal to the size
        H, W = randint(1, 6), randint(1, 6)
        grid = (H, W)
    elif kind == 1:  # many channels on tiny planes
        H, W = randint(1, 3), randint(1, 3)
        grid = (randint(1, H), randint(1, W))
    else:
        H, W = randint(1, 23), randint(1, 23)
        grid = (randint(1, min(H, 5)), randint(1, min(W, 5)))
    C = randint(40, 130) if kind == 1 else randint(1, 9)
    dtypes = kernel_dtypes(backend)
    return {
        "shape": (randint(1, 3), C, H, W),
        "grid": grid,
        "dtype": dtypes[randint(0, len(dtypes) - 1)],
        "channels_last": bool(randint(0, 1)),
        "per_patch": bool(randint(0, 1)),
        "mix": bool(randint(0, 1)),
        "activation": "relu" if randint(0, 1) else None,
        "mean": float(torch.randn((), generator=gen) * 4),
        "generator": gen,
    }


def _run_case(seed: int, backend: str) -> None:
    case = _draw_case(seed, backend)
    gen, (B, C, H, W), grid, dtype = case["generator"], case["shape"], case["grid"], case["dtype"]
    device = backend_device(backend)
    x64 = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64) * 2 + case["mean"]
    style_shape = (B, C, *grid) if case["per_patch"] else (B, C)
    sm64 = torch.randn(style_shape, generator=gen, dtype=torch.float64)
    ss64 = torch.rand(style_shape, generator=gen, dtype=torch.float64) + 0.5
    mix64 = torch.rand(B, C, generator=gen, dtype=torch.float64) if case["mix"] else None
    x = x64.to(dtype)  # the reference runs on the rounded input
    x_kernel = x.to(device)
    if case["channels_last"]:
        x_kernel = x_kernel.contiguous(memory_format=torch.channels_last)
    leaves = [t.detach().clone().to(device).requires_grad_() for t in (x_kernel, sm64, ss64)]
    mix = mix64.detach().clone().to(device).requires_grad_() if mix64 is not None else None
    what = f"seed {seed} ({backend}): {case['shape']} grid {grid} {dtype} channels_last={case['channels_last']}"
    with use_backend(backend):
        y = local_style_mix(leaves[0], leaves[1], leaves[2], grid=grid, mix=mix, activation=case["activation"])
        mean, std = patch_mean_std(x_kernel, grid)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in (x, sm64, ss64)]
    ref_mix = mix64.detach().clone().requires_grad_() if mix64 is not None else None

    def full(t):
        return (t[:, :, None, None] if t.dim() == 2 else t).expand(B, C, *grid)

    expected = reference.local_style_mix(
        ref_leaves[0],
        full(ref_leaves[1]),
        full(ref_leaves[2]),
        grid,
        None if ref_mix is None else full(ref_mix),
        case["activation"],
        1e-5,
    )
    assert y.dtype == dtype and y.shape == x.shape, what
    assert_close(y, expected, TOLERANCE[dtype] * 4, f"forward, {what}")
    ref_mean, ref_std = reference.patch_mean_std(x.double(), grid)
    assert_close(mean, ref_mean, TOLERANCE[dtype], f"mean, {what}")
    assert_close(std, ref_std, TOLERANCE[dtype] * 4, f"std, {what}")
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (y.double() * weight.to(device)).sum().backward()
    (expected * weight).sum().backward()
    # grad x cancels to ~eps/var on tiny patches (a normalization over n pixels has n-1 degrees of freedom):
    # rounding is relative to the terms that cancel, |grad_out| * target std / own std
    term = weight.abs().max().item() * ss64.max().item() / ref_std.min().item()
    names = ("x", "style_mean", "style_std")
    for name, got, ref in zip(names, leaves, ref_leaves):
        scale = term if name == "x" else 0.0
        assert_close(got.grad, ref.grad, GRAD_TOLERANCE[dtype] * 10, f"grad {name}, {what}", scale)
    if mix is not None:
        assert_close(mix.grad, ref_mix.grad, GRAD_TOLERANCE[dtype] * 10, f"grad mix, {what}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fuzz_style_mix_against_float64_reference(backend):
    fixed = os.environ.get("STYLEDA_FAST_FUZZ_SEED")
    base = int(fixed) if fixed else int(torch.randint(0, 2**31, ()).item())
    seeds = [base] if fixed else [base + k for k in range(CASES.get(backend, 25))]
    for seed in seeds:
        try:
            _run_case(seed, backend)
        except AssertionError as error:
            raise AssertionError(f"{error}\nreproduce with STYLEDA_FAST_FUZZ_SEED={seed}") from None
