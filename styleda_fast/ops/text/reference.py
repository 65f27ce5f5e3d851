"""Plain-PyTorch references of the text-side operations (the math: ``README.md`` next to this file).

Every fused kernel of :mod:`styleda_fast.ops.text` is tested against these functions (run in float64), and the
benchmarks use the ``*_eager`` recipes (``torch.randn`` noise, the way a user would write it) as their baselines.

The noise of the fused kernels is specified here too, bit for bit: :func:`text_noise` gives the standard normals
the kernels draw for a ``(seed, offset)`` from the counter-based generator of :mod:`styleda_fast.ops.philox`,
computed in float64 from the same uniforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from styleda_fast.ops.feature_noise.reference import (  # noqa: F401  (imported from here by mining and the bench)
    feature_noise,
    noisy_style_features,
    noisy_style_features_eager,
)
from styleda_fast.ops.philox import philox_normal4

TEXT_TAG = 0x54455854  # "TEXT": counter word 3 of the text noise


def text_noise(rows: int, samples: int, dim: int, seed: int, offset: int = 0) -> torch.Tensor:
    """The ``(rows, samples, dim)`` standard normals of ``noisy_text_projection`` for ``(seed, offset)`` (float64).

    With ``Q = ceil(dim / 4)``, coordinate ``d = q*Q + j`` of sample ``s`` of row ``k`` is output ``q`` of the counter
    ``(j, offset + s, k, TEXT_TAG)``.
    """
    Q = (dim + 3) // 4
    j = torch.arange(Q, dtype=torch.int64)[None, None, :]
    s = (offset + torch.arange(samples, dtype=torch.int64))[None, :, None]
    k = torch.arange(rows, dtype=torch.int64)[:, None, None]
    return torch.cat(philox_normal4(seed, j, s, k, TEXT_TAG), dim=-1)[..., :dim]


# the operations


def noisy_text_projection(text: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
    """``normalize(normalize(text) + sigma * eps)``: text ``(K, D)``, eps ``(K, S, D)`` -> ``(K, S, D)`` unit rows."""
    return F.normalize(F.normalize(text, dim=-1)[:, None, :] + sigma * eps, dim=-1)


def noisy_text_projection_eager(text: torch.Tensor, sigma: float, samples: int = 1, generator=None) -> torch.Tensor:
    """The eager recipe (the benchmark baseline): the same, with ``torch.randn`` noise. ``(K, D)`` -> ``(K, S, D)``."""
    eps = torch.randn(
        (text.shape[0], samples, text.shape[1]), generator=generator, device=text.device, dtype=text.dtype
    )
    return noisy_text_projection(text, sigma, eps)


def clip_cosine_loss(image: torch.Tensor, text: torch.Tensor, detach_norm: bool = False) -> torch.Tensor:
    """``mean(1 - cos(image, text))`` over rows; ``image (B, D)``, ``text`` broadcastable to it.

    ``detach_norm=True`` is the public PODA/FAMix recipe: the image embedding divided by its own norm, detached
    from the graph, then ``torch.cosine_similarity`` with the text target.
    """
    if detach_norm:
        image = image / image.norm(dim=-1, keepdim=True).detach()
    return (1 - torch.cosine_similarity(text, image, dim=-1)).mean()


@torch.no_grad()
def encode_prompts_manual(model, tokenizer, descriptions, templates, normalize_templates: bool = False):
    """The public recipe, one description at a time: encode all its template sentences, average, normalize.

    Returns ``(K, D)`` float32 on the model's device.
    """
    device = next(model.parameters()).device
    rows = []
    for description in descriptions:
        tokens = tokenizer([t.format(description) for t in templates]).to(device)
        emb = model.encode_text(tokens).float()
        if normalize_templates:
            emb = F.normalize(emb, dim=-1)
        emb = emb.mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)
