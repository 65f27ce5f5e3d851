"""Benchmark family ``text``: for ``K`` text targets of ``D = 1024`` (RN50), the noisy projection (forward, one
sample) and the CLIP cosine loss (forward + backward), against the public recipe in eager PyTorch
(``text.reference``: ``normalize`` + ``torch.randn``, ``1 - cosine_similarity``) and its ``torch.compile``; plus the
noisy synthesized features of style mining (forward + backward) at a FAMix patch shape. ``K`` is 19 (one target
per class) and 10,000 (a large prompt bank); ``--full`` adds 380. The floor (``copy``) is a copy of an
output-sized tensor. On a GPU these ops are launch-bound, so :func:`kernel_counts` (printed on CUDA) reports the
kernels each provider launches per call. The setup checks that ours and the recipes agree (noise off).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from styleda_fast.bench.harness import Case, forward_backward
from styleda_fast.ops.text import clip_cosine_loss, noisy_style_features, noisy_text_projection, reference

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


def check_baselines(device: torch.device) -> None:
    """Ours equals the eager recipes (noise scale 0, float64), value and gradient."""
    gen = torch.Generator().manual_seed(5)
    text = torch.randn(7, 16, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(noisy_text_projection(text, 0.0), reference.noisy_text_projection_eager(text, 0.0))
    image = torch.randn(7, 16, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    got = torch.autograd.grad(clip_cosine_loss(image, text, detach_norm=True), image)
    want = torch.autograd.grad(reference.clip_cosine_loss(image, text, True), image)
    torch.testing.assert_close(got, want)
    xn = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64).to(device)
    mean, std = (torch.randn(2, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in "ms")
    grad = torch.randn(xn.shape, generator=gen, dtype=torch.float64).to(device)
    got = torch.autograd.grad(noisy_style_features(xn, mean, std, 0.0), (mean, std), grad)
    want = torch.autograd.grad(reference.noisy_style_features_eager(xn, mean, std, 0.0), (mean, std), grad)
    torch.testing.assert_close(got, want)


def cases(device: torch.device, quick: bool, full: bool, compile_baseline: bool) -> list[Case]:
    check_baselines(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    D = 1024
    result = []
    compiled_noisy = _compile(reference.noisy_text_projection_eager, compile_baseline)
    compiled_loss = _compile(reference.clip_cosine_loss, compile_baseline)
    for K in (19, 380) if quick else (19, 380, 10000) if full else (19, 10000):
        text = F.normalize(torch.randn(K, D, generator=gen), dim=-1).to(device)
        out = torch.empty(K, 1, D, device=device)
        forward = {
            "copy": lambda o=out, t=text: o.copy_(t[:, None]),
            "ours": lambda t=text: noisy_text_projection(t, SIGMA),
            "eager": lambda t=text: reference.noisy_text_projection_eager(t, SIGMA),
        }
        if compiled_noisy is not None:
            forward["compile"] = lambda t=text: compiled_noisy(t, SIGMA)
        result.append(Case("text", f"noisy text K={K}", f"({K}, {D})", forward, "eager", 2 * text.numel() * 4))

        image = torch.randn(K, D, generator=gen).to(device).requires_grad_()
        one = torch.ones((), device=device)
        loss = {
            "copy": lambda o=out, i=image: o.copy_(i.detach()[:, None]),
            "ours": forward_backward(lambda i=image, t=text: clip_cosine_loss(i, t, detach_norm=True), (image,), one),
            "eager": forward_backward(lambda i=image, t=text: reference.clip_cosine_loss(i, t, True), (image,), one),
        }
        if compiled_loss is not None:
            loss["compile"] = forward_backward(lambda i=image, t=text: compiled_loss(i, t, True), (image,), one)
        # ideal: forward reads image and text; backward reads both again and writes grad_image
        result.append(Case("text", f"cosine loss K={K} fwd+bwd", f"({K}, {D})", loss, "eager", 5 * image.numel() * 4))

    shape = (4, 64, 32, 32) if quick else (16, 256, 64, 64)  # FAMix mining: selected 64x64 patches of layer1
    B, C = shape[:2]
    xn = torch.randn(shape, generator=gen).to(device)
    mean = torch.randn(B, C, generator=gen).to(device).requires_grad_()
    std = (torch.rand(B, C, generator=gen) + 0.5).to(device).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(device)
    y = torch.empty_like(xn)
    features = {
        "copy": lambda: y.copy_(xn),
        "ours": forward_backward(lambda: noisy_style_features(xn, mean, std, FEATURE_NOISE), (mean, std), grad),
        "eager": forward_backward(
            lambda: reference.noisy_style_features_eager(xn, mean, std, FEATURE_NOISE), (mean, std), grad
        ),
    }
    compiled_features = _compile(reference.noisy_style_features_eager, compile_baseline)
    if compiled_features is not None:
        features["compile"] = forward_backward(
            lambda: compiled_features(xn, mean, std, FEATURE_NOISE), (mean, std), grad
        )
    # ideal: forward reads xn, writes y; backward reads xn and dy
    result.append(Case("text", "noisy features fwd+bwd", str(shape), features, "eager", 4 * xn.numel() * 4))

    if device.type == "cuda":
        print("kernels per call (torch.profiler):")
        for case in result:
            counts = kernel_counts({k: v for k, v in case.providers.items() if k != "copy"}, device)
            print(f"  {case.name:28} " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return result
