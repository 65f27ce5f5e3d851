"""local_style_mix and patch_mean_std on every backend against the float64 plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    GRAD_TOLERANCE,
    STYLE_MIX_CASES,
    TOLERANCE,
    assert_close,
    available_backends,
    backend_device,
    features,
    kernel_dtypes,
)

import styleda_fast
from styleda_fast import local_style_mix, patch_mean_std, use_backend
from styleda_fast.ops.style_mix import reference

BACKENDS = available_backends()
KERNEL_BACKENDS = [b for b in BACKENDS if b != "reference"]

CASES = STYLE_MIX_CASES
_dtypes = kernel_dtypes
_features = features


def _style(kind, shape, grid, device, seed=1):
    """kind: 'image' (B, C), 'image4' (B, C, 1, 1) or 'patch' (B, C, gh, gw)."""
    gen = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    full = {"image": (B, C), "image4": (B, C, 1, 1), "patch": (B, C, *grid)}[kind]
    mean = torch.randn(full, generator=gen, dtype=torch.float64) * 2
    std = torch.rand(full, generator=gen, dtype=torch.float64) + 0.5
    return mean.to(device), std.to(device)


def _expand(t, shape, grid):
    t = t.double().cpu()
    if t.dim() == 2:
        t = t[:, :, None, None]
    return t.expand(shape[0], shape[1], *grid)


# Fresh tensors from torch.empty come filled with NaN, so an element a kernel forgot to write fails.
pytestmark = pytest.mark.usefixtures("poison_fresh_memory")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_patch_mean_std_matches_reference(backend, channels_last):
    device = backend_device(backend)
    for dtype in _dtypes(backend):
        for shape, grid in CASES:
            x = _features(shape, dtype, device, channels_last)
            with use_backend(backend):
                mean, std = patch_mean_std(x, grid)
            ref_mean, ref_std = reference.patch_mean_std_loop(x.double().cpu(), grid)
            assert mean.dtype == dtype and mean.shape == (*shape[:2], *grid)
            assert_close(mean, ref_mean, TOLERANCE[dtype], f"{backend} {dtype} {shape} {grid} mean")
            assert_close(std, ref_std, TOLERANCE[dtype], f"{backend} {dtype} {shape} {grid} std")


def test_vectorized_reference_matches_loop_reference():
    for shape, grid in CASES:
        x = _features(shape, torch.float64, "cpu")
        sm, ss = _style("patch", shape, grid, "cpu")
        mix = torch.rand(shape[0], shape[1], *grid, dtype=torch.float64)
        assert_close(
            reference.local_style_mix(x, sm, ss, grid, mix), reference.local_style_mix_loop(x, sm, ss, grid, mix), 1e-12
        )
        for a, b in zip(reference.patch_mean_std(x, grid), reference.patch_mean_std_loop(x, grid)):
            assert_close(a, b, 1e-12)


def test_global_statistics_equal_poda_calc_mean_std():
    x = _features((2, 3, 9, 7), torch.float64, "cpu")
    mean, std = patch_mean_std(x, 1)
    flat = x.view(2, 3, -1)
    assert_close(mean, flat.mean(dim=2).view(2, 3, 1, 1), 1e-12)
    assert_close(std, (flat.var(dim=2) + 1e-5).sqrt().view(2, 3, 1, 1), 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("style_kind", ["image", "image4", "patch"])
@pytest.mark.parametrize("mixing", [None, "image", "patch"])
def test_local_style_mix_matches_reference(backend, channels_last, style_kind, mixing):
    device = backend_device(backend)
    for dtype in _dtypes(backend):
        for activation in ("relu", None):
            for shape, grid in CASES:
                x = _features(shape, dtype, device, channels_last)
                sm, ss = _style(style_kind, shape, grid, device)
                mix = None
                if mixing is not None:
                    mix_shape = shape[:2] if mixing == "image" else (*shape[:2], *grid)
                    mix = torch.rand(mix_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(
                        device
                    )
                with use_backend(backend):
                    y = local_style_mix(x, sm, ss, grid=grid, mix=mix, activation=activation)
                expected = reference.local_style_mix(
                    x.double().cpu(),
                    _expand(sm, shape, grid),
                    _expand(ss, shape, grid),
                    grid,
                    None if mix is None else _expand(mix, shape, grid),
                    activation,
                )
                assert y.dtype == dtype and y.shape == x.shape
                if channels_last:
                    assert y.is_contiguous(memory_format=torch.channels_last)
                assert_close(y, expected, TOLERANCE[dtype], f"{backend} {dtype} {shape} {grid} {activation}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_layouts_give_the_same_numbers(backend):
    device = backend_device(backend)
    shape, grid = (2, 5, 11, 10), (3, 2)
    x = _features(shape, torch.float32, device)
    sm, ss = _style("patch", shape, grid, device)
    mix = torch.rand(2, 5, device=device)
    with use_backend(backend):
        a = local_style_mix(x, sm, ss, grid=grid, mix=mix)
        b = local_style_mix(x.contiguous(memory_format=torch.channels_last), sm, ss, grid=grid, mix=mix)
    assert_close(b, a, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_out_argument(backend, in_place, channels_last):
    device = backend_device(backend)
    for shape, grid in CASES[:3]:
        x = _features(shape, torch.float32, device, channels_last)
        sm, ss = _style("patch", shape, grid, device)
        mix = torch.rand(shape[:2], device=device)
        expected = reference.local_style_mix(
            x.double().cpu(), _expand(sm, shape, grid), _expand(ss, shape, grid), grid, _expand(mix, shape, grid)
        )
        out = x if in_place else torch.full_like(x, float("nan"))  # poisoned
        with use_backend(backend):
            y = local_style_mix(x, sm, ss, grid=grid, mix=mix, out=out)
        assert y is out
        assert_close(out, expected, TOLERANCE[torch.float32], f"{backend} {shape} {grid}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_output_fully_written(backend):
    """Big enough for the CPU kernels' huge-page output buffer; no activation, so no element is legitimately 0."""
    if backend == "triton" and backend_device(backend).type == "cpu":
        pytest.skip("too large for the Triton interpreter")
    shape, grid = (1, 8, 512, 520), (3, 3)
    device = backend_device(backend)
    x = _features(shape, torch.float32, device)
    sm, ss = _style("patch", shape, grid, device)
    with use_backend(backend):
        y = local_style_mix(x, sm, ss, grid=grid, activation=None)
    expected = reference.local_style_mix(x.double().cpu(), sm.cpu(), ss.cpu(), grid, None, None)
    assert_close(y, expected, TOLERANCE[torch.float32])


def _grad_inputs(shape, grid, dtype, device, mixing):
    x = _features(shape, dtype, device).requires_grad_()
    sm, ss = _style("patch", shape, grid, device)
    sm, ss = sm.to(dtype).requires_grad_(), ss.to(dtype).requires_grad_()
    mix = torch.rand(shape[:2], dtype=dtype, device=device).requires_grad_() if mixing else None
    return x, sm, ss, mix


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mixing", [False, True], ids=["transfer", "mixing"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_gradients_match_float64_reference(backend, mixing, channels_last):
    device = backend_device(backend)
    for dtype, rtol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        for shape, grid in CASES:
            x, sm, ss, mix = _grad_inputs(shape, grid, dtype, device, mixing)
            grad_y = torch.randn(shape, dtype=dtype, device=device)
            xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            with use_backend(backend):
                local_style_mix(xin, sm, ss, grid=grid, mix=mix).backward(grad_y)
            leaves = [t for t in (x, sm, ss, mix) if t is not None]
            refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
            rmix = refs[3][:, :, None, None] if mixing else None
            reference.local_style_mix(refs[0], refs[1], refs[2], grid, rmix).backward(grad_y.double().cpu())
            # grad x subtracts terms of size |grad_y| * out_std / std that cancel exactly for a 1-pixel patch
            # (std = sqrt(eps)): float32 rounding is relative to them, not to the small difference.
            ref_std = reference.patch_mean_std(refs[0].detach(), grid)[1]
            out_std = refs[2].detach() if rmix is None else rmix.detach() * ref_std + (1 - rmix.detach()) * refs[2]
            rows, cols = reference.patch_index(shape[2], grid[0]), reference.patch_index(shape[3], grid[1])
            ratio = reference._expand_to_pixels((out_std / ref_std).abs().expand(ref_std.shape), rows, cols)
            cancelling = grad_y.abs().max().item() * ratio
            for name, t, r in zip(("x", "style_mean", "style_std", "mix"), leaves, refs):
                assert t.grad is not None and t.grad.dtype == t.dtype
                scale = cancelling if name == "x" else 0.0
                assert_close(t.grad, r.grad, rtol, f"{backend} {dtype} {shape} {grid} grad {name}", scale=scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_mean_std_gradients(backend):
    device = backend_device(backend)
    for shape, grid in (((1, 2, 5, 4), (2, 2)), ((1, 1, 3, 3), (3, 3)), ((1, 2, 4, 5), (1, 1))):
        x = _features(shape, torch.float64, device).requires_grad_()
        with use_backend(backend):
            assert torch.autograd.gradcheck(lambda t, g=grid: patch_mean_std(t, g), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    device = backend_device(backend)
    shape, grid = (1, 2, 5, 3), (2, 2)  # gradcheck runs the op once per input element: keep it small
    x, sm, ss, mix = _grad_inputs(shape, grid, torch.float64, device, True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *a: local_style_mix(a[0], a[1], a[2], grid=grid, mix=a[3]), (x, sm, ss, mix)
        )
        assert torch.autograd.gradcheck(
            lambda a: local_style_mix(a, sm[:, :, :1, :1], ss[:, :, :1, :1], grid=1, activation=None), (x,)
        )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_only_needed_gradients(backend):
    device = backend_device(backend)
    shape, grid = (2, 3, 6, 6), (3, 3)
    x = _features(shape, torch.float32, device)
    sm, ss = _style("patch", shape, grid, device)
    ss = ss.float().requires_grad_()
    with use_backend(backend):
        local_style_mix(x, sm.float(), ss, grid=grid).sum().backward()
    assert x.grad is None and ss.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate(backend):
    device = backend_device(backend)
    shape, grid = (1, 2, 6, 6), (2, 2)
    x = _features(shape, torch.float32, device)
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, 5, 5] = float("inf")
    sm, ss = _style("patch", shape, grid, device)
    with use_backend(backend):
        y = local_style_mix(x, sm, ss, grid=grid)
    assert torch.isnan(y[0, 0, :3, :3]).all(), "a NaN poisons its own patch"
    assert torch.isfinite(y[0, 0, 3:, :]).all() and torch.isfinite(y[0, 0, :3, 3:]).all()
    assert not torch.isfinite(y[0, 1, 3:, 3:]).any(), "inf gives a non-finite patch"


def test_single_pixel_patches_use_zero_variance():
    x = _features((1, 2, 3, 3), torch.float64, "cpu")
    sm, ss = _style("patch", (1, 2, 3, 3), (3, 3), "cpu")
    mean, std = patch_mean_std(x, 3)
    assert_close(mean, x, 1e-12)
    assert torch.equal(std, torch.full_like(std, 1e-5**0.5))
    assert_close(local_style_mix(x, sm, ss, grid=3, activation=None), sm, 1e-12)


def test_backends_report():
    report = styleda_fast.backends()
    assert set(report) == {"reference", "cpp", "triton"}
    assert report["reference"].available
    for status in report.values():
        assert status.detail


def test_default_backend_is_fused_on_cpu():
    assert styleda_fast.backends()["cpp"].available, "the C++ extension must be built for CI"
    from styleda_fast.core.backend import select_backend

    assert select_backend(torch.device("cpu")) == "cpp"


@pytest.mark.parametrize(
    ("shape", "grid"),
    [((2, 3, 56, 56), (1, 1)), ((2, 4, 40, 24), (2, 1)), ((1, 2, 97, 33), (1, 1)), ((3, 2, 37, 20), (3, 1))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_contiguous_rows(shape, grid, dtype):
    """One patch per grid row (grid_w == 1): the C++ kernels walk each NCHW patch row as longer "rows" than the
    image's (56x56 planes: 16 rows of 196); statistics, transfer and gradients against the float64 reference, with
    a large mean and a small spread, outputs poisoned."""
    gen = torch.Generator().manual_seed(31)
    B, C = shape[:2]
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5 + 40
    sm = torch.randn(B, C, *grid, generator=gen, dtype=torch.float64)
    ss = torch.rand(B, C, *grid, generator=gen, dtype=torch.float64) + 0.5
    mix = torch.rand(B, C, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x64.to(dtype).requires_grad_()
    with use_backend("cpp"):
        mean, std = patch_mean_std(x.detach(), grid)
        y = local_style_mix(x, sm.to(dtype), ss.to(dtype), grid=grid, mix=mix.to(dtype))
        y.backward(g.to(dtype))
    ref_x = x.detach().double().requires_grad_()
    ref_mean, ref_std = reference.patch_mean_std(ref_x.detach(), grid)
    ref_y = reference.local_style_mix(ref_x, sm, ss, grid, mix[:, :, None, None].expand_as(sm))
    ref_y.backward(g)
    assert_close(mean, ref_mean, TOLERANCE[dtype])
    assert_close(std, ref_std, TOLERANCE[dtype])
    assert_close(y, ref_y, TOLERANCE[dtype])
    assert_close(x.grad, ref_x.grad, GRAD_TOLERANCE[dtype])
