"""PODA's feature statistics, PIN module and transfer branch, with the public signatures.

Replace ``from utils.stats import calc_mean_std`` and PIN_aug.py's ``PIN`` with these, and the transfer branch of
the segmentation forward (``network/utils.py``) with :func:`transfer`.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from styleda_fast.bank.safe_load import DEFAULT_MAX_BYTES
from styleda_fast.ops.style_mix import local_style_mix, patch_mean_std


def calc_mean_std(feat: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and ``sqrt(unbiased var + eps)`` of ``feat (N, C, H, W)``: ``(N, C, 1, 1)`` each."""
    return patch_mean_std(feat, 1, eps)


def _fused_activation(activation) -> tuple[str | None, object]:
    """(activation the kernel applies, callable applied after it). ReLU in any spelling is fused."""
    if activation is None:
        return None, None
    if activation == "relu" or activation is torch.relu or activation is torch.nn.functional.relu:
        return "relu", None
    if isinstance(activation, nn.ReLU):
        return "relu", None
    if callable(activation):
        return None, activation
    raise ValueError(f"activation must be 'relu', None, nn.ReLU or a callable, got {activation!r}")


def apply_activation(y: Tensor, activation) -> Tensor:
    return y if activation is None else activation(y)


class PIN(nn.Module):
    """Prompt-driven instance normalization (PODA): learnable ``style_mean``/``style_std`` ``(B, C, 1, 1)``,
    initialized to the content's statistics; ``forward()`` clamps ``style_std >= 0`` in place and returns
    ``relu(style_std * normalized content + style_mean)``.

    Args:
        shape: ``[B, C, 1, 1]`` (kept for the public signature; the content gives the shape).
        content_feat: ``(B, C, H, W)`` features (detached and copied).
    """

    def __init__(self, shape, content_feat: Tensor):
        super().__init__()
        self.shape = shape
        self.content_feat = content_feat.clone().detach()
        self.content_mean, self.content_std = calc_mean_std(self.content_feat)
        self.size = self.content_feat.size()
        self.style_mean = nn.Parameter(self.content_mean.clone().detach(), requires_grad=True)
        self.style_std = nn.Parameter(self.content_std.clone().detach(), requires_grad=True)

    def forward(self) -> Tensor:
        self.style_std.data.clamp_(min=0)
        return local_style_mix(self.content_feat, self.style_mean, self.style_std, grid=1)


def transfer(
    features: Tensor,
    mu_t: Tensor,
    std_t: Tensor,
    *,
    mix: bool = False,
    activation="relu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """PODA's transfer branch: global AdaIN of ``features (B, C, H, W)`` toward ``mu_t``/``std_t`` ``(B, C, 1, 1)``,
    then the activation. With ``mix=True``, weights ``s ~ U[0, 1)`` of shape ``(B, C)`` blend each image's own
    statistics with the target. Like the public code, ``s`` is drawn on the CPU (from ``generator``, or torch's
    global generator) and moved to the features' device, so a seeded run draws the same ``s``.
    """
    fused, after = _fused_activation(activation)
    s = None
    if mix:
        s = torch.rand((features.shape[0], features.shape[1]), generator=generator).to(features.device)
    y = local_style_mix(features, mu_t, std_t, grid=1, mix=s, activation=fused)
    return apply_activation(y, after)


def load_stats(path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """One of PODA's per-image style pickles (``{"mu_f1": (C, 1, 1), "std_f1": (C, 1, 1)}``), read without running
    code from the file (only tensors and plain containers are rebuilt; anything else raises ``UnsafePickleError``)
    and with bounded memory: ``max_bytes`` (1 GiB by default) bounds the file and the tensor data it may declare,
    and malformed tensors raise ``ValueError`` naming the file (see :func:`styleda_fast.bank.style_bank.safe_unpickle`).
    Pickles of any protocol (0 to 5) are read; values are returned as stored (a negative std is kept, as PODA
    would). For a whole folder on the device, use ``StyleBank.from_poda_dir``."""
    from styleda_fast.bank.safe_load import safe_unpickle, short

    stats = safe_unpickle(path, max_bytes=max_bytes)
    if not isinstance(stats, dict) or not {"mu_f1", "std_f1"} <= set(stats):
        raise ValueError(f"{os.fspath(path)!r}: not a PODA style pickle (expected a dict with 'mu_f1' and 'std_f1')")
    for key in ("mu_f1", "std_f1"):
        if not isinstance(stats[key], Tensor) or not stats[key].is_floating_point():
            raise ValueError(f"{os.fspath(path)!r}: {key} must be a float tensor, got {short(stats[key])}")
    return stats
