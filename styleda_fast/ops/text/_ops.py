"""torch.library glue of the text-family operators: fake kernels and autograd; CUDA runs ``_triton.py``.

The schemas and CPU kernels live in ``text_cpu.cpp`` beside this file.
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.core.checks import acc_dtype, require, require_float, require_params
from styleda_fast.core.library import once_differentiable, op_namespace, register_family

# ---------------------------------------------------------------- fake kernels (shapes and dtypes only)


def _check_rows(t, name: str) -> None:
    torch._check(t.dim() == 2, lambda: f"{name} must be (rows, D), got {t.dim()} dims")
    torch._check(t.is_floating_point(), lambda: f"{name} must be floating point, got {t.dtype}")


def _noisy_text_projection_fake(text, sigma, samples, seed, offset):
    _check_rows(text, "text")
    torch._check(samples >= 1, lambda: "samples must be >= 1")
    K, D = text.shape
    return text.new_empty((K, samples, D)), text.new_empty((K, samples), dtype=acc_dtype(text.dtype))


def _noisy_text_projection_backward_fake(grad_out, text, out, norm):
    _check_rows(text, "text")
    return torch.empty_like(text)


def _clip_cosine_loss_fake(image, text):
    _check_rows(image, "image")
    torch._check(image.shape == text.shape, lambda: "image and text must have the same shape")
    return image.new_empty((), dtype=acc_dtype(image.dtype))


def _clip_cosine_loss_backward_fake(grad_loss, image, text, compute_grad_text):
    _check_rows(image, "image")
    return torch.empty_like(image), torch.empty_like(text) if compute_grad_text else text.new_empty(0)


def _noisy_style_features_fake(xn, mean, std, feature_noise, seed, offset):
    torch._check(xn.dim() >= 2, lambda: "xn must be (B, C, ...)")
    torch._check(mean.shape == (xn.shape[0], xn.shape[1]), lambda: "mean must be (B, C)")
    torch._check(std.shape == mean.shape, lambda: "std must be (B, C)")
    return torch.empty_like(xn)


def _noisy_style_features_backward_fake(grad_out, xn, mean, std, compute_grad_xn):
    grad_xn = torch.empty_like(xn) if compute_grad_xn else xn.new_empty(0)
    return grad_xn, torch.empty_like(mean), torch.empty_like(std)


# ---------------------------------------------------------------- autograd


def _noisy_text_projection_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0], output[1])
    ctx.mark_non_differentiable(output[1])


def _noisy_text_projection_backward(ctx, grad_out, _grad_norm):
    """Gradient with respect to text; only out and the norms are saved (the noise is never stored)."""
    text, out, norm = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    grad_text = op_namespace(ctx).noisy_text_projection_backward(grad_out.contiguous(), text, out, norm)
    return *once_differentiable("noisy_text_projection", (grad_text,)), None, None, None, None


def _clip_cosine_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _clip_cosine_loss_backward(ctx, grad_loss):
    """``(grad_image, grad_text)``; the row norms and cosines are recomputed (nothing but the inputs is saved)."""
    image, text = ctx.saved_tensors
    need_image, need_text = ctx.needs_input_grad[:2]
    if grad_loss is None or not (need_image or need_text):
        return None, None
    grad_image, grad_text = op_namespace(ctx).clip_cosine_loss_backward(grad_loss, image, text, need_text)
    return once_differentiable(
        "clip_cosine_loss", (grad_image if need_image else None, grad_text if need_text else None)
    )


def _noisy_style_features_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2])


def _noisy_style_features_backward(ctx, grad_out):
    """``(grad_xn, grad_mean, grad_std)``: the ReLU mask is recomputed from the inputs; no noise is needed."""
    xn, mean, std = ctx.saved_tensors
    need_xn, need_mean, need_std = ctx.needs_input_grad[:3]
    if grad_out is None or not (need_xn or need_mean or need_std):
        return (None,) * 6
    grad_xn, grad_mean, grad_std = op_namespace(ctx).noisy_style_features_backward(
        grad_out.contiguous(), xn, mean, std, need_xn
    )
    return (
        grad_xn if need_xn else None,
        grad_mean if need_mean else None,
        grad_std if need_std else None,
        None,
        None,
        None,
    )


# ---------------------------------------------------------------- argument checks of direct operator calls


def _require_rows(t, name: str) -> None:
    require_float(t, name)
    require(t.dim() == 2, f"{name} must be 2-D (rows, D), got {t.dim()} dims")


def _check_noisy_text_projection(text, sigma, samples, seed, offset):
    _require_rows(text, "text")
    require(samples >= 1, f"samples must be >= 1, got {samples}")
    require(0 <= offset and offset + samples <= 2**32, f"offset + samples must be in [0, 2^32], got offset {offset}")
    require(0 <= seed < 2**63, f"seed must be in [0, 2^63), got {seed}")


def _check_noisy_text_projection_backward(grad_out, text, out, norm):
    _require_rows(text, "text")
    require_float(out, "out")
    require(out.dim() == 3 and out.shape[0] == text.shape[0] and out.shape[2] == text.shape[1], "out must be (K, S, D)")
    require_float(grad_out, "grad_out")
    require(grad_out.shape == out.shape, "grad_out must have out's shape")
    require_params(norm, "norm", out.shape[:2], text)
    require(grad_out.dtype == text.dtype and out.dtype == text.dtype, "grad_out and out must have text's dtype")


def _check_clip_cosine_loss(image, text):
    _require_rows(image, "image")
    _require_rows(text, "text")
    require(
        image.shape == text.shape and image.dtype == text.dtype, "image and text must have the same shape and dtype"
    )
    require(image.shape[0] >= 1 and image.shape[1] >= 1, "clip_cosine_loss needs at least one row of length >= 1")


def _check_clip_cosine_loss_backward(grad_loss, image, text, compute_grad_text):
    _check_clip_cosine_loss(image, text)
    require(isinstance(grad_loss, Tensor) and grad_loss.numel() == 1, "grad_loss must have one element")


def _check_noisy_style_features(xn, mean, std, feature_noise, seed, offset):
    require_float(xn, "xn")
    require(xn.dim() >= 2, f"xn must be (B, C, ...), got {xn.dim()} dims")
    require_params(mean, "mean", xn.shape[:2], xn)
    require_params(std, "std", xn.shape[:2], xn)
    require(0 <= offset < 2**32, f"offset must be in [0, 2^32), got {offset}")
    require(0 <= seed < 2**63, f"seed must be in [0, 2^63), got {seed}")


def _check_noisy_style_features_backward(grad_out, xn, mean, std, compute_grad_xn):
    _check_noisy_style_features(xn, mean, std, 0.0, 0, 0)
    require_float(grad_out, "grad_out")
    require(grad_out.shape == xn.shape and grad_out.dtype == xn.dtype, "grad_out must have xn's shape and dtype")


CHECKS = {
    "noisy_text_projection": _check_noisy_text_projection,
    "noisy_text_projection_backward": _check_noisy_text_projection_backward,
    "clip_cosine_loss": _check_clip_cosine_loss,
    "clip_cosine_loss_backward": _check_clip_cosine_loss_backward,
    "noisy_style_features": _check_noisy_style_features,
    "noisy_style_features_backward": _check_noisy_style_features_backward,
}

# ---------------------------------------------------------------- registration

FAKES = {
    "noisy_text_projection": _noisy_text_projection_fake,
    "noisy_text_projection_backward": _noisy_text_projection_backward_fake,
    "clip_cosine_loss": _clip_cosine_loss_fake,
    "clip_cosine_loss_backward": _clip_cosine_loss_backward_fake,
    "noisy_style_features": _noisy_style_features_fake,
    "noisy_style_features_backward": _noisy_style_features_backward_fake,
}
AUTOGRAD = {
    "noisy_text_projection": (_noisy_text_projection_backward, _noisy_text_projection_setup),
    "clip_cosine_loss": (_clip_cosine_loss_backward, _clip_cosine_loss_setup),
    "noisy_style_features": (_noisy_style_features_backward, _noisy_style_features_setup),
}
register_family("text", FAKES, AUTOGRAD, CHECKS)
