"""Public API of the feature-noise family: :func:`noisy_style_features`, the synthesized features of style mining,
``relu(std * xn + mean)``, plus fresh seeded noise on every call (the second hypothesis of the package), without
storing the noise. Noise and seeds follow :mod:`styleda_fast.ops.philox` (the same generator as
:func:`styleda_fast.ops.text.noisy_text_projection`); the math: ``ops/text/README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.backend import run_op
from styleda_fast.core.checks import acc_dtype, check_features, check_int, check_number, per_item
from styleda_fast.ops.feature_noise import _ops
from styleda_fast.ops.philox import resolve_seed

__all__ = ["noisy_style_features"]


def noisy_style_features(
    xn: Tensor,
    mean: Tensor,
    std: Tensor,
    feature_noise: float,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    offset: int = 0,
) -> Tensor:
    """Synthesized features of style mining with fresh noise: ``relu(std * xn + mean) + feature_noise * eps``.

    ``xn`` is the normalized content (``(x - mean0) / std0``), ``mean``/``std`` the trainable style;
    ``eps ~ N(0, 1)`` per element is drawn inside the kernel from ``(seed, offset)`` (a new seed per call by default,
    so each optimization step gets a new draw). The noise is added after the ReLU (the synthesized features are
    perturbed, not the style), so the backward needs only the ReLU mask, recomputed from ``xn``, ``mean`` and
    ``std``: the noise is neither stored nor regenerated. The ``std >= 0`` clamp of PODA's PIN stays with the caller.

    Args:
        xn: ``(B, C, H, W)`` float16/bfloat16/float32/float64 (made contiguous).
        mean, std: ``(C,)``, ``(B, C)`` or ``(B, C, 1, 1)`` (PODA's/FAMix's parameter shape).
        feature_noise: standard deviation of the added noise, ``>= 0`` (``0``: plain ``relu(std*xn + mean)``).
        seed: 64-bit seed in ``[0, 2^63 - 1)``; default: drawn from ``generator`` (torch's global one if None).
        generator: where to draw the seed from when ``seed`` is None.
        offset: stream number in ``[0, 2^32)``, e.g. the step, for a fixed seed (same seed and offset, same noise).
    Returns:
        ``(B, C, H, W)`` in xn's dtype. Differentiable with respect to ``xn``, ``mean`` and ``std`` (gradients in
        their own shapes). CPU and CUDA draw different (equally distributed) noise for one seed.
    """
    check_features(xn, "xn")
    B, C = xn.shape[:2]
    acc = acc_dtype(xn.dtype)
    mean = per_item(mean, "mean", B, C, xn.device, acc)
    std = per_item(std, "std", B, C, xn.device, acc)
    feature_noise = check_number(feature_noise, "feature_noise")
    offset = check_int(offset, "offset", 0, 2**32 - 1)
    seed = resolve_seed(seed, generator)
    return run_op(_ops.NOISY_STYLE_FEATURES, xn.contiguous(), mean, std, feature_noise, seed, offset)
