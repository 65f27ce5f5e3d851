"""The counter-based generator of the noise-drawing operators (``ops/text``: ``noisy_text_projection``;
``ops/feature_noise``: ``noisy_style_features``), specified bit for bit, and their seeds.

:func:`philox4x32` is Philox4x32-10 (the generator of ``tl.philox``, transcribed for the Triton kernels as
:func:`styleda_fast.core.triton_utils.philox_normal4` and in C++ in ``core/csrc/counter_noise.h``) written with int64
tensor arithmetic; :func:`philox_normal4` gives the four standard normals the kernels draw from one counter. Each
family's ``reference.py`` says which counter serves which element. A result depends only on ``(seed, offset)`` and
the input, never on thread count or launch order.
"""

from __future__ import annotations

import torch

from styleda_fast.core.checks import check_int

MASK = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for uint32 values held in int64 tensors (no int64 overflow)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    t, u = a * b_lo, a * b_hi  # each < 2^48
    hi = (u + (t >> 16)) >> 16
    lo = (((u & 0xFFFF) << 16) + t) & MASK
    return hi, lo


def philox4x32(seed: int, c0, c1, c2, c3, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of counter ``(c0, c1, c2, c3)`` (uint32 values in int64 tensors, broadcastable) and
    64-bit key ``seed``, exactly as ``triton.language.philox`` computes it. Returns four int64 tensors."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    k0, k1 = seed & MASK, (seed >> 32) & MASK
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & MASK, (k1 + _KEY_B) & MASK
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


SEED_BOUND = 2**63 - 1


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A seed in ``[0, 2^63 - 1)`` drawn from ``generator`` (default: torch's global CPU generator)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, SEED_BOUND, (), generator=generator, device=device))


def resolve_seed(seed, generator) -> int:
    """The seed of one call: ``seed`` (checked to lie in ``[0, 2^63 - 1)``), else one drawn from ``generator``."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is None:
        return draw_seed(generator)
    return check_int(seed, "seed", 0, SEED_BOUND - 1)
