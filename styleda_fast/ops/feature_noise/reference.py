"""Plain-PyTorch references of the feature-noise operation (the math: ``ops/text/README.md``).

:func:`feature_noise` specifies, bit for bit, the standard normals ``noisy_style_features`` draws for a
``(seed, offset)`` from the counter-based generator of :mod:`styleda_fast.ops.philox`; the benchmarks use
:func:`noisy_style_features_eager` (``torch.randn`` noise) as their baseline.
"""

from __future__ import annotations

import torch

from styleda_fast.ops.philox import MASK, philox_normal4

FEATURE_TAG = 0x46454154  # "FEAT": counter word 3 of the feature noise
FEATURE_GROUPS = 256  # L: the feature noise comes in chunks of 4*L elements, one counter per 4 elements


def feature_noise(numel: int, seed: int, offset: int = 0) -> torch.Tensor:
    """The standard normals of ``noisy_style_features`` for element ``e`` of the flattened (contiguous) features.

    Elements come in chunks of ``4*L`` (``L = FEATURE_GROUPS``): ``e = chunk*4L + q*L + j`` is output ``q`` of the
    counter ``(g mod 2^32, g div 2^32, offset, FEATURE_TAG)`` with ``g = chunk*L + j``. Shape ``(numel,)``, float64.
    """
    chunks = -(-numel // (4 * FEATURE_GROUPS))
    g = torch.arange(chunks * FEATURE_GROUPS, dtype=torch.int64)
    normals = philox_normal4(seed, g & MASK, g >> 32, offset, FEATURE_TAG)
    return torch.stack([n.view(chunks, FEATURE_GROUPS) for n in normals], dim=1).flatten()[:numel]


def _per_item(p: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` statistics -> broadcastable to ``xn (B, C, *spatial)``."""
    return p.reshape(*p.shape, *([1] * (xn.dim() - 2)))


def noisy_style_features(xn, mean, std, feature_noise_scale: float, eps: torch.Tensor) -> torch.Tensor:
    """``relu(std * xn + mean) + feature_noise_scale * eps``: xn ``(B, C, ...)``, mean/std ``(B, C)``, eps like xn."""
    return torch.relu(_per_item(std, xn) * xn + _per_item(mean, xn)) + feature_noise_scale * eps


def noisy_style_features_eager(xn, mean, std, feature_noise_scale: float, generator=None) -> torch.Tensor:
    """The eager recipe (the benchmark baseline): the same, with ``torch.randn`` noise."""
    eps = torch.randn(xn.shape, generator=generator, device=xn.device, dtype=xn.dtype)
    return noisy_style_features(xn, mean, std, feature_noise_scale, eps)
