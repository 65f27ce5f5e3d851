"""The Triton style-mix launchers (styleda_fast.ops.style_mix._triton) against the float64 reference.

Without a GPU the kernels run on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set before triton
is imported). Every case runs with the whole patch in one tile and, with MAX_TILE_ELEMENTS lowered, with tile loops.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from styleda_fast.core.checks import acc_dtype  # noqa: E402
from styleda_fast.devtools.testing import STYLE_MIX_CASES, TOLERANCE, case_id, style_mix_inputs  # noqa: E402
from styleda_fast.devtools.testing import assert_close as shared_assert_close  # noqa: E402
from styleda_fast.ops.style_mix import _triton as style_mix  # noqa: E402
from styleda_fast.ops.style_mix import reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

CASES = STYLE_MIX_CASES
CASE_IDS = [case_id(s, g) for s, g in CASES]


@pytest.fixture(params=["single_tile", "tile_loop"])
def tiling(request, monkeypatch):
    """Runs a test with the default tile limit (small patches fit one tile) and with 16 (tile loops everywhere)."""
    if request.param == "tile_loop":
        monkeypatch.setattr(style_mix, "MAX_TILE_ELEMENTS", 16)
    return request.param


@pytest.fixture
def poisoned(monkeypatch):
    """Calls a launcher with every fresh floating tensor filled with NaN, so that unwritten outputs show."""

    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    def call(fn, *args):
        empty, empty_like, empty_strided = torch.empty, torch.empty_like, torch.empty_strided
        with monkeypatch.context() as patch:
            patch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
            patch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
            patch.setattr(torch, "empty_strided", lambda *a, **k: poison(empty_strided(*a, **k)))
            return fn(*args)

    return call


def make_inputs(shape, grid, dtype=torch.float32, channels_last=False, seed=0):
    """x with a large mean (as real features), and per-patch targets and mix weights in the accumulation dtype."""
    sample = style_mix_inputs(shape, grid, dtype, DEVICE, channels_last, seed)
    return sample.x, sample.target_mean, sample.target_std, sample.mix


def assert_close(actual, expected, dtype):
    """max |actual - expected| <= tolerance * max |expected|, and every value finite (no output left unwritten)."""
    assert torch.isfinite(actual).all(), "non-finite values (an output left unwritten?)"
    shared_assert_close(actual, expected, TOLERANCE[dtype])


def reference_forward(x, target_mean, target_std, mix, grid, relu):
    """Reference (out, mean, std) in float64, on the same (rounded) inputs as the kernel."""
    x64 = x.double()
    mix64 = None if mix is None else mix.double()
    activation = "relu" if relu else None
    out = reference.local_style_mix(x64, target_mean.double(), target_std.double(), grid, mix64, activation, EPS)
    return (out, *reference.patch_mean_std(x64, grid, EPS))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", CASES, ids=CASE_IDS)
def test_patch_mean_std(shape, grid, channels_last, tiling, poisoned):
    for dtype in (torch.float32, torch.float64):
        x, *_ = make_inputs(shape, grid, dtype, channels_last)
        mean, std = poisoned(style_mix.patch_mean_std, x, *grid, EPS)
        expected_mean, expected_std = reference.patch_mean_std(x.double(), grid, EPS)
        assert mean.dtype == std.dtype == acc_dtype(dtype) and mean.is_contiguous()
        assert_close(mean, expected_mean, dtype)
        assert_close(std, expected_std, dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", CASES, ids=CASE_IDS)
def test_local_style_mix(shape, grid, channels_last, tiling, poisoned):
    for use_mix, relu in ((True, True), (False, False)):
        x, target_mean, target_std, mix = make_inputs(shape, grid, torch.float32, channels_last)
        mix = mix if use_mix else None
        out, mean, std = poisoned(style_mix.local_style_mix, x, target_mean, target_std, mix, *grid, relu, EPS)
        expected = reference_forward(x, target_mean, target_std, mix, grid, relu)
        assert out.dtype == x.dtype and out.stride() == x.stride()
        for actual, wanted in zip((out, mean, std), expected):
            assert_close(actual, wanted, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["f64", "f16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", [CASES[0], CASES[3]], ids=[CASE_IDS[0], CASE_IDS[3]])
def test_local_style_mix_dtypes(shape, grid, channels_last, dtype, tiling, poisoned):
    x, target_mean, target_std, mix = make_inputs(shape, grid, dtype, channels_last)
    out, mean, std = poisoned(style_mix.local_style_mix, x, target_mean, target_std, mix, *grid, True, EPS)
    assert out.dtype == dtype and mean.dtype == std.dtype == acc_dtype(dtype)
    expected = reference_forward(x, target_mean, target_std, mix, grid, True)
    for actual, wanted in zip((out, mean, std), expected):
        assert_close(actual, wanted, dtype)


@pytest.mark.parametrize("in_place", [False, True], ids=["into_other", "in_place"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_local_style_mix_into(channels_last, in_place, tiling):
    shape, grid = CASES[0]
    x, target_mean, target_std, mix = make_inputs(shape, grid, torch.float32, channels_last)
    expected, _, _ = reference_forward(x, target_mean, target_std, mix, grid, True)
    out = x if in_place else torch.full_like(x, float("nan"))
    style_mix.local_style_mix_into(x, target_mean, target_std, mix, *grid, True, EPS, out)
    assert_close(out, expected, torch.float32)


def _token_grid(B, prefix, h, w, C, seed):
    """A ViT's patch tokens as a (B, C, h, w) channels-last view, images (prefix + h*w) * C elements apart."""
    gen = torch.Generator().manual_seed(seed)
    tokens = (torch.randn(B, prefix + h * w, C, generator=gen) * 2 + 3).to(DEVICE)
    return tokens, tokens[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("prefix", [1, 4])
def test_token_grids_are_addressed_in_place(prefix, tiling, poisoned):
    """Each tensor keeps its own batch stride: the plan reads the token view itself (no copy), fresh outputs and
    gradients get its strides, out= writes only the patch tokens, grad_out may be a token view too."""
    B, h, w, C, grid = 3, 7, 6, 24, (2, 3)
    tokens, x = _token_grid(B, prefix, h, w, C, seed=11)
    _, target_mean, target_std, mix = make_inputs((B, C, h, w), grid, torch.float32, channels_last=True)
    plan = style_mix.plan_forward(
        x, torch.empty_like(x), *style_mix._new_patch_params(x, *grid), target_mean, target_std, mix, *grid, True, EPS
    )[0]
    assert plan.args[0] is x and plan.constexprs["CHANNELS_LAST"]
    expected, _, _ = reference_forward(x, target_mean, target_std, mix, grid, True)
    out, mean, std = poisoned(style_mix.local_style_mix, x, target_mean, target_std, mix, *grid, True, EPS)
    assert out.stride() == x.stride() and out.storage_offset() == prefix * C
    assert_close(out, expected, torch.float32)
    # into another token grid, and into a dense channels_last tensor, from the token view
    other_tokens, other = _token_grid(B, prefix, h, w, C, seed=12)
    other_prefix = other_tokens[:, :prefix].clone()
    dense = torch.full((B, C, h, w), float("nan"), device=DEVICE).contiguous(memory_format=torch.channels_last)
    for target in (other, dense):
        style_mix.local_style_mix_into(x, target_mean, target_std, mix, *grid, True, EPS, target)
        assert_close(target, expected, torch.float32)
    assert torch.equal(other_tokens[:, :prefix], other_prefix), "prefix tokens of out were written"
    # backward with grad_out a token view of its own (another batch stride than x's when prefixes differ)
    grad_tokens, grad_out = _token_grid(B, prefix + 1, h, w, C, seed=13)
    grad_x, grad_mixed_mean, grad_mixed_std = poisoned(
        style_mix.local_style_mix_backward, grad_out, x, mean, std, target_mean, target_std, mix, True, True
    )
    assert grad_x.stride() == x.stride()
    wanted = reference_grads(x, target_mean, target_std, mix, grid, True, grad_out)
    actual = (grad_x, *style_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix))
    for got, want in zip(actual, wanted):
        assert_close(got, want, torch.float32)


def test_large_mean_small_spread(tiling):
    """std of features with mean 1000 and spread 0.01: E[x^2] - E[x]^2 in float32 would be pure rounding noise."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn((1, 2, 12, 12), generator=gen, dtype=torch.float64) * 0.01 + 1000).float().to(DEVICE)
    _, std = style_mix.patch_mean_std(x, 1, 2, 0.0)
    _, expected = reference.patch_mean_std(x.double(), (1, 2), 0.0)
    assert ((std.double().cpu() - expected.cpu()).abs() / expected.cpu()).max() < 1e-3


def test_nan_propagates(tiling):
    """A NaN pixel makes its patch's statistics and output NaN (ReLU keeps NaN), and nothing else."""
    shape, grid = CASES[0]
    for channels_last in (False, True):
        x, target_mean, target_std, mix = make_inputs(shape, grid, torch.float32, channels_last)
        x[1, 2, 0, 0] = float("nan")
        out, mean, std = style_mix.local_style_mix(x, target_mean, target_std, mix, *grid, True, EPS)
        expected = reference_forward(x, target_mean, target_std, mix, grid, True)
        for actual, wanted in zip((out, mean, std), expected):
            assert torch.equal(actual.isnan().cpu(), wanted.isnan().cpu())
            assert actual[1, 2, 0, 0].isnan()
            finite = ~wanted.isnan()
            assert_close(actual[finite], wanted[finite], torch.float32)


def reference_grads(x, target_mean, target_std, mix, grid, relu, grad_out):
    """float64 autograd of reference.local_style_mix: grads of (x, target_mean, target_std, mix)."""
    inputs = [t.detach().double().requires_grad_() for t in (x, target_mean, target_std)]
    mix64 = None if mix is None else mix.detach().double().requires_grad_()
    out = reference.local_style_mix(*inputs, grid, mix64, "relu" if relu else None, EPS)
    wrt = inputs + ([] if mix64 is None else [mix64])
    return torch.autograd.grad(out, wrt, grad_out.double())


def style_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix):
    """Gradients of (target_mean, target_std[, mix]) from the kernel's gradients of the mixed statistics."""
    if mix is None:
        return grad_mixed_mean, grad_mixed_std
    keep = 1 - mix
    grad_mix = grad_mixed_mean * (mean - target_mean) + grad_mixed_std * (std - target_std)
    return keep * grad_mixed_mean, keep * grad_mixed_std, grad_mix


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", CASES, ids=CASE_IDS)
def test_local_style_mix_backward(shape, grid, channels_last, tiling, poisoned):
    for use_mix, relu in ((True, True), (False, False)):
        x, target_mean, target_std, mix = make_inputs(shape, grid, torch.float32, channels_last)
        mix = mix if use_mix else None
        gen = torch.Generator().manual_seed(2)
        # grad_out in the other layout than x: the launcher must bring it to x's.
        grad_out = torch.randn(shape, generator=gen).to(DEVICE)
        if not channels_last:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        _, mean, std = style_mix.local_style_mix(x, target_mean, target_std, mix, *grid, relu, EPS)
        grad_x, grad_mixed_mean, grad_mixed_std = poisoned(
            style_mix.local_style_mix_backward, grad_out, x, mean, std, target_mean, target_std, mix, relu, True
        )
        assert grad_x.stride() == x.stride() and grad_x.dtype == x.dtype
        assert grad_mixed_mean.dtype == grad_mixed_std.dtype == torch.float32
        expected = reference_grads(x, target_mean, target_std, mix, grid, relu, grad_out)
        actual = (grad_x, *style_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix))
        for got, wanted in zip(actual, expected):
            assert_close(got, wanted, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["f64", "f16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", [CASES[0], CASES[3]], ids=[CASE_IDS[0], CASE_IDS[3]])
def test_local_style_mix_backward_dtypes(shape, grid, channels_last, dtype, tiling):
    x, target_mean, target_std, mix = make_inputs(shape, grid, dtype, channels_last)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    _, mean, std = style_mix.local_style_mix(x, target_mean, target_std, mix, *grid, True, EPS)
    grad_x, grad_mixed_mean, grad_mixed_std = style_mix.local_style_mix_backward(
        grad_out, x, mean, std, target_mean, target_std, mix, True, True
    )
    assert grad_x.dtype == dtype and grad_mixed_mean.dtype == acc_dtype(dtype)
    expected = reference_grads(x, target_mean, target_std, mix, grid, True, grad_out)
    actual = (grad_x, *style_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix))
    for got, wanted in zip(actual, expected):
        assert_close(got, wanted, dtype)


def test_local_style_mix_backward_without_grad_x(tiling):
    shape, grid = CASES[0]
    x, target_mean, target_std, mix = make_inputs(shape, grid, torch.float32, channels_last=True)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    _, mean, std = style_mix.local_style_mix(x, target_mean, target_std, mix, *grid, True, EPS)
    grad_x, grad_mixed_mean, grad_mixed_std = style_mix.local_style_mix_backward(
        grad_out, x, mean, std, target_mean, target_std, mix, True, False
    )
    assert grad_x.numel() == 0 and grad_x.dtype == x.dtype
    _, *expected = reference_grads(x, target_mean, target_std, mix, grid, True, grad_out)
    actual = style_grads(grad_mixed_mean, grad_mixed_std, mean, std, target_mean, target_std, mix)
    for got, wanted in zip(actual, expected):
        assert_close(got, wanted, torch.float32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,grid", CASES, ids=CASE_IDS)
def test_patch_mean_std_backward(shape, grid, channels_last, tiling, poisoned):
    for dtype in (torch.float32, torch.float64):
        x, *_ = make_inputs(shape, grid, dtype, channels_last)
        gen = torch.Generator().manual_seed(5)
        params = (shape[0], shape[1], *grid)
        grad_mean = torch.randn(params, generator=gen, dtype=acc_dtype(dtype)).to(DEVICE)
        grad_std = torch.randn(params, generator=gen, dtype=acc_dtype(dtype)).to(DEVICE)
        mean, std = style_mix.patch_mean_std(x, *grid, EPS)
        grad_x = poisoned(style_mix.patch_mean_std_backward, grad_mean, grad_std, x, mean, std)
        assert grad_x.stride() == x.stride() and grad_x.dtype == dtype
        x64 = x.detach().double().requires_grad_()
        expected_mean, expected_std = reference.patch_mean_std(x64, grid, EPS)
        (expected,) = torch.autograd.grad(
            (expected_mean * grad_mean.double() + expected_std * grad_std.double()).sum(), x64
        )
        assert_close(grad_x, expected, dtype)
