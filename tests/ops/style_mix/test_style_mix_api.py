"""Argument errors, torch.library registration (opcheck), torch.compile and property-based checks."""

from __future__ import annotations

import pytest
import torch
from helpers import TOLERANCE, assert_close
from hypothesis import example, given, settings
from hypothesis import strategies as st

from styleda_fast import local_style_mix, patch_mean_std, use_backend
from styleda_fast.ops.style_mix import reference


def _x(shape=(2, 3, 8, 8), dtype=torch.float32):
    return torch.randn(shape, dtype=dtype) * 2 + 1


def _style(shape=(2, 3)):
    return torch.randn(shape), torch.rand(shape) + 0.5


@pytest.mark.parametrize(
    ("call", "error", "argument"),
    [
        (lambda: local_style_mix(torch.randn(3, 8, 8), *_style()), ValueError, "x"),
        (lambda: local_style_mix([1.0], *_style()), TypeError, "x"),
        (lambda: local_style_mix(torch.ones(2, 3, 8, 8, dtype=torch.int64), *_style()), TypeError, "x"),
        (lambda: local_style_mix(_x(), *_style((2, 4))), ValueError, "style_mean"),
        (lambda: local_style_mix(_x(), torch.randn(2, 3), torch.rand(3)), ValueError, "style_std"),
        (lambda: local_style_mix(_x(), torch.randn(2, 3, 2, 2), torch.rand(2, 3), grid=3), ValueError, "style_mean"),
        (lambda: local_style_mix(_x(), torch.ones(2, 3, dtype=torch.int32), torch.rand(2, 3)), TypeError, "style_mean"),
        (lambda: local_style_mix(_x(), "a", torch.rand(2, 3)), TypeError, "style_mean"),
        (lambda: local_style_mix(_x(), torch.randn(2, 3, device="meta"), torch.rand(2, 3)), ValueError, "style_mean"),
        (lambda: local_style_mix(_x(), *_style(), mix=torch.rand(4, 3)), ValueError, "mix"),
        (lambda: local_style_mix(_x(), *_style(), grid=9), ValueError, "grid"),
        (lambda: local_style_mix(_x(), *_style(), grid=0), ValueError, "grid"),
        (lambda: local_style_mix(_x(), *_style(), grid=(2, 2, 2)), TypeError, "grid"),
        (lambda: local_style_mix(_x(), *_style(), grid=2.0), TypeError, "grid"),
        (lambda: local_style_mix(_x(), *_style(), activation="gelu"), ValueError, "activation"),
        (lambda: local_style_mix(_x(), *_style(), eps=-1.0), ValueError, "eps"),
        (lambda: local_style_mix(_x(), *_style(), out=torch.empty(2, 3, 8, 7)), ValueError, "out"),
        (lambda: local_style_mix(_x(), *_style(), out=torch.empty(2, 3, 8, 8, dtype=torch.float64)), ValueError, "out"),
        (lambda: local_style_mix(_x(), *_style(), out=torch.empty(2, 3, 8, 16)[..., ::2]), ValueError, "out"),
        (lambda: patch_mean_std(_x(), grid=(1, 9)), ValueError, "grid"),
        (lambda: patch_mean_std(torch.randn(8, 8)), ValueError, "x"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, argument):
    with pytest.raises(error, match=rf"\b{argument}\b"):
        call()


def test_out_refuses_inputs_that_need_gradients():
    x = _x().requires_grad_()
    with pytest.raises(ValueError, match="out"):
        local_style_mix(x, *_style(), out=torch.empty(2, 3, 8, 8))
    with torch.no_grad():
        local_style_mix(x, *_style(), out=torch.empty(2, 3, 8, 8))


def test_out_overlapping_x_is_refused():
    base = torch.randn(2, 3, 8, 9)
    with pytest.raises(ValueError, match="out"):
        local_style_mix(base[..., :8], *_style(), out=base[..., 1:])


def test_use_backend_errors():
    with pytest.raises(ValueError, match="name"):
        with use_backend("cuda-magic"):
            pass
    with use_backend("cpp"), pytest.raises(ValueError, match="cpp"):
        local_style_mix(torch.randn(2, 3, 8, 8, device="meta"), *(t.to("meta") for t in _style()))


def test_non_dense_input_is_accepted():
    x = _x((2, 3, 8, 16))[..., ::2]
    sm, ss = _style()
    assert_close(
        local_style_mix(x, sm, ss, grid=2),
        reference.local_style_mix(x.double(), sm[..., None, None].double(), ss[..., None, None].double(), (2, 2)),
        TOLERANCE[torch.float32],
    )


def _samples():
    x = _x((2, 3, 7, 9), torch.float64)
    tm = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    ts = torch.rand(2, 3, 3, 3, dtype=torch.float64) + 0.5
    mix = torch.rand(2, 3, 3, 3, dtype=torch.float64)
    return x, tm, ts, mix


@pytest.mark.parametrize("mixing", [False, True])
def test_opcheck(mixing):
    x, tm, ts, mix = _samples()
    mix = mix if mixing else None
    ops = torch.ops.styleda_fast
    torch.library.opcheck(ops.patch_mean_std, (x, 3, 3, 1e-5))
    torch.library.opcheck(ops.local_style_mix, (x.requires_grad_(), tm, ts, mix, 3, 3, True, 1e-5))
    torch.library.opcheck(ops.local_style_mix_into, (x.detach(), tm, ts, mix, 3, 3, True, 1e-5, torch.empty_like(x)))
    mean, std = ops.patch_mean_std(x.detach(), 3, 3, 1e-5)
    torch.library.opcheck(
        ops.local_style_mix_backward, (torch.randn_like(x), x.detach(), mean, std, tm, ts, mix, True, True)
    )
    torch.library.opcheck(
        ops.patch_mean_std_backward, (torch.randn_like(mean), torch.randn_like(std), x.detach(), mean, std)
    )


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()

    def augment(x, style_mean, style_std, mix):
        return local_style_mix(x * 2, style_mean, style_std, grid=3, mix=mix) + 1

    x, tm, ts, mix = (t.float().requires_grad_() for t in _samples())
    compiled = torch.compile(augment, fullgraph=True)
    y = compiled(x, tm, ts, mix[:, :, 0, 0])
    y.sum().backward()
    grads = [t.grad.clone() for t in (x, tm, ts, mix)]
    for t in (x, tm, ts, mix):
        t.grad = None
    y_eager = augment(x, tm, ts, mix[:, :, 0, 0])
    y_eager.sum().backward()
    assert_close(y, y_eager, 1e-6)
    for g, t in zip(grads, (x, tm, ts, mix)):
        assert_close(g, t.grad, 1e-6)


@settings(max_examples=40, deadline=None)
@example(1, 5, 5, 1, 3, 1, False, False, 4803)  # a patch of std 0.0037 (sqrt(eps) = 0.0032)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 5),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    grid_h=st.integers(1, 4),
    grid_w=st.integers(1, 4),
    mixing=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape_and_grid(batch, channels, height, width, grid_h, grid_w, mixing, channels_last, seed):
    grid = (min(grid_h, height), min(grid_w, width))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen) * 3 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tm = torch.randn(batch, channels, *grid, generator=gen)
    ts = torch.rand(batch, channels, *grid, generator=gen) + 0.5
    mix = torch.rand(batch, channels, generator=gen) if mixing else None
    y = local_style_mix(x, tm, ts, grid=grid, mix=mix)
    mix4 = None if mix is None else mix.double()[:, :, None, None].expand_as(tm)
    expected = reference.local_style_mix_loop(x.double(), tm.double(), ts.double(), grid, mix4)
    # float32 rounds each patch mean (relative 2^-24) before x - mean, and the output scales that by
    # target_std / std: large for a patch of nearly equal pixels (std near sqrt(eps)). Rounding is relative to
    # mean * target_std / std, the size of the terms that cancel there.
    ref_mean, ref_std = reference.patch_mean_std_loop(x.double(), grid)
    out_std = ts.double() if mix4 is None else mix4 * ref_std + (1 - mix4) * ts.double()
    cancelling = (ref_mean.abs() * out_std / ref_std).max().item()
    assert_close(y, expected, TOLERANCE[torch.float32], scale=cancelling)
    mean, std = patch_mean_std(x, grid)
    assert_close(mean, ref_mean, TOLERANCE[torch.float32])
    assert_close(std, ref_std, TOLERANCE[torch.float32])


def test_statistics_stay_accurate_with_large_means():
    """float32 features with mean 1000 and std 1: E[x^2]-E[x]^2 would lose every digit of the variance."""
    x = torch.randn(2, 4, 64, 64, dtype=torch.float64).float() + 1000
    mean, std = patch_mean_std(x, 3)
    ref_mean, ref_std = reference.patch_mean_std_loop(x.double(), (3, 3))
    assert_close(mean, ref_mean, 1e-6)
    assert_close(std, ref_std, 1e-5)


def test_portable_cpu_kernels_match_the_reference():
    """The C++ kernels exist twice (portable and AVX2+FMA, chosen at load time); run the portable ones in a
    subprocess, forward and backward, both layouts, against the float64 reference."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import torch
from styleda_fast import local_style_mix
from styleda_fast.ops.style_mix import reference
torch.manual_seed(0)
for cl in (False, True):
    x = torch.randn(2, 5, 13, 11) * 3 + 5
    xin = x.contiguous(memory_format=torch.channels_last) if cl else x
    sm, ss = torch.randn(2, 5, 3, 2), torch.rand(2, 5, 3, 2) + 0.5
    mix = torch.rand(2, 5)
    xg = xin.clone().requires_grad_()
    y = local_style_mix(xg, sm, ss, grid=(3, 2), mix=mix)
    g = torch.randn_like(x)
    y.backward(g)
    xr = x.double().requires_grad_()
    ref = reference.local_style_mix(xr, sm.double(), ss.double(), (3, 2), mix.double()[:, :, None, None])
    ref.backward(g.double())
    assert ((y - ref).abs().max() / ref.abs().max()) < 1e-5, "forward"
    assert ((xg.grad - xr.grad).abs().max() / xr.grad.abs().max()) < 1e-4, "backward"
print("ok")
"""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "STYLEDA_FAST_CPU_ISA": "generic", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
