"""The C++ style-mix kernels on outputs over 16 MB (larger than this machine's L2 and half its L3, as at the FAMix
shape), against the float64 plain-PyTorch reference: odd widths, grids that do not divide the size, NCHW and
channels_last, into a poisoned preallocated ``out=``, in place, and the backward's grad_x. Run the file with
STYLEDA_FAST_CPU_ISA=generic as well to cover the portable variant (the ISA is chosen once per process)."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, assert_close

from styleda_fast.ops.style_mix import reference

ops = torch.ops.styleda_fast
LARGE_BYTES = 16 << 20
CASES = [  # shape, grid, dtype, channels_last: each just over LARGE_BYTES
    ((1, 3, 769, 911), (3, 2), torch.float64, False),
    ((2, 5, 653, 659), (3, 3), torch.float32, False),
    ((1, 67, 251, 253), (2, 3), torch.float32, True),
    ((3, 2, 619, 1151), (1, 1), torch.float32, False),  # grid 1: long contiguous rows
]


def _inputs(shape, grid, dtype, channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    params = (B, C, *grid)
    tm = torch.randn(params, generator=gen, dtype=torch.float64).to(acc)
    ts = (torch.rand(params, generator=gen, dtype=torch.float64) + 0.5).to(acc)
    mix = torch.rand(params, generator=gen, dtype=torch.float64).to(acc)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, tm, ts, mix, grad_out


def _ids(case):
    shape, grid, dtype, cl = case
    return f"{shape}-g{grid[0]}x{grid[1]}-{str(dtype)[6:]}-{'cl' if cl else 'nchw'}"


@pytest.mark.parametrize(("shape", "grid", "dtype", "channels_last"), CASES, ids=[_ids(c) for c in CASES])
def test_large_forward_into_poisoned_out_and_in_place(shape, grid, dtype, channels_last):
    x, tm, ts, mix, _ = _inputs(shape, grid, dtype, channels_last)
    assert x.numel() * x.element_size() >= LARGE_BYTES
    expected = reference.local_style_mix(x.double(), tm.double(), ts.double(), grid, mix.double())
    out = torch.full_like(x, float("nan"))
    ops.local_style_mix_into(x, tm, ts, mix, *grid, True, 1e-5, out)
    assert out.stride() == x.stride()
    assert_close(out, expected, TOLERANCE[dtype], "out=")
    fresh, mean, std = ops.local_style_mix(x, tm, ts, mix, *grid, True, 1e-5)
    assert torch.equal(fresh, out)
    ref_mean, ref_std = reference.patch_mean_std(x.double(), grid, 1e-5)
    assert_close(mean, ref_mean, TOLERANCE[dtype], "mean")
    assert_close(std, ref_std, TOLERANCE[dtype], "std")
    ops.local_style_mix_into(x, tm, ts, mix, *grid, True, 1e-5, x)  # in place: reads each row before it is written
    assert torch.equal(x, out)


@pytest.mark.parametrize(("shape", "grid", "dtype", "channels_last"), CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.usefixtures("poison_fresh_memory")
def test_large_backward_grad_x(shape, grid, dtype, channels_last):
    x, tm, ts, mix, g = _inputs(shape, grid, dtype, channels_last)
    leaf = x.detach().double().clone().requires_grad_()
    y = reference.local_style_mix(leaf, tm.double(), ts.double(), grid, mix.double())
    (y * g.double()).sum().backward()
    _, mean, std = ops.local_style_mix(x, tm, ts, mix, *grid, True, 1e-5)
    grad_x, sum_g, sum_gxn = ops.local_style_mix_backward(g, x, mean, std, tm, ts, mix, True, True)
    assert grad_x.stride() == x.stride()
    assert_close(grad_x, leaf.grad, GRAD_TOLERANCE[dtype], "grad_x")
    # grad_x alone from the sums, with the mixing weight's share of them as the statistics' whole gradients
    again = ops.local_style_mix_grad_x(g, x, mean, std, tm, ts, mix, sum_g, sum_gxn, mix * sum_g, mix * sum_gxn, True)
    assert_close(again, leaf.grad, GRAD_TOLERANCE[dtype], "local_style_mix_grad_x")
    # patch_mean_std backward: the gradients of the statistics alone
    gm, gs = torch.randn_like(mean), torch.randn_like(std)
    leaf2 = x.detach().double().clone().requires_grad_()
    m2, s2 = reference.patch_mean_std(leaf2, grid, 1e-5)
    ((m2 * gm.double()).sum() + (s2 * gs.double()).sum()).backward()
    grad_stats = ops.patch_mean_std_backward(gm, gs, x, mean, std)
    assert_close(grad_stats, leaf2.grad, GRAD_TOLERANCE[dtype], "patch_mean_std_backward", scale=1.0)
