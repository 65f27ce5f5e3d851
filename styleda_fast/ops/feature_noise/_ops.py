"""Declarations of the feature-noise operators (:class:`styleda_fast.core.library.Operator`): argument rules, fake
kernels, reference and autograd. CPU runs the C++ kernels of ``feature_noise_cpu.cpp`` beside this file (schemas
there; the Philox generator is ``core/csrc/counter_noise.h``, shared with the text family), CUDA the Triton
launchers of ``_triton.py``.

The kernels' gradients have no second derivative: differentiating them raises a clear error.
"""

from __future__ import annotations

import torch

from styleda_fast.core.checks import acc_dtype, require, require_float, require_params, require_scalar
from styleda_fast.core.library import Operator, op_namespace, register
from styleda_fast.ops.feature_noise import reference

# argument rules


def _check_noisy_style_features(xn, mean, std, feature_noise, seed, offset):
    require_float(xn, "xn")
    require(xn.dim() >= 2, f"xn must be (B, C, ...), got {xn.dim()} dims")
    require_params(mean, "mean", xn.shape[:2], xn)
    require_params(std, "std", xn.shape[:2], xn)
    require_scalar(feature_noise, "feature_noise")
    require(0 <= offset < 2**32, f"offset must be in [0, 2^32), got {offset}")
    require(0 <= seed < 2**63, f"seed must be in [0, 2^63), got {seed}")


def _check_noisy_style_features_backward(grad_out, xn, mean, std, compute_grad_xn):
    _check_noisy_style_features(xn, mean, std, 0.0, 0, 0)
    require_float(grad_out, "grad_out")
    require(grad_out.shape == xn.shape and grad_out.dtype == xn.dtype, "grad_out must have xn's shape and dtype")


# fake kernels (the arguments are checked first)


def _noisy_style_features_fake(xn, mean, std, feature_noise, seed, offset):
    return torch.empty_like(xn)


def _noisy_style_features_backward_fake(grad_out, xn, mean, std, compute_grad_xn):
    grad_xn = torch.empty_like(xn) if compute_grad_xn else xn.new_empty(0)
    return grad_xn, torch.empty_like(mean), torch.empty_like(std)


# reference, with the operator's arguments and outputs


def _noisy_style_features_reference(xn, mean, std, feature_noise, seed, offset):
    acc = acc_dtype(xn.dtype)
    eps = reference.feature_noise(xn.numel(), seed, offset).view(xn.shape).to(xn.device, acc)
    return reference.noisy_style_features(xn.to(acc), mean, std, feature_noise, eps).to(xn.dtype)


# autograd


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


# declarations

NOISY_STYLE_FEATURES = Operator(
    "noisy_style_features",
    "feature_noise",
    _check_noisy_style_features,
    _noisy_style_features_fake,
    reference=_noisy_style_features_reference,
    backward=_noisy_style_features_backward,
    setup_context=_noisy_style_features_setup,
)
NOISY_STYLE_FEATURES_BACKWARD = Operator(
    "noisy_style_features_backward",
    "feature_noise",
    _check_noisy_style_features_backward,
    _noisy_style_features_backward_fake,
)

register(NOISY_STYLE_FEATURES, NOISY_STYLE_FEATURES_BACKWARD)
