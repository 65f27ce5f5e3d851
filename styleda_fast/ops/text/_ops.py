"""Declarations of the text-family operators (:class:`styleda_fast.core.library.Operator`): argument rules, fake
kernels, references and autograd. CPU runs the C++ kernels of ``text_cpu.cpp`` beside this file (schemas there),
CUDA the Triton launchers of ``_triton.py``.

The kernels' gradients have no second derivative: differentiating them raises a clear error (the backward
kernels carry no graph).
"""

from __future__ import annotations

import torch

from styleda_fast.core.checks import acc_dtype, require, require_fits, require_float, require_params, require_scalar
from styleda_fast.core.library import Operator, op_namespace, register
from styleda_fast.ops.text import reference

# argument rules


def _require_rows(t, name: str) -> None:
    require_float(t, name)
    require(t.dim() == 2, f"{name} must be 2-D (rows, D), got {t.dim()} dims")


def _check_noisy_text_projection(text, sigma, samples, seed, offset):
    _require_rows(text, "text")
    require_scalar(sigma, "sigma")
    require(samples >= 1, f"samples must be >= 1, got {samples}")
    require_fits((text.shape[0], samples, text.shape[1]), text.dtype, text.device, "samples")
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
    require_float(grad_loss, "grad_loss")
    require(grad_loss.numel() == 1, "grad_loss must have one element")


# fake kernels (the arguments are checked first)


def _noisy_text_projection_fake(text, sigma, samples, seed, offset):
    K, D = text.shape
    return text.new_empty((K, samples, D)), text.new_empty((K, samples), dtype=acc_dtype(text.dtype))


def _noisy_text_projection_backward_fake(grad_out, text, out, norm):
    return torch.empty_like(text)


def _clip_cosine_loss_fake(image, text):
    return image.new_empty((), dtype=acc_dtype(image.dtype))


def _clip_cosine_loss_backward_fake(grad_loss, image, text, compute_grad_text):
    return torch.empty_like(image), torch.empty_like(text) if compute_grad_text else text.new_empty(0)


# references, with the operators' arguments and outputs


def _noisy_text_projection_reference(text, sigma, samples, seed, offset):
    acc = acc_dtype(text.dtype)
    eps = reference.text_noise(text.shape[0], samples, text.shape[1], seed, offset).to(text.device, acc)
    unit = torch.nn.functional.normalize(text.to(acc), dim=-1)
    noisy = unit[:, None, :] + sigma * eps
    norm = noisy.norm(dim=-1)
    return reference.noisy_text_projection(text.to(acc), sigma, eps).to(text.dtype), norm


def _clip_cosine_loss_reference(image, text):
    acc = acc_dtype(image.dtype)
    return reference.clip_cosine_loss(image.to(acc), text.to(acc))


# autograd


def _noisy_text_projection_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0], output[1])
    ctx.mark_non_differentiable(output[1])


def _noisy_text_projection_backward(ctx, grad_out, _grad_norm):
    """Gradient with respect to text; only out and the norms are saved (the noise is never stored)."""
    text, out, norm = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    grad_text = op_namespace(ctx).noisy_text_projection_backward(grad_out.contiguous(), text, out, norm)
    return grad_text, None, None, None, None


def _clip_cosine_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _clip_cosine_loss_backward(ctx, grad_loss):
    """``(grad_image, grad_text)``; the row norms and cosines are recomputed (nothing but the inputs is saved)."""
    image, text = ctx.saved_tensors
    need_image, need_text = ctx.needs_input_grad[:2]
    if grad_loss is None or not (need_image or need_text):
        return None, None
    grad_image, grad_text = op_namespace(ctx).clip_cosine_loss_backward(grad_loss, image, text, need_text)
    return grad_image if need_image else None, grad_text if need_text else None


# declarations


def _op(name: str, check, fake, **kwargs) -> Operator:
    return Operator(name, "text", check, fake, **kwargs)


NOISY_TEXT_PROJECTION = _op(
    "noisy_text_projection",
    _check_noisy_text_projection,
    _noisy_text_projection_fake,
    reference=_noisy_text_projection_reference,
    backward=_noisy_text_projection_backward,
    setup_context=_noisy_text_projection_setup,
)
NOISY_TEXT_PROJECTION_BACKWARD = _op(
    "noisy_text_projection_backward", _check_noisy_text_projection_backward, _noisy_text_projection_backward_fake
)
CLIP_COSINE_LOSS = _op(
    "clip_cosine_loss",
    _check_clip_cosine_loss,
    _clip_cosine_loss_fake,
    reference=_clip_cosine_loss_reference,
    backward=_clip_cosine_loss_backward,
    setup_context=_clip_cosine_loss_setup,
)
CLIP_COSINE_LOSS_BACKWARD = _op(
    "clip_cosine_loss_backward", _check_clip_cosine_loss_backward, _clip_cosine_loss_backward_fake
)
register(
    NOISY_TEXT_PROJECTION,
    NOISY_TEXT_PROJECTION_BACKWARD,
    CLIP_COSINE_LOSS,
    CLIP_COSINE_LOSS_BACKWARD,
)
