"""Benchmark family ``style_mix``: ``local_style_mix`` at the FAMix shape (8, 256, 192, 192), FAMix (grid 3, a
style per patch, Beta mixing) and PODA (global, uniform mixing), forward and forward+backward.

Baselines: ``public`` (``reference_public.famix_transfer`` / ``poda_transfer``: the public code's loops and
CPU-built maps), ``eager`` (:func:`style_mix_reshape`, the fastest plain PyTorch a user would write: patches as a
reshape) and ``compile`` (``torch.compile`` of the same function); ``--full`` adds ``reference``, the general
index-add specification (any grid; 10-17 s per call at this shape on 2 CPU cores) and the PODA forward+backward
case (the same backward kernel as FAMix's). Before timing,
:func:`check_baselines` asserts that all of them compute the same numbers as ours (float64, small shape).
"""

from __future__ import annotations

import random

import torch

from styleda_fast.bench.harness import Case, forward_backward
from styleda_fast.compat.public_code import famix_transfer, poda_transfer
from styleda_fast.ops.style_mix import local_style_mix, reference


def style_mix_reshape(x, style_mean, style_std, grid: int, mix, eps: float = 1e-5):
    """Patch-wise AdaIN with mixing and ReLU, as a user writes it when the grid divides the size: the patches are
    a view ``(B, C, g, H/g, g, W/g)``. ``style_mean``/``style_std`` ``(B, C, 1 or g, 1 or g)``, ``mix (B, C)``."""
    B, C, H, W = x.shape
    g = grid
    patches = x.view(B, C, g, H // g, g, W // g)
    mean = patches.mean(dim=(3, 5), keepdim=True)
    std = (patches.var(dim=(3, 5), keepdim=True, unbiased=True) + eps).sqrt()
    s = mix.view(B, C, 1, 1, 1, 1)
    target_mean = s * mean + (1 - s) * style_mean[:, :, :, None, :, None]
    target_std = s * std + (1 - s) * style_std[:, :, :, None, :, None]
    return torch.relu((patches - mean) * (target_std / std) + target_mean).view(B, C, H, W)


def _famix_public_inputs(style_mean, style_std):
    """FAMix's ``most_list`` and dict-of-lists bank holding exactly our per-patch styles (one key per patch and
    image, one style per key), so that the public draw picks the same styles as ours."""
    B, C, g, _ = style_mean.shape
    most_list = [[f"p{p}b{b}" for b in range(B)] for p in range(g * g)]
    saved_params = {}
    for p in range(g * g):
        i, j = divmod(p, g)
        for b in range(B):
            saved_params[f"p{p}b{b}_mu"] = [style_mean[b, :, i, j].reshape(C, 1, 1).cpu()]
            saved_params[f"p{p}b{b}_std"] = [style_std[b, :, i, j].reshape(C, 1, 1).cpu()]
    return most_list, saved_params


def _inputs(shape, grid, per_patch, mix_distribution, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    x = (torch.randn(shape, generator=gen) * 2 + 1).to(device, dtype)
    style_shape = (B, C, grid, grid) if per_patch else (B, C, 1, 1)
    style_mean = torch.randn(style_shape, generator=gen).to(device, dtype)
    style_std = (torch.rand(style_shape, generator=gen) + 0.5).to(device, dtype)
    mix = mix_distribution.sample((B, C)).to(device, dtype)
    return x, style_mean, style_std, mix


def _public(label, x, style_mean, style_std, mix):
    if label == "poda":
        return lambda: poda_transfer(x, style_mean, style_std, mix)
    most_list, saved_params = _famix_public_inputs(style_mean, style_std)
    rng = random.Random(0)
    return lambda: famix_transfer(x, most_list, saved_params, mix[:, :, None, None], rng)


SETTINGS = {  # label: grid, a style per patch, mixing law
    "famix": (3, True, torch.distributions.Beta(0.1, 0.1)),
    "poda": (1, False, torch.distributions.Uniform(0.0, 1.0)),
}


def check_baselines(device: torch.device) -> None:
    """Every provider computes the same numbers as ours: the reshape baseline, the public code and the general
    reference, in float64 on a small shape that both grids divide (so the timed comparisons are of equals)."""
    for label, (grid, per_patch, law) in SETTINGS.items():
        x, sm, ss, mix = _inputs((2, 3, 12, 15), grid, per_patch, law, device, torch.float64, seed=1)
        ours = local_style_mix(x, sm, ss, grid=grid, mix=mix)
        results = {
            "eager (reshape)": style_mix_reshape(x, sm, ss, grid, mix),
            "reference": reference.local_style_mix(x, sm, ss, (grid, grid), mix[:, :, None, None]),
            "public": _public(label, x, sm, ss, mix)(),
        }
        for name, y in results.items():
            torch.testing.assert_close(y, ours, rtol=1e-9, atol=1e-9, msg=lambda m, n=f"{label} {name}": f"{n}: {m}")


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    check_baselines(device)
    shape = (2, 64, 48, 48) if quick else (8, 256, 192, 192)
    compiled = torch.compile(style_mix_reshape) if compile_baseline else None
    result = []
    for label, (grid, per_patch, law) in SETTINGS.items():
        backward = full or label == "famix"  # the PODA backward runs the same kernel as FAMix's: --full only
        result += _setting(label, shape, grid, per_patch, law, device, compiled, full, backward)
    order = {"forward": 0, "forward+backward": 1}  # forwards first: they are what PODA/FAMix run
    return sorted(result, key=lambda c: order[c.name.split(" ", 1)[1]])


def _setting(label, shape, grid, per_patch, law, device, compiled, full, with_backward) -> list[Case]:
    """Forward and forward+backward cases of one setting (grid, style per patch or per image, mixing law)."""
    x, style_mean, style_std, mix = _inputs(shape, grid, per_patch, law, device)
    nbytes = x.numel() * x.element_size()
    out = torch.empty_like(x)
    forward = {
        "copy": lambda: out.copy_(x),
        "ours (out=)": lambda: local_style_mix(x, style_mean, style_std, grid=grid, mix=mix, out=out),
        "ours": lambda: local_style_mix(x, style_mean, style_std, grid=grid, mix=mix),
        "clone": lambda: x.clone(),
    }
    if compiled is not None:
        forward["compile"] = lambda: compiled(x, style_mean, style_std, grid, mix)
    forward["eager"] = lambda: style_mix_reshape(x, style_mean, style_std, grid, mix)
    forward["public"] = _public(label, x, style_mean, style_std, mix)
    if full:
        ref_args = (style_mean, style_std, (grid, grid), mix[:, :, None, None])
        forward["reference"] = lambda: reference.local_style_mix(x, *ref_args)
    shape_text = str(tuple(x.shape))
    result = [Case("style_mix", f"{label} forward", shape_text, forward, replaces="public", bytes_moved=2 * nbytes)]
    if not with_backward:
        return result

    gen = torch.Generator().manual_seed(2)
    grad = torch.randn(x.shape, generator=gen).to(device)
    leaves = xg, smg, ssg, mixg = tuple(t.clone().requires_grad_() for t in (x, style_mean, style_std, mix))
    backward = {
        "copy": lambda: out.copy_(x),
        "ours": forward_backward(lambda: local_style_mix(xg, smg, ssg, grid=grid, mix=mixg), leaves, grad),
    }
    if compiled is not None:
        backward["compile"] = forward_backward(lambda: compiled(xg, smg, ssg, grid, mixg), leaves, grad)
    backward["eager"] = forward_backward(lambda: style_mix_reshape(xg, smg, ssg, grid, mixg), leaves, grad)
    if full:
        backward["reference"] = forward_backward(
            lambda: reference.local_style_mix(xg, smg, ssg, (grid, grid), mixg[:, :, None, None]), leaves, grad
        )
    # ideal traffic: forward reads x and writes y; backward reads x and dy and writes dx
    result.append(Case("style_mix", f"{label} forward+backward", shape_text, backward, "eager", 5 * nbytes))
    return result
