"""Benchmark cases of the text family, for ``styleda-fast bench --family text``.

For ``K`` in {19, 380, 10000} text targets of ``D = 1024`` (RN50): the noisy projection (forward, one sample) and
the CLIP cosine loss (forward + backward), against the eager recipe of :mod:`styleda_fast.reference_text` and its
``torch.compile``; plus the noisy synthesized features of style mining (forward + backward) at a FAMix patch shape.
The floor (``copy``) is a copy of an output-sized tensor. On a GPU these ops are launch-bound, so
:func:`kernel_counts` (printed by :func:`text_cases` on CUDA) reports the kernels each provider launches per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from styleda_fast import reference_text
from styleda_fast.text import clip_cosine_loss, noisy_style_features, noisy_text_projection

if TYPE_CHECKING:
    from styleda_fast.bench import Case

SIGMA = 0.03
FEATURE_NOISE = 0.1


def kernel_counts(providers: dict[str, Callable[[], object]], device: torch.device) -> dict[str, int]:
    """GPU kernels launched by one call of each provider (after a warm-up call), with torch.profiler. CUDA only."""
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    for name, fn in providers.items():
        fn()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        counts[name] = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def _compile(fn, enabled: bool):
    """torch.compile with static shapes (one graph per K; dynamic shapes trip on torch.randn with a symbolic size)."""
    return torch.compile(fn, dynamic=False) if enabled else None


def text_cases(device: torch.device, quick: bool, compile_baseline: bool) -> list[Case]:
    """Noisy projection and cosine loss for K in {19, 380, 10000} (quick: {19, 380}), D = 1024; noisy features."""
    from styleda_fast.bench import Case, _forward_backward  # styleda_fast.bench imports this module

    gen = torch.Generator(device="cpu").manual_seed(0)
    D = 1024
    cases = []
    compiled_noisy = _compile(reference_text.noisy_text_projection_eager, compile_baseline)
    compiled_loss = _compile(reference_text.clip_cosine_loss, compile_baseline)
    for K in (19, 380) if quick else (19, 380, 10000):
        text = F.normalize(torch.randn(K, D, generator=gen), dim=-1).to(device)
        out = torch.empty(K, 1, D, device=device)
        forward = {
            "copy": lambda o=out, t=text: o.copy_(t[:, None]),
            "eager": lambda t=text: reference_text.noisy_text_projection_eager(t, SIGMA),
            "ours": lambda t=text: noisy_text_projection(t, SIGMA),
        }
        if compiled_noisy is not None:
            forward["compile"] = lambda t=text: compiled_noisy(t, SIGMA)
        cases.append(Case("text", f"noisy text K={K}", f"({K}, {D})", 2 * text.numel() * 4, forward))

        image = torch.randn(K, D, generator=gen).to(device).requires_grad_()
        target = text
        one = torch.ones((), device=device)
        loss = {
            "copy": lambda o=out, t=image: o.copy_(t.detach()[:, None]),
            "eager": _forward_backward(
                lambda i=image, t=target: reference_text.clip_cosine_loss(i, t, True), (image,), one
            ),
            "ours": _forward_backward(
                lambda i=image, t=target: clip_cosine_loss(i, t, detach_norm=True), (image,), one
            ),
        }
        if compiled_loss is not None:
            loss["compile"] = _forward_backward(lambda i=image, t=target: compiled_loss(i, t, True), (image,), one)
        # ideal: forward reads image and text; backward reads both again and writes grad_image
        cases.append(Case("text", f"cosine loss K={K} fwd+bwd", f"({K}, {D})", 5 * image.numel() * 4, loss))

    shape = (4, 64, 32, 32) if quick else (16, 256, 64, 64)  # FAMix mining: selected 64x64 patches of layer1
    B, C = shape[:2]
    xn = torch.randn(shape, generator=gen).to(device)
    mean = torch.randn(B, C, generator=gen).to(device).requires_grad_()
    std = (torch.rand(B, C, generator=gen) + 0.5).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    y = torch.empty_like(xn)
    compiled_features = _compile(reference_text.noisy_style_features_eager, compile_baseline)
    features = {
        "copy": lambda: y.copy_(xn),
        "eager": _forward_backward(
            lambda: reference_text.noisy_style_features_eager(xn, mean, std, FEATURE_NOISE), (mean, std), grad
        ),
        "ours": _forward_backward(lambda: noisy_style_features(xn, mean, std, FEATURE_NOISE), (mean, std), grad),
    }
    if compiled_features is not None:
        features["compile"] = _forward_backward(
            lambda: compiled_features(xn, mean, std, FEATURE_NOISE), (mean, std), grad
        )
    # ideal: forward reads xn, writes y; backward reads xn and dy
    cases.append(Case("text", "noisy features fwd+bwd", str(shape), 4 * xn.numel() * 4, features))

    if device.type == "cuda":
        print("kernels per call (torch.profiler):")
        for case in cases:
            counts = kernel_counts({k: v for k, v in case.providers.items() if k != "copy"}, device)
            print(f"  {case.name:28} " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return cases
