"""The style-mix operators take their per-patch tensors (target statistics, mixing weights, saved statistics and
their gradients) in any strides, as torch.compile hands them to a backward next to convolutions (channels_last):
the same numbers as with contiguous ones, on every backend, and contiguous per-patch outputs."""

from __future__ import annotations

import pytest
import torch
from helpers import available_backends, backend_device

from styleda_fast import use_backend
from styleda_fast.core.backend import run_op
from styleda_fast.ops.style_mix import _ops

BACKENDS = available_backends()
GRID = (2, 3)


def _inputs(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 7, 10, generator=g, dtype=torch.float64) * 2 + 3
    params = [
        torch.randn(3, 5, *GRID, generator=g, dtype=torch.float64),  # target_mean / mean / sums
        torch.rand(3, 5, *GRID, generator=g, dtype=torch.float64) + 0.5,  # target_std / std
        torch.rand(3, 5, *GRID, generator=g, dtype=torch.float64),  # mix
        torch.randn(3, 5, *GRID, generator=g, dtype=torch.float64),  # grad_mean
        torch.randn(3, 5, *GRID, generator=g, dtype=torch.float64),  # grad_std
    ]
    grad_out = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.to(device), [p.to(device) for p in params], grad_out.to(device)


def _channels_last(t):
    out = t.contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    return out


def _calls(x, p, grad_out):
    """(name, args) of every style-mix operator with per-patch tensor arguments; p[i] may be any strides."""
    tm, ts, mix, gm, gs = p
    return [
        ("local_style_mix", (x, tm, ts, mix, *GRID, True, 1e-5)),
        ("patch_mean_std_backward", (gm, gs, x, tm, ts)),
        ("local_style_mix_backward", (grad_out, x, tm, ts, tm, ts, mix, True, True)),
        ("local_style_mix_grad_x", (grad_out, x, tm, ts, tm, ts, mix, gm, gs, gm, gs, True)),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_patch_tensors_in_any_strides_give_the_contiguous_results(backend):
    device = backend_device(backend)
    x, params, grad_out = _inputs(device)
    strided = [_channels_last(p) for p in params]
    with use_backend(backend):
        for (name, args), (_, strided_args) in zip(_calls(x, params, grad_out), _calls(x, strided, grad_out)):
            op = getattr(_ops, name.upper())
            if backend == "reference" and op.reference is None:
                continue  # the backward operators run on the kernels only
            expected = run_op(op, *args)
            got = run_op(op, *strided_args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = got if isinstance(got, tuple) else (got,)
            for e, o in zip(expected, got):
                torch.testing.assert_close(o, e, rtol=0, atol=0, msg=f"{name} on {backend}")
            for o in got[1:]:  # per-patch outputs (statistics, sums) come back contiguous
                assert o.is_contiguous(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_per_patch_tensor_of_the_wrong_dtype_is_still_named(backend):
    device = backend_device(backend)
    x, params, grad_out = _inputs(device)
    tm, ts, mix, gm, gs = params
    with use_backend(backend), pytest.raises(ValueError, match="target_std must be a "):
        run_op(_ops.LOCAL_STYLE_MIX, x, tm, _channels_last(ts).float(), mix, *GRID, True, 1e-5)
