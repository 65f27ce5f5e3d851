"""Benchmark family ``vit`` (mining case needs open_clip): style mixing on ViT tokens, read and written in place
through :func:`styleda_fast.tokens_as_grid`, at ViT-B/16's token shape for a 768x768 crop: ``B = 8`` images of
``1 + 48*48`` tokens of ``C = 768`` channels (float32, 57 MB), one style per image (PODA, ``grid=1``) with
uniform mixing and no activation (ViT tokens are not post-ReLU).

Providers of the style-mix cases:

* ``copy``: a copy of the tokens into a preallocated tensor (the memory floor, "x copy");
* ``ours (out=)``: the token view styled into the patch tokens of preallocated output tokens (the class tokens of
  the output are left as they are); ``ours (in place)``: ``out=`` the token view itself; ``ours``: a fresh output;
* ``ours dense (out=)``, ``ours dense``: the same on a contiguous channels_last ``(8, 768, 48, 48)`` tensor, to
  show that the token view (batch stride ``2305 * 768``) costs nothing over a dense tensor;
* forward+backward: the leaves are the tokens (``ours``: through ``tokens_as_grid``, whose backward takes the
  kernels' tokens-shaped gradient buffer as the tokens' gradient, prefix rows zeroed, where ``eager``'s slicing
  zero-fills and copies) or the dense tensor (``ours dense``); the incoming gradient has the layout it has in a ViT
  (a token grid; channels_last for dense);
* ``eager``: the fastest plain PyTorch on the tokens (``torch.var_mean`` over the token dimension, then the affine
  map; :func:`style_mix_tokens`), ``compile``: ``torch.compile`` of the same function.

The mining case gives styles per second of ``mine_styles`` on ViT-B/16 tokens (random weights; a few items and
steps, the tail after ``split_block`` blocks) against the plain PIN loop on tokens
(:func:`styleda_fast.compat.public_code.pin_on_tokens`).
Before timing, :func:`check_baselines` asserts that the style-mix providers compute the same numbers (float64);
``tests/mining/test_engine_vit.py`` checks that ``mine_styles`` on tokens equals the plain loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from styleda_fast.bench.harness import Case, forward_backward
from styleda_fast.compat.public_code import pin_on_tokens
from styleda_fast.nn.tokens import grid_as_tokens, tokens_as_grid
from styleda_fast.ops.style_mix import local_style_mix


def style_mix_tokens(tokens, style_mean, style_std, mix, eps: float = 1e-5, prefix: int = 1):
    """PODA's global style mixing on ViT tokens as a user writes it: statistics over the patch tokens (dim 1) of
    ``tokens (B, prefix + L, C)``; ``style_mean``, ``style_std``, ``mix`` ``(B, C)``. Returns the styled patch
    tokens ``(B, L, C)`` (identity activation)."""
    patches = tokens[:, prefix:]
    var, mean = torch.var_mean(patches, dim=1, keepdim=True)
    std = (var + eps).sqrt()
    s = mix[:, None, :]
    target_mean = s * mean + (1 - s) * style_mean[:, None, :]
    target_std = s * std + (1 - s) * style_std[:, None, :]
    return (patches - mean) * (target_std / std) + target_mean


def _inputs(batch, side, channels, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = (torch.randn(batch, 1 + side * side, channels, generator=gen) * 2 + 1).to(device, dtype)
    style_mean = torch.randn(batch, channels, generator=gen).to(device, dtype)
    style_std = (torch.rand(batch, channels, generator=gen) + 0.5).to(device, dtype)
    mix = torch.rand(batch, channels, generator=gen).to(device, dtype)
    return tokens, style_mean, style_std, mix


def _grid_as_patch_tokens(grid):
    return grid.permute(0, 2, 3, 1).flatten(1, 2)


def check_baselines(device: torch.device) -> None:
    """The eager baseline, ours on the token view (fresh, out= and in place) and ours on a dense tensor agree
    (float64, small shape), and the prefix tokens stay as they were."""
    tokens, sm, ss, mix = _inputs(2, 5, 6, device, torch.float64, seed=1)
    side = 5
    expected = style_mix_tokens(tokens, sm, ss, mix)
    view = tokens_as_grid(tokens, side, side)
    dense = view.contiguous(memory_format=torch.channels_last)
    out_tokens = torch.randn_like(tokens)
    cls = out_tokens[:, :1].clone()
    results = {
        "ours": local_style_mix(view, sm, ss, grid=1, mix=mix, activation=None),
        "ours dense": local_style_mix(dense, sm, ss, grid=1, mix=mix, activation=None),
        "ours (out=)": local_style_mix(
            view, sm, ss, grid=1, mix=mix, activation=None, out=tokens_as_grid(out_tokens, side, side)
        ),  # fmt: skip
    }
    assert torch.equal(out_tokens[:, :1], cls), "out=: the class tokens changed"
    in_place = tokens.clone()
    results["ours (in place)"] = local_style_mix(tokens_as_grid(in_place, side, side), sm, ss, grid=1, mix=mix,
                                                 activation=None, out=tokens_as_grid(in_place, side, side))  # fmt: skip
    assert torch.equal(in_place[:, :1], tokens[:, :1]), "in place: the class tokens changed"
    for name, y in results.items():
        torch.testing.assert_close(
            _grid_as_patch_tokens(y), expected, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}"
        )


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    check_baselines(device)
    batch, side, channels = (2, 12, 768) if quick else (8, 48, 768)
    tokens, sm, ss, mix = _inputs(batch, side, channels, device)
    compiled = torch.compile(style_mix_tokens) if compile_baseline else None
    view = tokens_as_grid(tokens, side, side)
    dense = view.contiguous(memory_format=torch.channels_last)
    out_tokens = torch.empty_like(tokens)
    out_view = tokens_as_grid(out_tokens, side, side)
    out_dense = torch.empty_like(dense)
    in_place_tokens = tokens.clone()
    in_place_view = tokens_as_grid(in_place_tokens, side, side)
    nbytes = tokens.numel() * tokens.element_size()
    shape = f"{tuple(tokens.shape)}"

    def ours(x, **kw):
        return lambda: local_style_mix(x, sm, ss, grid=1, mix=mix, activation=None, **kw)

    forward = {
        "copy": lambda: out_tokens.copy_(tokens),
        "ours (out=)": ours(view, out=out_view),
        "ours dense (out=)": ours(dense, out=out_dense),
        "ours (in place)": ours(in_place_view, out=in_place_view),
        "ours": ours(view),
        "ours dense": ours(dense),
    }
    if compiled is not None:
        forward["compile"] = lambda: compiled(tokens, sm, ss, mix)
    forward["eager"] = lambda: style_mix_tokens(tokens, sm, ss, mix)
    result = [Case("vit", "tokens forward", shape, forward, replaces="eager", bytes_moved=2 * nbytes)]

    gen = torch.Generator().manual_seed(2)
    grad_grid = torch.randn(batch, channels, side, side, generator=gen).to(device)
    grad_tokens = _grid_as_patch_tokens(grad_grid).contiguous()  # the same gradient, as patch tokens (B, L, C)
    grad_dense = grad_grid.contiguous(memory_format=torch.channels_last)
    # as it reaches a token grid from the ViT blocks after it (grid_as_tokens' backward): a token-grid view
    grad_view = tokens_as_grid(torch.cat([grad_tokens[:, :1] * 0, grad_tokens], dim=1), side, side)
    leaves = tg, smg, ssg, mixg = tuple(t.clone().requires_grad_() for t in (tokens, sm, ss, mix))
    dense_leaves = (dense.clone().requires_grad_(), smg, ssg, mixg)
    dense_leaf = dense_leaves[0]

    def ours_tokens():
        return local_style_mix(tokens_as_grid(tg, side, side), smg, ssg, grid=1, mix=mixg, activation=None)

    backward = {
        "copy": lambda: out_tokens.copy_(tokens),
        "ours": forward_backward(ours_tokens, leaves, grad_view),
        "ours dense": forward_backward(
            lambda: local_style_mix(dense_leaf, smg, ssg, grid=1, mix=mixg, activation=None), dense_leaves, grad_dense
        ),
    }
    if compiled is not None:
        backward["compile"] = forward_backward(lambda: compiled(tg, smg, ssg, mixg), leaves, grad_tokens)
    backward["eager"] = forward_backward(lambda: style_mix_tokens(tg, smg, ssg, mixg), leaves, grad_tokens)
    # ideal traffic: forward reads x and writes y; backward reads x and dy and writes dx
    result.append(Case("vit", "tokens forward+backward", shape, backward, replaces="eager", bytes_moved=5 * nbytes))
    try:
        result.append(_mining_case(device, quick, full))
    except ImportError as exc:  # open_clip is optional
        print(f"vit: no mining case ({exc}; pip install open_clip_torch)")
    return result


def _mining_case(device: torch.device, quick: bool, full: bool) -> Case:
    import open_clip

    from styleda_fast.mining.engine import clip_image_head, clip_image_tail, mine_styles

    torch.manual_seed(0)
    image_size = 64 if quick else 224  # 4x4 or 14x14 patch tokens
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=image_size)
    visual = model.visual.to(device).eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    items, steps, split_block = (2, 1, 10) if quick else (8, 2, 6) if full else (4, 1, 8)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(items, 3, image_size, image_size, generator=gen).to(device)
    targets = F.normalize(torch.randn(items, 512, generator=gen), dim=-1).to(device)
    with torch.no_grad():
        content = clip_image_head(visual, split_block=split_block)(images)  # a token grid holding the class token
        tokens = grid_as_tokens(content).clone()  # the same tokens, (items, 1 + h*w, 768), for the eager loop
    tail = clip_image_tail(visual, split_block=split_block)

    def ours():
        mine_styles(tail, content, targets, steps=steps, clamp_std=False, final_clamp=False, batch_size=items)

    providers = {"ours": ours, "eager": lambda: pin_on_tokens(visual, split_block, tokens, targets, steps)}
    name = f"mine {items} styles, {steps} step{'s' * (steps > 1)}, tail {12 - split_block} blocks"
    return Case("vit", name, f"{tuple(tokens.shape)}", providers, "eager", floor=None, items=(items, "styles"))
