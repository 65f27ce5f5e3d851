"""Registration of the text-family operators: fake kernels, autograd, and the Triton kernels for CUDA.

The schemas and CPU kernels live in csrc/text_cpu.cpp, the Triton kernels in styleda_fast/_triton/text.py.
"""

from __future__ import annotations

import types

import torch

from styleda_fast._backend import _CPP_PROBLEM
from styleda_fast._ops._registration import register_family, triton_launchers
from styleda_fast._ops.style_mix import acc_dtype

_LIB = "styleda_fast"


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
# Each *_grad function takes the kernel namespace (the operators, or the Triton launchers) so that the same formula
# serves the registered operators and the interpreter path below.


def _noisy_text_projection_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0], output[1])
    ctx.mark_non_differentiable(output[1])


def noisy_text_projection_grad(kernels, ctx, grad_out):
    """Gradient with respect to text; only out and the norms are saved (the noise is never stored)."""
    text, out, norm = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None
    return kernels.noisy_text_projection_backward(grad_out.contiguous(), text, out, norm)


def _noisy_text_projection_backward(ctx, grad_out, _grad_norm):
    return noisy_text_projection_grad(torch.ops.styleda_fast, ctx, grad_out), None, None, None, None


def _clip_cosine_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def clip_cosine_loss_grad(kernels, ctx, grad_loss):
    """``(grad_image, grad_text)``; the row norms and cosines are recomputed (nothing but the inputs is saved)."""
    image, text = ctx.saved_tensors
    need_image, need_text = ctx.needs_input_grad[:2]
    if grad_loss is None or not (need_image or need_text):
        return None, None
    grad_image, grad_text = kernels.clip_cosine_loss_backward(grad_loss, image, text, need_text)
    return (grad_image if need_image else None, grad_text if need_text else None)


def _clip_cosine_loss_backward(ctx, grad_loss):
    return clip_cosine_loss_grad(torch.ops.styleda_fast, ctx, grad_loss)


def _noisy_style_features_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2])


def noisy_style_features_grad(kernels, ctx, grad_out):
    """``(grad_xn, grad_mean, grad_std)``: the ReLU mask is recomputed from the inputs; no noise is needed."""
    xn, mean, std = ctx.saved_tensors
    need_xn, need_mean, need_std = ctx.needs_input_grad[:3]
    if grad_out is None or not (need_xn or need_mean or need_std):
        return None, None, None
    grad_xn, grad_mean, grad_std = kernels.noisy_style_features_backward(grad_out.contiguous(), xn, mean, std, need_xn)
    return (grad_xn if need_xn else None, grad_mean if need_mean else None, grad_std if need_std else None)


def _noisy_style_features_backward(ctx, grad_out):
    return *noisy_style_features_grad(torch.ops.styleda_fast, ctx, grad_out), None, None, None


# ---------------------------------------------------------------- Triton kernels for CUDA tensors


def triton_kernels() -> types.ModuleType:
    """The Triton launchers of this family (imported on first use)."""
    return triton_launchers("text")


def _register() -> torch.library.Library:
    return register_family(
        "text",
        fakes={
            "noisy_text_projection": _noisy_text_projection_fake,
            "noisy_text_projection_backward": _noisy_text_projection_backward_fake,
            "clip_cosine_loss": _clip_cosine_loss_fake,
            "clip_cosine_loss_backward": _clip_cosine_loss_backward_fake,
            "noisy_style_features": _noisy_style_features_fake,
            "noisy_style_features_backward": _noisy_style_features_backward_fake,
        },
        autograd={
            "noisy_text_projection": (_noisy_text_projection_backward, _noisy_text_projection_setup),
            "clip_cosine_loss": (_clip_cosine_loss_backward, _clip_cosine_loss_setup),
            "noisy_style_features": (_noisy_style_features_backward, _noisy_style_features_setup),
        },
    )


# Without the compiled library the operators do not exist; the public API then runs the reference.
_LIBRARY = _register() if _CPP_PROBLEM is None else None


# ---------------------------------------------------------------- Triton on CPU tensors (interpreter)


class TritonNoisyTextProjection(torch.autograd.Function):
    """noisy_text_projection through the Triton launchers: for CPU tensors under TRITON_INTERPRET=1."""

    @staticmethod
    def forward(ctx, text, sigma, samples, seed, offset):
        out, norm = triton_kernels().noisy_text_projection(text, sigma, samples, seed, offset)
        ctx.save_for_backward(text, out, norm)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return noisy_text_projection_grad(triton_kernels(), ctx, grad_out), None, None, None, None


class TritonClipCosineLoss(torch.autograd.Function):
    """clip_cosine_loss through the Triton launchers: for CPU tensors under TRITON_INTERPRET=1."""

    @staticmethod
    def forward(ctx, image, text):
        ctx.save_for_backward(image, text)
        return triton_kernels().clip_cosine_loss(image, text)

    @staticmethod
    def backward(ctx, grad_loss):
        return clip_cosine_loss_grad(triton_kernels(), ctx, grad_loss)


class TritonNoisyStyleFeatures(torch.autograd.Function):
    """noisy_style_features through the Triton launchers: for CPU tensors under TRITON_INTERPRET=1."""

    @staticmethod
    def forward(ctx, xn, mean, std, feature_noise, seed, offset):
        ctx.save_for_backward(xn, mean, std)
        return triton_kernels().noisy_style_features(xn, mean, std, feature_noise, seed, offset)

    @staticmethod
    def backward(ctx, grad_out):
        return *noisy_style_features_grad(triton_kernels(), ctx, grad_out), None, None, None
