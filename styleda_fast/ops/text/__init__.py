"""Public API of the text family: CLIP text targets, their noisy projections and the style-mining loss (the math:
``README.md`` next to this file). ``noisy_style_features`` lives in :mod:`styleda_fast.ops.feature_noise` (a
feature-side operator) and is re-exported here.

* :func:`encode_prompts`: CLIP text targets, one per description, averaged over prompt templates (PODA/FAMix).
* :func:`noisy_text_projection`: Gaussian noise on the text targets, projected back to the unit sphere, drawn from a
  seed inside one fused kernel (the hypothesis the package was made to test).
* :func:`clip_cosine_loss`: the style-mining loss ``mean(1 - cos(image, text))``, forward and backward fused.

Noise and seeds. The kernels draw standard normals with a counter-based generator (Philox4x32-10, keyed by a 64-bit
seed, with a counter naming the element), so a result depends only on ``(seed, offset)`` and the input, never on
thread count or launch order. ``seed=None`` draws the seed from ``generator`` (default: torch's global generator,
so ``torch.manual_seed`` makes runs reproducible). The exact streams are specified by
:mod:`styleda_fast.ops.text.reference`; **CPU and CUDA are not promised to return the same numbers for one seed**:
treat them as different, equally distributed draws (both use the same counters and Box-Muller transform, but the
CPU kernel computes ``log``/``sqrt``/``sin``/``cos`` with its own float32 polynomials and the GPU with its math
library, so values agree only to a few float32 ulps, and the noise is drawn in float32 for every input dtype). For
one device and backend, the same seed and inputs give the same output bit for bit, whatever the thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from styleda_fast.core.backend import run_op
from styleda_fast.core.checks import (
    check_bool,
    check_float_tensor,
    check_int,
    check_number,
    require_fits,
)
from styleda_fast.ops.feature_noise import noisy_style_features
from styleda_fast.ops.philox import draw_seed, resolve_seed
from styleda_fast.ops.text import _ops
from styleda_fast.ops.text.prompts import IMAGENET_TEMPLATES

__all__ = ["clip_cosine_loss", "draw_seed", "encode_prompts", "noisy_style_features", "noisy_text_projection"]


def encode_prompts(
    model,
    tokenizer,
    descriptions: str | Sequence[str],
    templates: Sequence[str] = IMAGENET_TEMPLATES,
    *,
    batch_size: int = 256,
    normalize_templates: bool = False,
) -> Tensor:
    """CLIP text targets: for each description, its template sentences encoded, averaged, then L2-normalized.

    The PODA/FAMix recipe : ``template.format(description)`` for every template, ``model.encode_text``,
    mean over templates, divide by the norm. Sentences of all descriptions are encoded together in batches of
    ``batch_size`` (a batch may hold several descriptions or part of one) under ``torch.no_grad()`` on the model's
    device; the model's train/eval mode is left as it is.

    Args:
        model: a CLIP model with ``encode_text(tokens)`` (e.g. ``open_clip.create_model("RN50")``).
        tokenizer: maps a list of ``N`` strings to ``(N, context_length)`` token ids (e.g. ``open_clip.get_tokenizer``).
        descriptions: ``K`` descriptions (a single string counts as one), e.g. from :func:`famix_descriptions`.
        templates: format strings with one ``{}`` each; default the 80 ImageNet templates.
        batch_size: sentences per ``encode_text`` call.
        normalize_templates: normalize each sentence embedding before averaging (CLIP's zero-shot classifier
            recipe). Default ``False``: the PODA/FAMix recipe averages the raw embeddings.
    Returns:
        ``(K, D)`` float32 unit rows on the model's device (``D = 1024`` for RN50).
    """
    if isinstance(descriptions, str):
        descriptions = [descriptions]
    descriptions = list(descriptions)
    if not descriptions or not all(isinstance(d, str) for d in descriptions):
        raise ValueError("descriptions must be a non-empty list of strings")
    templates = list(templates)
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError("templates must be a non-empty list of format strings, each with a '{}'")
    check_int(batch_size, "batch_size", 1, 2**31 - 1)
    if not hasattr(model, "encode_text"):
        raise TypeError(f"model must have an encode_text method (a CLIP model), got {type(model).__name__}")
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    T = len(templates)
    sentences = [t.format(d) for d in descriptions for t in templates]  # description-major: row i -> i // T
    owner = torch.arange(len(sentences), device=device) // T
    sums = None
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            stop = min(start + batch_size, len(sentences))
            tokens = tokenizer(sentences[start:stop]).to(device)
            emb = model.encode_text(tokens).float()
            if normalize_templates:
                emb = F.normalize(emb, dim=-1)
            if sums is None:
                sums = emb.new_zeros((len(descriptions), emb.shape[1]))
            first, last = start // T, (stop - 1) // T
            # per-description sums of this batch as a matmul with 0/1 membership (deterministic, unlike index_add)
            member = (owner[start:stop][None, :] == torch.arange(first, last + 1, device=device)[:, None]).float()
            sums[first : last + 1] += member @ emb
    return F.normalize(sums / T, dim=-1)


def noisy_text_projection(
    text: Tensor,
    sigma: float,
    *,
    samples: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    offset: int = 0,
) -> Tensor:
    """Noisy text targets on the unit sphere: ``normalize(normalize(text[k]) + sigma * eps[k, s])``.

    ``eps[k, s] ~ N(0, I_D)`` independently for every row and sample, so ``sigma`` is the per-coordinate standard
    deviation and the mean cosine between a noisy and the clean target is about ``1 / sqrt(1 + D * sigma^2)``.
    One fused kernel on CPU (C++) and CUDA (Triton) draws the noise inside (no noise tensor in memory).

    Args:
        text: ``(K, D)`` or ``(D,)`` float targets (normalized here; need not be unit rows).
        sigma: per-coordinate noise standard deviation, ``>= 0`` (``0`` returns the normalized targets).
        samples: noisy samples per row.
        seed: 64-bit seed in ``[0, 2^63 - 1)``; the same seed, inputs and device give the same output, different
            seeds give different noise. Default: drawn from ``generator``.
        generator: where to draw the seed from when ``seed`` is None (default: torch's global generator).
        offset: sample ``s`` uses noise stream ``offset + s``: two calls with ``samples=n`` and offsets ``0`` and
            ``n`` equal one call with ``samples=2n``. ``offset + samples <= 2^32``.
    Returns:
        ``(K, samples, D)`` unit rows in text's dtype (``(1, samples, D)`` for 1-D text). Differentiable with respect
        to ``text`` (the backward uses the saved output, never the noise). CPU and CUDA draw different (equally
        distributed) noise for one seed; see the module docstring.
    """
    check_float_tensor(text, "text")
    if text.dim() == 1:
        text = text[None]
    if text.dim() != 2:
        raise ValueError(f"text must be (K, D) or (D,), got shape {tuple(text.shape)}")
    sigma = check_number(sigma, "sigma")
    samples = check_int(samples, "samples", 1, 2**31 - 1)
    require_fits((text.shape[0], samples, text.shape[1]), text.dtype, text.device, "samples")
    offset = check_int(offset, "offset", 0, 2**32 - samples)
    seed = resolve_seed(seed, generator)
    return run_op(_ops.NOISY_TEXT_PROJECTION, text.contiguous(), sigma, samples, seed, offset)[0]


def clip_cosine_loss(image_features: Tensor, text_targets: Tensor, *, detach_norm: bool = False) -> Tensor:
    """Style-mining loss ``mean over rows of (1 - cos(image_features[b], text_targets[b]))``, fused.

    Args:
        image_features: ``(B, D)`` CLIP image embeddings ``z`` (need not be normalized).
        text_targets: ``(B, D)``, or ``(D,)`` / ``(1, D)`` shared by all rows; need not be normalized.
        detach_norm: ``True`` asks for the gradient of the public PODA/FAMix code, which divides ``z`` by its norm
            with the norm detached before the cosine. Cosine similarity is scale invariant and its gradient is
            orthogonal to ``z``, so that recipe has exactly the same value **and** gradient as the plain cosine
            (``(t_hat - cos * z_hat) / |z|`` per row, over ``-B``); both flags run the same kernel and are tested
            against both recipes. Norms below ``1e-8`` are clamped to ``1e-8``, as in ``F.cosine_similarity``.
    Returns:
        A 0-dim tensor in image_features' dtype (accumulated in float32, or float64). Differentiable with respect to
        both inputs; the backward recomputes the row norms instead of saving them.
    """
    check_float_tensor(image_features, "image_features")
    check_float_tensor(text_targets, "text_targets")
    check_bool(detach_norm, "detach_norm")
    if image_features.dim() != 2 or image_features.shape[0] == 0 or image_features.shape[1] == 0:
        raise ValueError(f"image_features must be (B, D) with B, D >= 1, got shape {tuple(image_features.shape)}")
    B, D = image_features.shape
    if text_targets.dim() == 1:
        text_targets = text_targets[None]
    if text_targets.dim() != 2 or text_targets.shape[1] != D or text_targets.shape[0] not in (1, B):
        raise ValueError(
            f"text_targets must be (B, D) = ({B}, {D}), (1, D) or (D,), got shape {tuple(text_targets.shape)}"
        )
    if text_targets.device != image_features.device:
        raise ValueError(
            f"text_targets is on {text_targets.device} but image_features on {image_features.device}; "
            "move them to one device"
        )
    image = image_features.contiguous()
    text = text_targets.to(image.dtype).expand(B, D).contiguous()
    return run_op(_ops.CLIP_COSINE_LOSS, image, text).to(image_features.dtype)
