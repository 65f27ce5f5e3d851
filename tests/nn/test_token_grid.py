"""ViT tokens as feature maps: ``tokens_as_grid`` views read and written in place by the style-mix operators.

Every check compares the token view with the same numbers laid out as an ordinary tensor (NCHW, or a
channels_last copy, which runs the same kernel in the same order: bitwise equal on the C++ backend), and checks
that the prefix tokens (class token, registers) stay bit for bit as they were. Inputs are fresh random draws,
never zeros; fresh memory is poisoned with NaN (``poison_fresh_memory``), so an unwritten output element shows.
"""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, assert_close, available_backends

from styleda_fast import (
    grid_as_tokens,
    grid_prefix,
    local_style_mix,
    patch_mean_std,
    tokens_as_grid,
    use_backend,
)

BACKENDS = available_backends()  # reference, cpp, triton (through the interpreter on the CPU)
SHAPES = [  # B, prefix, h, w, C, grid
    (2, 1, 6, 5, 8, (2, 2)),
    (3, 4, 7, 7, 5, (3, 2)),  # 4 prefix tokens: class token + 3 registers
    (1, 1, 4, 6, 16, (1, 1)),  # one image: its batch stride means nothing, the layout is still a token grid
    (2, 0, 5, 3, 6, (1, 3)),  # no prefix: a dense channels_last tensor
]


def _tokens(B, prefix, h, w, C, dtype=torch.float64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, prefix + h * w, C, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)


def _style(B, C, grid, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    gh, gw = grid
    mean = torch.randn(B, C, gh, gw, generator=gen, dtype=torch.float64).to(dtype)
    std = (torch.rand(B, C, gh, gw, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    mix = torch.rand(B, C, generator=gen, dtype=torch.float64).to(dtype)
    return mean, std, mix


def _as_nchw_tokens(tokens, h, w, prefix):
    """The patch tokens copied to an ordinary NCHW-contiguous (B, C, h, w) tensor."""
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w).contiguous()


def test_tokens_as_grid_is_a_view_with_the_token_batch_stride():
    tokens = _tokens(3, 1, 4, 5, 6)
    grid = tokens_as_grid(tokens, 4, 5)
    assert grid.shape == (3, 6, 4, 5)
    assert grid.stride() == (21 * 6, 1, 5 * 6, 6)
    assert grid.untyped_storage().data_ptr() == tokens.untyped_storage().data_ptr()
    assert grid.storage_offset() == 6
    assert torch.equal(grid, _as_nchw_tokens(tokens, 4, 5, 1))
    assert grid_prefix(grid) == 1
    assert grid_prefix(tokens_as_grid(_tokens(2, 5, 3, 3, 4), 3, 3, prefix=5)) == 5
    assert grid_prefix(torch.randn(2, 3, 4, 4)) == 0
    assert grid_prefix(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)) == 0


@pytest.mark.parametrize(
    ("call", "error", "argument"),
    [
        (lambda: tokens_as_grid(torch.randn(2, 17, 4), 4, 4, prefix=2), ValueError, "tokens"),
        (lambda: tokens_as_grid(torch.randn(2, 17), 4, 4), ValueError, "tokens"),
        (lambda: tokens_as_grid([1.0], 4, 4), TypeError, "tokens"),
        (lambda: tokens_as_grid(torch.randn(2, 17, 4), 4.0, 4), TypeError, "h"),
        (lambda: tokens_as_grid(torch.randn(2, 17, 4), 4, 0), ValueError, "w"),
        (lambda: tokens_as_grid(torch.randn(2, 17, 4), 4, 4, prefix=-1), ValueError, "prefix"),
        (lambda: grid_as_tokens(torch.randn(2, 3, 4, 4)), ValueError, "prefix_tokens"),
        (lambda: grid_as_tokens(torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4)), ValueError, "prefix_tokens"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, argument):
    with pytest.raises(error, match=rf"\b{argument}\b"):
        call()


def test_grid_as_tokens_inverts_tokens_as_grid_without_a_copy():
    tokens = _tokens(2, 3, 4, 4, 5)
    back = grid_as_tokens(tokens_as_grid(tokens, 4, 4, prefix=3))
    assert back.data_ptr() == tokens.data_ptr() and back.stride() == tokens.stride()
    assert torch.equal(back, tokens)
    cls = torch.randn(2, 1, 5, dtype=torch.float64)
    fresh = grid_as_tokens(tokens_as_grid(tokens, 4, 4, prefix=3), cls)
    assert torch.equal(fresh, torch.cat([cls, tokens[:, 3:]], dim=1))
    plain = torch.randn(2, 5, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.equal(grid_as_tokens(plain), plain.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "prefix", "h", "w", "C", "grid"), SHAPES)
@pytest.mark.usefixtures("poison_fresh_memory")
def test_forward_on_the_token_view_equals_a_copy(backend, B, prefix, h, w, C, grid):
    tokens = _tokens(B, prefix, h, w, C)
    before = tokens.clone()
    view = tokens_as_grid(tokens, h, w, prefix)
    nchw = _as_nchw_tokens(tokens, h, w, prefix)
    sm, ss, mix = _style(B, C, grid)
    with use_backend(backend):
        y = local_style_mix(view, sm, ss, grid=grid, mix=mix)
        y_nchw = local_style_mix(nchw, sm, ss, grid=grid, mix=mix)
        y_cl = local_style_mix(nchw.contiguous(memory_format=torch.channels_last), sm, ss, grid=grid, mix=mix)
        y_id = local_style_mix(view, sm, ss, grid=grid, activation=None)
        y_id_nchw = local_style_mix(nchw, sm, ss, grid=grid, activation=None)
        mean, std = patch_mean_std(view, grid)
        mean_nchw, std_nchw = patch_mean_std(nchw, grid)
    assert torch.equal(tokens, before), "the input tokens were written"
    assert_close(y, y_nchw)
    assert_close(y_id, y_id_nchw)
    assert_close(mean, mean_nchw)
    assert_close(std, std_nchw)
    if backend != "reference":  # the same kernel in the same order as on a channels_last tensor, with x's strides
        assert torch.equal(y, y_cl)
        assert y.stride() == view.stride()
        assert grid_prefix(y) == prefix
        assert torch.equal(grid_as_tokens(y, tokens[:, :prefix])[:, prefix:], y.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "prefix", "h", "w", "C", "grid"), SHAPES)
@pytest.mark.usefixtures("poison_fresh_memory")
def test_out_writes_the_patch_tokens_in_place_and_leaves_the_prefix(backend, B, prefix, h, w, C, grid):
    tokens = _tokens(B, prefix, h, w, C, seed=3)
    sm, ss, mix = _style(B, C, grid, seed=4)
    expected = local_style_mix(_as_nchw_tokens(tokens, h, w, prefix), sm, ss, grid=grid, mix=mix)
    # in place: out is x itself
    inplace = tokens.clone()
    with use_backend(backend):
        view = tokens_as_grid(inplace, h, w, prefix)
        result = local_style_mix(view, sm, ss, grid=grid, mix=mix, out=view)
    assert result is view
    assert torch.equal(inplace[:, :prefix], tokens[:, :prefix]), "prefix tokens changed"
    assert_close(view, expected)
    assert_close(grid_as_tokens(view)[:, prefix:], expected.flatten(2).transpose(1, 2))
    # into the patch tokens of other tokens, from a token view and from an NCHW tensor
    for source in (tokens_as_grid(tokens, h, w, prefix), _as_nchw_tokens(tokens, h, w, prefix)):
        target = _tokens(B, prefix, h, w, C, seed=5)
        target_prefix = target[:, :prefix].clone()
        with use_backend(backend):
            local_style_mix(source, sm, ss, grid=grid, mix=mix, out=tokens_as_grid(target, h, w, prefix))
        assert torch.equal(target[:, :prefix], target_prefix), "prefix tokens of out changed"
        assert_close(tokens_as_grid(target, h, w, prefix), expected)
    # from a token view into a dense channels_last tensor
    dense = torch.empty_like(expected, memory_format=torch.channels_last)
    with use_backend(backend):
        local_style_mix(tokens_as_grid(tokens, h, w, prefix), sm, ss, grid=grid, mix=mix, out=dense)
    assert_close(dense, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "prefix", "h", "w", "C", "grid"), SHAPES[:3])
@pytest.mark.parametrize("tokens_out", [False, True], ids=["grid-loss", "tokens-loss"])
@pytest.mark.usefixtures("poison_fresh_memory")
def test_gradients_through_the_token_view_equal_a_copy(backend, B, prefix, h, w, C, grid, tokens_out):
    """Gradients reach the tokens (zero for the prefix) and the styles as through an NCHW copy. With
    ``tokens_out`` the loss is on ``grid_as_tokens(y, prefix)``, so grad_out itself arrives as a token view."""
    base = _tokens(B, prefix, h, w, C, seed=6)
    sm0, ss0, mix0 = _style(B, C, grid, seed=7)
    gen = torch.Generator().manual_seed(8)
    weight = torch.randn(B, prefix + h * w, C, generator=gen, dtype=torch.float64)

    def run(as_view: bool):
        tokens = base.clone().requires_grad_()
        sm, ss, mix = (t.clone().requires_grad_() for t in (sm0, ss0, mix0))
        with use_backend(backend):
            if as_view:
                x = tokens_as_grid(tokens, h, w, prefix)
            else:
                x = tokens[:, prefix:].transpose(1, 2).reshape(B, C, h, w).contiguous()
            y = local_style_mix(x, sm, ss, grid=grid, mix=mix)
            if tokens_out:
                loss = (grid_as_tokens(y, tokens[:, :prefix] * 2) * weight).sum()
            else:
                loss = (y * weight[:, prefix:].transpose(1, 2).reshape(B, C, h, w)).sum()
            loss.backward()
        return tokens.grad, sm.grad, ss.grad, mix.grad

    for what, got, want in zip(("tokens", "style_mean", "style_std", "mix"), run(True), run(False)):
        assert_close(got, want, GRAD_TOLERANCE[torch.float64], what=f"grad {what}")
    grad_tokens = run(True)[0]
    if not tokens_out:
        assert torch.equal(grad_tokens[:, :prefix], torch.zeros_like(grad_tokens[:, :prefix]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("poison_fresh_memory")
def test_patch_mean_std_gradient_on_the_token_view(backend):
    B, prefix, h, w, C, grid = 2, 1, 6, 4, 5, (3, 2)
    base = _tokens(B, prefix, h, w, C, seed=9)
    gen = torch.Generator().manual_seed(10)
    gm, gs = (torch.randn(B, C, *grid, generator=gen, dtype=torch.float64) for _ in range(2))
    grads = []
    for as_view in (True, False):
        tokens = base.clone().requires_grad_()
        with use_backend(backend):
            x = tokens_as_grid(tokens, h, w, prefix)
            mean, std = patch_mean_std(x if as_view else x.contiguous(), grid)
            ((mean * gm).sum() + (std * gs).sum()).backward()
        grads.append(tokens.grad)
    assert_close(grads[0], grads[1], GRAD_TOLERANCE[torch.float64], what="grad tokens")


@pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the compiled operators")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_token_view_equals_a_channels_last_copy(dtype):
    B, prefix, h, w, C, grid = 2, 1, 8, 8, 24, (3, 3)
    tokens = _tokens(B, prefix, h, w, C, dtype=dtype, seed=11)
    sm, ss, mix = (t.float() for t in _style(B, C, grid, seed=12))
    view = tokens_as_grid(tokens, h, w, prefix)
    copy = view.contiguous(memory_format=torch.channels_last)
    with use_backend("cpp"):
        assert torch.equal(
            local_style_mix(view, sm, ss, grid=grid, mix=mix), local_style_mix(copy, sm, ss, grid=grid, mix=mix)
        )
        out = tokens.clone()
        local_style_mix(tokens_as_grid(out, h, w), sm, ss, grid=grid, mix=mix, out=tokens_as_grid(out, h, w))
    assert torch.equal(out[:, :prefix], tokens[:, :prefix])
    assert_close(
        tokens_as_grid(out, h, w),
        local_style_mix(copy.double(), sm.double(), ss.double(), grid=grid, mix=mix.double()).to(dtype),
        TOLERANCE[dtype],
    )


@pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the compiled operators")
def test_fake_kernels_report_the_token_strides():
    """opcheck compares the fake kernels (shapes and strides under torch.compile) with the real ones."""
    ops = torch.ops.styleda_fast
    B, prefix, h, w, C = 2, 1, 6, 6, 4
    x = tokens_as_grid(_tokens(B, prefix, h, w, C, dtype=torch.float32), h, w)
    tm, ts, mix = (t.float() for t in _style(B, C, (3, 3)))
    mix = mix[:, :, None, None].expand(B, C, 3, 3).contiguous()
    torch.library.opcheck(ops.local_style_mix, (x, tm, ts, mix, 3, 3, True, 1e-5))
    torch.library.opcheck(ops.patch_mean_std, (x, 3, 3, 1e-5))
    mean, std = ops.patch_mean_std(x, 3, 3, 1e-5)
    grad_out = tokens_as_grid(torch.randn(B, prefix + h * w, C), h, w)
    torch.library.opcheck(ops.local_style_mix_backward, (grad_out, x, mean, std, tm, ts, mix, True, True))
    torch.library.opcheck(ops.patch_mean_std_backward, (torch.randn_like(mean), torch.randn_like(std), x, mean, std))
    target = torch.randn(B, prefix + h * w, C)
    torch.library.opcheck(ops.local_style_mix_into, (x, tm, ts, mix, 3, 3, True, 1e-5, tokens_as_grid(target, h, w)))
    for name, args in (
        ("local_style_mix", (x, tm, ts, mix, 3, 3, True, 1e-5)),
        ("local_style_mix_backward", (grad_out, x, mean, std, tm, ts, mix, True, True)),
    ):
        real = getattr(ops, name)(*args)[0]
        assert real.stride() == x.stride(), name


@pytest.mark.skipif("cpp" not in BACKENDS, reason="needs the compiled operators")
def test_torch_compile_on_the_token_view():
    """``torch.compile`` (fullgraph) of a ViT-style augmentation on the token view: forward and gradients equal
    eager. The in-place ``out=`` call compiles with a graph break (its aliasing checks read data pointers, which
    dynamo does not trace) and leaves the prefix tokens as they were."""
    torch._dynamo.reset()
    B, prefix, h, w, C = 2, 1, 6, 6, 8

    def augment(tokens, style_mean, style_std, mix):
        y = local_style_mix(tokens_as_grid(tokens, h, w, prefix), style_mean, style_std, grid=2, mix=mix,
                            activation=None)  # fmt: skip
        return grid_as_tokens(y, tokens[:, :prefix]) * 1.5

    base = _tokens(B, prefix, h, w, C, dtype=torch.float32, seed=13)
    sm0, ss0, mix0 = (t.float() for t in _style(B, C, (2, 2), seed=14))
    results = []
    for fn in (torch.compile(augment, fullgraph=True), augment):
        leaves = [t.clone().requires_grad_() for t in (base, sm0, ss0, mix0)]
        y = fn(*leaves)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach(), *(t.grad for t in leaves)])
    for what, got, want in zip(("y", "tokens", "style_mean", "style_std", "mix"), *results):
        assert_close(got, want, 1e-5, what=what)

    def in_place(tokens, style_mean, style_std):
        grid = tokens_as_grid(tokens, h, w, prefix)
        local_style_mix(grid, style_mean, style_std, grid=1, activation=None, out=grid)
        return tokens

    tokens = base.clone()
    with torch.no_grad():
        torch.compile(in_place)(tokens, sm0[:, :, 0, 0], ss0[:, :, 0, 0])
    expected = local_style_mix(_as_nchw_tokens(base, h, w, prefix), sm0[:, :, 0, 0], ss0[:, :, 0, 0], grid=1,
                               activation=None)  # fmt: skip
    assert torch.equal(tokens[:, :prefix], base[:, :prefix])
    assert_close(tokens_as_grid(tokens, h, w, prefix), expected)


def _backward_ops(tokens_out: bool) -> tuple[torch.Tensor, set[str]]:
    B, prefix, h, w, C = 2, 3, 6, 5, 16
    tokens = _tokens(B, prefix, h, w, C, seed=21).requires_grad_()
    sm, ss, _ = _style(B, C, (2, 1), seed=22)
    weight = torch.randn(B, prefix + h * w, C, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    with use_backend("cpp"):
        y = local_style_mix(tokens_as_grid(tokens, h, w, prefix), sm, ss, grid=(2, 1))
        if tokens_out:  # the grid's gradient arrives as a view of the gradient of new tokens: it must be copied
            loss = (grid_as_tokens(y, tokens[:, :prefix] * 2) * weight).sum()
        else:
            loss = (y * weight[:, prefix:].transpose(1, 2).reshape(B, C, h, w)).sum()
        with torch.profiler.profile() as profile:
            loss.backward()
    return tokens.grad, {event.name for event in profile.events()}


@pytest.mark.usefixtures("poison_fresh_memory")
def test_the_tokens_gradient_reuses_the_kernels_buffer():
    """The kernels' gradient of a token grid already lies in a tokens-shaped buffer: its unwritten prefix rows
    (NaN here) are zeroed and the buffer is the tokens' gradient, no copy. A gradient that arrives as a view of
    another tensor takes the copy (control)."""
    grad, ops = _backward_ops(tokens_out=False)
    assert torch.equal(grad[:, :3], torch.zeros_like(grad[:, :3])) and torch.isfinite(grad).all()
    assert "aten::copy_" not in ops
    grad, ops = _backward_ops(tokens_out=True)
    assert torch.isfinite(grad).all() and "aten::copy_" in ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hook", ["tensor-hook", "autograd-grad"])
def test_the_tokens_gradient_never_aliases_a_kept_grid_gradient(backend, hook):
    """Issue 22 item 5: the tokens' gradient reused the grid-gradient buffer that a hook had kept
    (``grid.register_hook(seen.append)``): zeroing or accumulating ``tokens.grad`` changed the kept gradient. The
    buffer is reused only when nothing else holds it; here the tokens' gradient is a copy."""
    B, prefix, h, w, C = 2, 2, 5, 4, 6
    base = _tokens(B, prefix, h, w, C, seed=31)
    sm, ss, _ = _style(B, C, (1, 1), seed=32)
    weight = torch.randn(B, C, h, w, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    tokens = base.clone().requires_grad_()
    with use_backend(backend):
        grid = tokens_as_grid(tokens, h, w, prefix)
        y = local_style_mix(grid, sm[:, :, 0, 0], ss[:, :, 0, 0], grid=1)
        loss = (y * weight).sum()
        if hook == "tensor-hook":
            seen = []
            grid.register_hook(seen.append)
            loss.backward(retain_graph=True)
            kept, tokens_grad = seen[0], tokens.grad
        else:
            kept, tokens_grad = torch.autograd.grad(loss, [grid, tokens], retain_graph=True)
    want = kept.clone()
    assert torch.equal(tokens_grad[:, prefix:], want.permute(0, 2, 3, 1).reshape(B, h * w, C))
    tokens_grad.zero_()
    assert torch.equal(kept, want), "zeroing the tokens' gradient changed the kept grid gradient"
    if hook == "tensor-hook":
        loss.backward()  # accumulates into tokens.grad
        assert torch.equal(kept, want), "accumulating the tokens' gradient changed the kept grid gradient"


def _in_place_run(as_grid: bool, write: str, backend: str):
    """Tokens (B, prefix + h*w, C) -> a non-leaf copy -> an in-place write into its patch grid -> a loss on the
    tokens: with ``tokens_as_grid`` or with the plain slice view it must equal."""
    B, prefix, h, w, C = 2, 1, 4, 3, 5
    leaf = _tokens(B, prefix, h, w, C, seed=41).requires_grad_()
    scale = torch.rand(C, 1, 1, generator=torch.Generator().manual_seed(42), dtype=torch.float64) + 0.5
    scale.requires_grad_()
    sm, ss, _ = _style(B, C, (1, 1), seed=43)
    gen = torch.Generator().manual_seed(44)
    weight = torch.randn(B, prefix + h * w, C, generator=gen, dtype=torch.float64)
    tokens = leaf * 1.5
    if as_grid:
        grid = tokens_as_grid(tokens, h, w, prefix)
    else:
        grid = tokens[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
    if write == "mul_":
        grid.mul_(scale)
    elif write == "setitem":
        grid[:, :, 1:3, :2] = grid[:, :, 1:3, :2].detach() * 0 + scale[:, :, :1] * 2
    else:  # a style-mixed feature map of other tokens written into it (the gradient reaches both)
        source = (leaf * 0.5 + 1)[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
        with use_backend(backend):
            grid.copy_(local_style_mix(source, sm[:, :, 0, 0], ss[:, :, 0, 0], grid=1, activation=None))
    loss = (tokens * weight).sum() + (grid * grid).sum()
    loss.backward()
    return tokens.detach(), leaf.grad, scale.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("write", ["mul_", "setitem", "copy_"])
def test_in_place_writes_into_the_grid_of_tokens_that_require_grad(backend, write):
    """Issue 22 item 10: in-place writes into ``tokens_as_grid(tokens)`` raised "Output 0 of _TokenGrid is a view and
    is being modified inplace" when the tokens required grad. They now work as on the plain slice view (float64,
    forward values and gradients of the tokens and of what was written) and write into the tokens."""
    got, want = _in_place_run(True, write, backend), _in_place_run(False, write, backend)
    for what, a, b in zip(("tokens", "grad tokens", "grad scale"), got, want):
        if b is None:
            assert a is None, what
        else:
            assert_close(a, b, GRAD_TOLERANCE[torch.float64], what=what)
    leaf = _tokens(2, 1, 2, 2, 3).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):  # as for any view of such a leaf
        tokens_as_grid(leaf, 2, 2).mul_(2)
