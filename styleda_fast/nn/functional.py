"""Functional forms of the style-augmentation layers: every random draw is an argument.

Each function computes one augmentation of ``x (B, C, H, W)`` with the statistics of every image ``b`` and channel
``c`` taken over the spatial positions (mean, and ``sqrt(unbiased variance + eps)``), on top of the package's fused
kernels ``patch_mean_std`` and ``local_style_mix``. The modules of :mod:`styleda_fast.nn.modules` draw the random
arguments (from a ``torch.Generator``) and call these. ``styleda_fast/nn/README.md`` has the math.

Gradients flow to ``x`` only: permutations, mixing weights and noise are random draws, not parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from styleda_fast.core import checks as _checks
from styleda_fast.core.backend import run_op, select_backend
from styleda_fast.core.library import cached_empty_like, differentiable_grads
from styleda_fast.ops.style_mix import _ops as style_mix_ops
from styleda_fast.ops.style_mix import local_style_mix, patch_mean_std

__all__ = [
    "beta_weights",
    "crossdomain_permutation",
    "dsu",
    "mix_style",
    "permuted_adain",
]


def check_features(x, name: str = "x") -> None:
    """``x`` must be a ``(B, C, H, W)`` float16/bfloat16/float32/float64 tensor with ``B >= 1`` and a pixel."""
    _checks.check_features(x, name, nonempty=True)


check_eps = _checks.check_eps


def _check_draw(value, name: str, shape: tuple[int, ...], integer: bool, device: torch.device) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer (int64) tensor of indices, got {value.dtype}")
    if not integer and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    return value.to(device, torch.int64 if integer else value.dtype, non_blocking=True)


def _check_perm(perm, batch: int, device: torch.device) -> Tensor:
    """Partner indices ``(B,)`` in ``[0, B)``, checked where they are (a CUDA perm costs a sync), moved to x's
    device."""
    _check_draw(perm, "perm", (batch,), True, perm.device if isinstance(perm, Tensor) else device)
    if batch > 0 and not torch.compiler.is_compiling() and not is_fake(perm):
        low, high = torch.aminmax(perm)
        if int(low) < 0 or int(high) >= batch:
            raise ValueError(f"perm must hold indices in [0, B = {batch}), got values in [{int(low)}, {int(high)}]")
    return perm.to(device, torch.int64, non_blocking=True)


_acc = _checks.acc_dtype


def beta_weights(alpha: float, beta: float, shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``Beta(alpha, beta)`` samples of ``shape`` in float32, drawn from ``generator``.

    Same numbers, in the same order, as ``torch.distributions.Beta(alpha, beta).sample(shape)`` draws from a
    generator in the same state (both sample a two-class Dirichlet); ``torch.distributions`` cannot take a generator.
    """
    shape = tuple(shape)
    device = generator.device if generator is not None else device
    concentration = torch.tensor([float(alpha), float(beta)], device=device).expand(*shape, 2)
    return torch._sample_dirichlet(concentration.contiguous(), generator=generator)[..., 0].contiguous()


def crossdomain_permutation(batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """MixStyle's cross-domain partner index: the batch holds two domains, first half then second half; each image
    takes its partner from the other half (reversed, then shuffled within the half).

    With ``h = ceil(B/2)``: positions ``0..h-1`` get a shuffle of ``B-1, ..., B-h`` and positions ``h..B-1`` a
    shuffle of ``B-h-1, ..., 0`` (two ``randperm`` draws, ``h`` then ``B-h``). For odd ``B`` the middle image
    ``B//2`` counts in the first half but is also among that half's partners (so it may keep its own style), as in
    Dassl's MixStyle; ``B = 1`` gives ``[0]``.
    """
    device = generator.device if generator is not None else device
    reverse = torch.arange(batch - 1, -1, -1, device=device)
    half = (batch + 1) // 2
    first, second = reverse[:half], reverse[half:]
    first = first[torch.randperm(first.shape[0], generator=generator, device=device)]
    second = second[torch.randperm(second.shape[0], generator=generator, device=device)]
    return torch.cat([first, second])


class _MixStyleFunction(torch.autograd.Function):
    """Forward: ``y = x * scale + shift`` per (image, channel), the statistics treated as constants; backward:
    ``grad_x = grad_y * scale``. Saves only ``scale (B, C, 1, 1)``."""

    @staticmethod
    def forward(ctx, x, perm, lam, eps):
        acc = _acc(x.dtype)
        mean, std = patch_mean_std(x, 1, eps)  # (B, C, 1, 1), never differentiated (MixStyle detaches them)
        mean, std = mean.to(acc), std.to(acc)
        w = lam.to(acc)[:, None, None, None]
        # index_select, not mean[perm]: on CPU, advanced indexing right after the kernel's OpenMP region costs
        # milliseconds
        partner_mean, partner_std = mean.index_select(0, perm), std.index_select(0, perm)
        target_std = w * std + (1 - w) * partner_std
        target_mean = w * mean + (1 - w) * partner_mean
        scale = target_std / std
        if torch.compiler.is_compiling():
            # one fused elementwise kernel; with identity draws (lam = 1) scale = 1 and shift = 0 exactly
            y = x * scale.to(x.dtype) + (target_mean - mean * scale).to(x.dtype)
        else:
            y = local_style_mix(x, partner_mean, partner_std, grid=1, mix=w, activation=None, eps=eps)
        ctx.save_for_backward(scale)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (scale,) = ctx.saved_tensors
        scale = scale.to(grad_y.dtype)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            # create_graph=True: y is linear in x (statistics detached), so grad_y * scale is the exact, differentiable
            # gradient
            return grad_y * scale, None, None, None
        # into a buffer of the kernels' output cache on CPU: no page faults on a fresh feature-map-sized gradient
        return torch.mul(grad_y, scale, out=cached_empty_like(grad_y)), None, None, None


def mix_style(x: Tensor, perm: Tensor, lam: Tensor, eps: float = 1e-6) -> Tensor:
    """MixStyle with given draws: each image's statistics mixed with those of image ``perm[b]``.

    ``y = (x - mu) / sig * (lam*sig + (1-lam)*sig[perm]) + lam*mu + (1-lam)*mu[perm]`` per image ``b`` and channel
    ``c``, with ``mu``, ``sig = sqrt(var + eps)`` treated as constants (detached, as the public MixStyle): the
    gradient is ``grad_y * (lam*sig + (1-lam)*sig[perm]) / sig``.

    Args:
        x: ``(B, C, H, W)``, NCHW or channels_last.
        perm: ``(B,)`` integer partner indices in ``[0, B)`` (any device; moved to x's).
        lam: ``(B,)`` mixing weights (``1`` keeps the image's own style).
        eps: added to the variance.
    """
    check_features(x)
    eps = check_eps(eps)
    B = x.shape[0]
    perm = _check_perm(perm, B, x.device)
    lam = _check_draw(lam, "lam", (B,), False, x.device)
    return _MixStyleFunction.apply(x, perm, lam, eps)


def permuted_adain(x: Tensor, perm: Tensor, eps: float = 1e-5, *, eps_after_sqrt: bool = False) -> Tensor:
    """AdaIN of each image toward the statistics of image ``perm[b]``: ``y = (x - mu)/sig * sig[perm] + mu[perm]``.

    The partner's statistics are constants (detached); the image's own ``mu``, ``sig`` are differentiated, as in
    the public PermutedAdaIN. ``sig = sqrt(var + eps)``. With ``eps_after_sqrt=True`` the own std is
    ``sqrt(var + eps) + eps``, as the public code writes it (a relative change of about ``eps / sig``).
    Features of one pixel (``H = W = 1``) have no spatial statistics and are returned unchanged (``x`` itself), as
    in the public code.
    """
    check_features(x)
    eps = check_eps(eps)
    if not isinstance(eps_after_sqrt, bool):
        raise TypeError(f"eps_after_sqrt must be a bool, got {type(eps_after_sqrt).__name__}")
    perm = _check_perm(perm, x.shape[0], x.device)
    if x.shape[2] * x.shape[3] == 1:
        return x
    with torch.no_grad():
        mean, std = patch_mean_std(x.detach(), 1, eps)
    acc = _acc(x.dtype)
    target_mean, target_std = mean.to(acc).index_select(0, perm), std.to(acc).index_select(0, perm)
    if eps_after_sqrt:
        # (x - mu)/(sig + eps) * t = (x - mu)/sig * (t * sig/(sig + eps)); sig differentiable here as well
        own_std = patch_mean_std(x, 1, eps)[1].to(acc)
        target_std = target_std * own_std / (own_std + eps)
    return local_style_mix(x, target_mean, target_std, grid=1, mix=None, activation=None, eps=eps)


def batch_std(stat: Tensor, eps: float) -> Tensor:
    """``sqrt(unbiased variance over the batch + eps)`` of ``stat (B, C)``, shape ``(1, C)``; a batch of one has
    variance 0 (the public code's ``var`` is NaN there), so the result is ``sqrt(eps)``."""
    if stat.shape[0] == 1:
        return torch.full_like(stat, math.sqrt(eps))
    return (stat.var(dim=0, keepdim=True) + eps).sqrt()


def dsu(x: Tensor, noise_mean: Tensor, noise_std: Tensor, eps: float = 1e-6) -> Tensor:
    """Distribution uncertainty (DSU) with given standard-normal draws ``noise_mean``, ``noise_std`` ``(B, C)``.

    ``beta = mu + noise_mean * sqrt(Var_b(mu) + eps)``, ``gamma = sig + noise_std * sqrt(Var_b(sig) + eps)``
    (``Var_b``: unbiased variance over the batch, 0 for a batch of one), ``y = (x - mu)/sig * gamma + beta``.
    Everything is differentiated, the statistics included.
    """
    check_features(x)
    eps = check_eps(eps)
    B, C = x.shape[:2]
    acc = _acc(x.dtype)
    noise_mean = _check_draw(noise_mean, "noise_mean", (B, C), False, x.device).to(acc)
    noise_std = _check_draw(noise_std, "noise_std", (B, C), False, x.device).to(acc)
    if select_backend(x.device) == "reference" or torch.compiler.is_compiling() or not x.requires_grad:
        return _dsu_composite(x, noise_mean, noise_std, eps)
    return _DSUFunction.apply(x, noise_mean, noise_std, eps)


def _dsu_targets(mean: Tensor, std: Tensor, noise_mean: Tensor, noise_std: Tensor, eps: float):
    """``(beta, gamma, batch std of mean, batch std of std)`` from the ``(B, C)`` statistics."""
    mean_spread, std_spread = batch_std(mean, eps), batch_std(std, eps)
    return mean + noise_mean * mean_spread, std + noise_std * std_spread, mean_spread, std_spread


def _dsu_composite(x: Tensor, noise_mean: Tensor, noise_std: Tensor, eps: float) -> Tensor:
    """DSU from the differentiable operators (their gradients summed by autograd; also twice differentiable)."""
    mean, std = patch_mean_std(x, 1, eps)
    acc = noise_mean.dtype
    beta, gamma, _, _ = _dsu_targets(mean.to(acc).flatten(1), std.to(acc).flatten(1), noise_mean, noise_std, eps)
    return local_style_mix(x, beta, gamma, grid=1, mix=None, activation=None, eps=eps)


def _batch_coupling(stat: Tensor, sums: Tensor, noise: Tensor, spread: Tensor) -> Tensor:
    """Gradient reaching ``stat (B, C)`` through ``target = stat + noise * spread(stat)`` given ``sums`` = the
    gradient of the target: ``sums + (sum_b sums*noise) * d spread / d stat`` with ``d spread_c / d stat_bc =
    (stat_bc - mean_b stat_c) / ((B - 1) * spread_c)`` (0 for a batch of one, whose spread is the constant
    ``sqrt(eps)``)."""
    B = stat.shape[0]
    if B == 1:
        return sums
    return sums + (sums * noise).sum(0, keepdim=True) * (stat - stat.mean(0, keepdim=True)) / ((B - 1) * spread)


class _DSUFunction(torch.autograd.Function):
    """DSU with a two-pass backward: one pass for the per-(image, channel) sums of the gradient (the gradients of
    beta and gamma), then, with the batch coupling of beta and gamma through the statistics of every image added
    on ``(B, C)`` tensors, one pass writing grad_x (``local_style_mix_grad_x``). The composite form runs the
    style-mix backward, then the statistics' backward, then adds the two feature-sized gradients: two more passes
    over memory."""

    @staticmethod
    def forward(ctx, x, noise_mean, noise_std, eps):
        acc = noise_mean.dtype
        shape = (x.shape[0], x.shape[1], 1, 1)
        mean4, std4 = run_op(style_mix_ops.PATCH_MEAN_STD, x, 1, 1, eps)
        beta, gamma, mean_spread, std_spread = _dsu_targets(
            mean4.flatten(1), std4.flatten(1), noise_mean, noise_std, eps
        )
        beta4, gamma4 = beta.reshape(shape).contiguous(), gamma.reshape(shape).contiguous()
        y, _, _ = run_op(style_mix_ops.LOCAL_STYLE_MIX, x, beta4, gamma4, None, 1, 1, False, eps)
        ctx.save_for_backward(x, mean4, std4, beta4, gamma4, noise_mean, noise_std, mean_spread, std_spread)
        ctx.eps, ctx.acc = eps, acc
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, mean4, std4, beta4, gamma4, noise_mean, noise_std, mean_spread, std_spread = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the composite form, twice differentiable
            grad_x = differentiable_grads(
                lambda x: _dsu_composite(x, noise_mean, noise_std, ctx.eps), (x,), (True,), (grad_y,)
            )[0]
            return grad_x, None, None, None
        _, sum_grad, sum_grad_xn = run_op(
            style_mix_ops.LOCAL_STYLE_MIX_BACKWARD, grad_y, x, mean4, std4, beta4, gamma4, None, False, False
        )
        B, C = x.shape[:2]
        grad_mean = _batch_coupling(mean4.flatten(1), sum_grad.flatten(1), noise_mean, mean_spread)
        grad_std = _batch_coupling(std4.flatten(1), sum_grad_xn.flatten(1), noise_std, std_spread)
        grad_x = run_op(
            style_mix_ops.LOCAL_STYLE_MIX_GRAD_X, grad_y, x, mean4, std4, beta4, gamma4, None, sum_grad, sum_grad_xn,
            grad_mean.reshape(B, C, 1, 1).contiguous(), grad_std.reshape(B, C, 1, 1).contiguous(), False,
        )  # fmt: skip
        return grad_x, None, None, None
