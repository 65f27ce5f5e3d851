"""``local_style_mix_grad_x``: grad_x of the style transfer when the patch statistics also receive gradients from
elsewhere (DSU's targets depend on the statistics of the whole batch), given the per-patch sums of a first backward
pass. Checked on every kernel backend (tile loops included on Triton) against float64 autograd of the reference:
the loss ``<y, g> + <mean, extra_mean> + <std, extra_std>`` has exactly that gradient."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_TOLERANCE, assert_close

from styleda_fast import use_backend
from styleda_fast.core.backend import run_op
from styleda_fast.devtools.testing import available_backends, backend_device
from styleda_fast.ops.style_mix import _ops as ops
from styleda_fast.ops.style_mix import reference

KERNEL_BACKENDS = [b for b in available_backends() if b != "reference"]
# (backend, tile limit): Triton also with 16-element tiles, so that its tile loops run
BACKEND_TILES = [(b, None) for b in KERNEL_BACKENDS] + [("triton", 16)] * ("triton" in KERNEL_BACKENDS)
CASES = [  # shape, grid, mix, relu, channels_last
    ((2, 3, 9, 11), (1, 1), False, False, False),
    ((3, 4, 13, 10), (3, 2), True, True, False),
    ((2, 5, 8, 12), (2, 3), True, False, True),
    ((1, 2, 3, 3), (3, 3), False, True, False),  # 1-pixel patches
]


def _inputs(shape, grid, use_mix, channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    params = (B, C, *grid)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target_mean = torch.randn(params, generator=gen, dtype=torch.float64)
    target_std = torch.rand(params, generator=gen, dtype=torch.float64) + 0.5
    mix = torch.rand(params, generator=gen, dtype=torch.float64) if use_mix else None
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    extra_mean = torch.randn(params, generator=gen, dtype=torch.float64)
    extra_std = torch.randn(params, generator=gen, dtype=torch.float64)
    return x, target_mean, target_std, mix, grad_out, extra_mean, extra_std


def _expected(x, target_mean, target_std, mix, grad_out, extra_mean, extra_std, grid, relu):
    leaf = x.detach().clone().requires_grad_()
    y = reference.local_style_mix(leaf, target_mean, target_std, grid, mix, "relu" if relu else None, 1e-5)
    mean, std = reference.patch_mean_std(leaf, grid, 1e-5)
    ((y * grad_out).sum() + (mean * extra_mean).sum() + (std * extra_std).sum()).backward()
    return leaf.grad


@pytest.mark.parametrize(("backend", "tile_elements"), BACKEND_TILES)
@pytest.mark.parametrize(("shape", "grid", "use_mix", "relu", "channels_last"), CASES)
@pytest.mark.usefixtures("poison_fresh_memory")
def test_matches_autograd_of_the_reference(backend, shape, grid, use_mix, relu, channels_last, tile_elements,
                                           monkeypatch):  # fmt: skip
    if tile_elements is not None:
        from styleda_fast.ops.style_mix import _triton

        monkeypatch.setattr(_triton, "MAX_TILE_ELEMENTS", tile_elements)
    device = backend_device(backend)
    x, tm, ts, mix, g, extra_mean, extra_std = (
        None if t is None else t.to(device) for t in _inputs(shape, grid, use_mix, channels_last)
    )
    expected = _expected(x.cpu(), tm.cpu(), ts.cpu(), None if mix is None else mix.cpu(), g.cpu(), extra_mean.cpu(),
                         extra_std.cpu(), grid, relu)  # fmt: skip
    with use_backend(backend):
        _, mean, std = run_op(ops.LOCAL_STYLE_MIX, x, tm, ts, mix, *grid, relu, 1e-5)
        _, sum_grad, sum_grad_xn = run_op(ops.LOCAL_STYLE_MIX_BACKWARD, g, x, mean, std, tm, ts, mix, relu, False)
        share = mix if mix is not None else torch.zeros_like(mean)  # the mixing weight's share reaches the stats
        grad_mean = share * sum_grad + extra_mean
        grad_std = share * sum_grad_xn + extra_std
        grad_x = run_op(
            ops.LOCAL_STYLE_MIX_GRAD_X, g, x, mean, std, tm, ts, mix, sum_grad, sum_grad_xn, grad_mean, grad_std, relu
        )
    assert grad_x.stride() == x.stride()
    assert_close(grad_x.cpu(), expected, GRAD_TOLERANCE[torch.float64])


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_bad_arguments_name_the_argument(backend):
    device = backend_device(backend)
    x, tm, ts, mix, g, extra_mean, extra_std = (t.to(device) for t in _inputs((2, 3, 6, 6), (2, 2), True, False))
    with use_backend(backend):
        _, mean, std = run_op(ops.LOCAL_STYLE_MIX, x, tm, ts, mix, 2, 2, False, 1e-5)
        args = [g, x, mean, std, tm, ts, mix, mean, std, extra_mean, extra_std, False]
        for index, name in ((7, "sum_grad"), (8, "sum_grad_xn"), (9, "grad_mean"), (10, "grad_std")):
            bad = list(args)
            bad[index] = args[index][:, :2].contiguous()
            with pytest.raises(ValueError, match=name):
                run_op(ops.LOCAL_STYLE_MIX_GRAD_X, *bad)


def test_opcheck():
    x, tm, ts, mix, g, extra_mean, extra_std = _inputs((2, 3, 6, 5), (2, 1), True, False)
    _, mean, std = torch.ops.styleda_fast.local_style_mix(x, tm, ts, mix, 2, 1, True, 1e-5)
    torch.library.opcheck(
        torch.ops.styleda_fast.local_style_mix_grad_x,
        (g, x, mean, std, tm, ts, mix, mean.clone(), std.clone(), extra_mean, extra_std, True),
    )
