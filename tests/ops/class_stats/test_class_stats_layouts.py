"""class_mean_std reads NCHW, channels_last and ViT token grids (``tokens_as_grid``) in place on every backend: the
same statistics as the float64 reference on an NCHW copy, the tokens untouched, no copy made."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, assert_close, available_backends, backend_device, random_labels

import styleda_fast
from styleda_fast.core.checks import batch_strided_layout
from styleda_fast.ops.class_stats import class_mean_std
from styleda_fast.ops.class_stats import reference as ref

BACKENDS = available_backends()
NEEDS_CPP = pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ extension not built")
LAYOUTS = ["nchw", "channels_last", "tokens1", "tokens4"]
H, W, C = 5, 7, 37  # odd sizes; 37 channels: several channel blocks (C++ and Triton), the last one partial


def make_x(layout, B, dtype, seed, device="cpu", prefix_value=float("nan")):
    """``(x, owner)``: x ``(B, C, H, W)`` in ``layout`` (mean 50, std 2), owner the tensor whose memory x views
    (the tokens for a token grid, whose prefix tokens hold ``prefix_value``)."""
    gen = torch.Generator().manual_seed(seed)
    if layout.startswith("tokens"):
        prefix = int(layout[len("tokens") :])
        tokens = torch.randn(B, prefix + H * W, C, generator=gen, dtype=torch.float64) * 2 + 50
        tokens[:, :prefix] = prefix_value
        tokens = tokens.to(device=device, dtype=dtype)
        grid = styleda_fast.tokens_as_grid(tokens, H, W, prefix)
        assert batch_strided_layout(grid) == ("nhwc", (prefix + H * W) * C)
        return grid, tokens
    x = (torch.randn(B, C, H, W, generator=gen, dtype=torch.float64) * 2 + 50).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    return x, x


def bits(t):
    """t's bytes, to compare NaN-holding tensors bit for bit."""
    return t.detach().cpu().contiguous().view(torch.uint8).clone()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [5, 19])
def test_layouts_match_reference_on_nchw_copy(backend, layout, B, dtype, K, poison_fresh_memory):
    device = backend_device(backend)
    x, owner = make_x(layout, B, dtype, seed=B * 100 + K, device=device)
    labels = random_labels((B, H, W), K, ignore_frac=0.3, block=2, seed=B + K).to(device)
    before = bits(owner)
    e_mean, e_std, e_count = ref.class_mean_std(x.detach().cpu().contiguous().double(), labels.cpu(), K, 255, 1e-5)
    with styleda_fast.use_backend(backend):
        mean, std, count = class_mean_std(x, labels, K)
    assert torch.equal(bits(owner), before), "x (or the tokens around it) changed"
    assert mean.dtype == std.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(count.cpu(), e_count)
    # the prefix tokens are NaN: a kernel reading any of them would give NaN statistics
    assert_close(mean, e_mean, TOLERANCE[dtype], f"{backend} {layout} mean")
    assert_close(std, e_std, 100 * TOLERANCE[dtype], f"{backend} {layout} std")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "tokens1", "tokens4"])
def test_gradient_through_token_view_equals_nchw_copy(backend, layout):
    device = backend_device(backend)
    K, B = 5, 3
    x, owner = make_x(layout, B, torch.float64, seed=7, device=device, prefix_value=1.0)
    labels = random_labels((B, H, W), K, ignore_frac=0.2, block=2, seed=7).to(device)
    labels[0, 0, 0], labels[0, 0, 1:] = 4, 0  # class 4 has a single pixel in image 0 (if block 2 gave it none)
    gen = torch.Generator().manual_seed(8)
    gm, gs = (torch.randn(B, K, C, generator=gen, dtype=torch.float64).to(device) for _ in range(2))
    leaf = owner.detach().clone().requires_grad_()
    view = styleda_fast.tokens_as_grid(leaf, H, W, int(layout[6:])) if layout.startswith("tokens") else leaf
    dense = x.detach().contiguous().requires_grad_()
    with styleda_fast.use_backend(backend):
        grads = []
        for inp, wrt in ((view, leaf), (dense, dense)):
            mean, std, _ = class_mean_std(inp, labels, K)
            (g,) = torch.autograd.grad((mean * gm).sum() + (std * gs).sum(), wrt)
            grads.append(g)
    g_view, g_dense = grads
    if layout.startswith("tokens"):
        prefix = int(layout[6:])
        assert torch.count_nonzero(g_view[:, :prefix]) == 0, "prefix tokens got a gradient"
        g_view = styleda_fast.tokens_as_grid(g_view, H, W, prefix)
    assert_close(g_view, g_dense, GRAD_TOLERANCE[torch.float64], f"{backend} {layout} grad")


def _copies(fn):
    """Names of the copying aten ops (clone, copy_, contiguous to another layout) that fn dispatches."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.key for e in prof.key_averages() if e.key in ("aten::clone", "aten::copy_", "aten::_to_copy")})


@NEEDS_CPP
@pytest.mark.parametrize("layout", ["channels_last", "tokens1", "tokens4"])
def test_cpp_reads_in_place_without_a_copy(layout, poison_fresh_memory):
    """The operator called directly and through the API: no aten copy is dispatched (the former x.contiguous()
    was an aten::clone + aten::copy_), the prefix tokens (NaN) are never read, the tokens are unchanged."""
    K, B = 19, 3
    x, owner = make_x(layout, B, torch.float32, seed=3)
    labels = random_labels((B, H, W), K, ignore_frac=0.2, block=2, seed=3)
    before = bits(owner)
    e_mean, e_std, e_count = ref.class_mean_std(x.contiguous().double(), labels, K, 255, 1e-5)
    with styleda_fast.use_backend("cpp"):
        for call in (
            lambda: torch.ops.styleda_fast.class_mean_std(x, labels, K, 1e-5),
            lambda: class_mean_std(x, labels, K),
        ):
            assert _copies(call) == []
            mean, std, count = call()
            assert torch.equal(count, e_count)
            assert_close(mean, e_mean, TOLERANCE[torch.float32], "mean")
            assert_close(std, e_std, 100 * TOLERANCE[torch.float32], "std")
    assert torch.equal(bits(owner), before)
    # the check itself sees a copy: an NCHW tensor with padded rows is not addressable and is copied
    padded = torch.zeros(B, C, H, W + 1)[..., :W]
    assert batch_strided_layout(padded) is None
    assert "aten::copy_" in _copies(lambda: torch.ops.styleda_fast.class_mean_std(padded, labels, K, 1e-5))


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not available")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_plan_reads_the_view_itself(layout, monkeypatch):
    from styleda_fast.ops.class_stats import _triton as tk

    K, B = 19, 3
    device = backend_device("triton")
    x, _ = make_x(layout, B, torch.float32, seed=4, device=device)
    labels = random_labels((B, H, W), K, seed=4).to(device)
    plans = []
    real_launch = tk.launch
    monkeypatch.setattr(tk, "launch", lambda ps: (plans.extend(ps), real_launch(ps)))
    with styleda_fast.use_backend("triton"):
        class_mean_std(x, labels, K)
    (plan,) = plans
    arg = plan.args[0]
    assert arg.data_ptr() == x.data_ptr() and arg.stride() == x.stride() and arg.shape == x.shape
    nhwc = layout != "nchw"
    assert (plan.kernel is tk._class_mean_std_nhwc_kernel) == nhwc
    assert plan.args[5] == batch_strided_layout(x)[1]  # x_stride_b
    if nhwc:
        assert plan.constexprs["BLOCK_C"] < C  # several channel blocks, the last one partial
