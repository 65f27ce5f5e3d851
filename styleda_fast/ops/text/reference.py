"""Plain-PyTorch references of the text-side operations (the math: ``README.md`` next to this file).

Every fused kernel of :mod:`styleda_fast.ops.text` is tested against these functions (run in float64), and the
benchmarks use the ``*_eager`` recipes (``torch.randn`` noise, the way a user would write it) as their baselines.

The noise of the fused kernels is specified here too, bit for bit: :func:`philox4x32` is Philox4x32-10 (the
generator of ``tl.philox``) written with int64 tensor arithmetic, and :func:`text_noise` / :func:`feature_noise`
give the standard normals each kernel draws for a ``(seed, offset)``, computed in float64 from the same uniforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASK = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
TEXT_TAG = 0x54455854  # "TEXT": counter word 3 of the text noise
FEATURE_TAG = 0x46454154  # "FEAT": counter word 3 of the feature noise
FEATURE_GROUPS = 256  # L: the feature noise comes in chunks of 4*L elements, one counter per 4 elements


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for uint32 values held in int64 tensors (no int64 overflow)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    t, u = a * b_lo, a * b_hi  # each < 2^48
    hi = (u + (t >> 16)) >> 16
    lo = (((u & 0xFFFF) << 16) + t) & _MASK
    return hi, lo


def philox4x32(seed: int, c0, c1, c2, c3, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of counter ``(c0, c1, c2, c3)`` (uint32 values in int64 tensors, broadcastable) and
    64-bit key ``seed``, exactly as ``triton.language.philox`` computes it. Returns four int64 tensors."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    k0, k1 = seed & _MASK, (seed >> 32) & _MASK
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK, (k1 + _KEY_B) & _MASK
    return c0, c1, c2, c3


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint32 -> float32 in [0, 1) as ``tl.uint_to_uniform_float``: read as int32, fold negatives with ``~``, scale."""
    signed = torch.where(bits >= 2**31, bits - 2**32, bits)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two standard normals (float64) from two uniforms, as ``tl.pair_uniform_to_normal`` (u1 clamped at 1e-7)."""
    u1 = u1.double().clamp_min(float(torch.tensor(1e-7, dtype=torch.float32)))
    r = torch.sqrt(-2.0 * torch.log(u1))
    th = 2 * torch.pi * u2.double()
    return r * torch.cos(th), r * torch.sin(th)


def philox_normal4(seed: int, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """The four standard normals (float64) of one counter, as the kernels (and ``tl.randn4x``) draw them."""
    u = [uniform_from_bits(b) for b in philox4x32(seed, c0, c1, c2, c3)]
    return (*box_muller(u[0], u[1]), *box_muller(u[2], u[3]))


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


def feature_noise(numel: int, seed: int, offset: int = 0) -> torch.Tensor:
    """The standard normals of ``noisy_style_features`` for element ``e`` of the flattened (contiguous) features.

    Elements come in chunks of ``4*L`` (``L = FEATURE_GROUPS``): ``e = chunk*4L + q*L + j`` is output ``q`` of the
    counter ``(g mod 2^32, g div 2^32, offset, FEATURE_TAG)`` with ``g = chunk*L + j``. Shape ``(numel,)``, float64.
    """
    chunks = -(-numel // (4 * FEATURE_GROUPS))
    g = torch.arange(chunks * FEATURE_GROUPS, dtype=torch.int64)
    normals = philox_normal4(seed, g & _MASK, g >> 32, offset, FEATURE_TAG)
    return torch.stack([n.view(chunks, FEATURE_GROUPS) for n in normals], dim=1).flatten()[:numel]


# ---------------------------------------------------------------- the operations


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
