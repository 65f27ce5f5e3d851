"""FAMix's patch-wise PIN and transfer branch, with the public signatures and data structures.

Replace ``utils/PPIN.py``'s ``PPIN`` with :class:`PPIN` and the transfer branch of the segmentation forward
(``network/utils.py``) with :func:`transfer` (FAMix's own data: ``most_list``, the dict-of-lists bank, Beta weights)
or, keeping everything on the device, with :func:`transfer_fast` (dominant classes as a tensor and a StyleBank).
"""

from __future__ import annotations

import random as _random

import torch
from torch import Tensor, nn

from styleda_fast.compat.poda import _fused_activation, apply_activation, calc_mean_std
from styleda_fast.mining import check_equal_patches, crop_patches
from styleda_fast.prompts import CITYSCAPES_CLASSES
from styleda_fast.style_mix import local_style_mix

CITYSCAPES_NAMES = CITYSCAPES_CLASSES


class PPIN(nn.Module):
    """FAMix's patch-wise PIN: one learnable style per selected patch, no clamp.

    Args:
        content_feat: ``(B, C, H, W)`` features; cut into ``div x div`` patches listed patch-major, then by image
            (index ``p * B + b``), as FAMix's ``unfold`` does.
        div: patches per side (must divide ``H`` and ``W``).
        ind: indices (in that order) of the patches to optimize.
    ``style_mean``/``style_std`` are ``(len(ind), C, 1, 1)`` parameters initialized to each patch's statistics;
    ``forward()`` returns ``relu(style_std * normalized patch + style_mean)``, ``(len(ind), C, H/div, W/div)``.
    """

    def __init__(self, content_feat: Tensor, div: int = 3, ind=()):
        super().__init__()
        self.ind = list(ind)
        self.div = div
        self.content_feat = content_feat.clone().detach()
        self.B, self.C = self.content_feat.shape[:2]
        check_equal_patches(self.content_feat, (div, div), f"div={div}")
        if not self.ind:
            raise ValueError("ind must select at least one patch")
        images, patches = [k % self.B for k in self.ind], [k // self.B for k in self.ind]
        self.patches = crop_patches(self.content_feat, (div, div), images, patches)  # the selected patches' content
        mean, std = calc_mean_std(self.patches)
        self.style_mean = nn.Parameter(mean.clone(), requires_grad=True)
        self.style_std = nn.Parameter(std.clone(), requires_grad=True)
        self.size = self.patches[0].size()

    def forward(self) -> Tensor:
        return local_style_mix(self.patches, self.style_mean, self.style_std, grid=1)


def _draw(saved_params: dict, key, rng) -> tuple[Tensor, Tensor]:
    """FAMix's draw: uniform from the class's list, from the '255' list when the class has none."""
    name = str(key)
    if not saved_params.get(name + "_mu"):
        name = "255"
        if not saved_params.get("255_mu"):
            raise ValueError(f"saved_params has no style for class {key!r} and none for the fallback '255'")
    idx = rng.choice(list(range(len(saved_params[name + "_mu"]))))
    return saved_params[name + "_mu"][idx], saved_params[name + "_std"][idx]


def transfer(
    features: Tensor, most_list, saved_params: dict, s: Tensor | None, activation="relu", *,
    rng=_random,
) -> Tensor:  # fmt: skip
    """FAMix's transfer branch with FAMix's data structures; same output as the public code.

    Args:
        features: ``(B, C, H, W)`` layer1 features; ``H`` and ``W`` divisible by the grid.
        most_list: ``g*g`` lists (patches in row-major order) of ``B`` entries: a class name or ``255``.
        saved_params: FAMix's bank, ``{"<class>_mu": [ (C, 1, 1), ... ], "<class>_std": [...], "255_mu": ...}``
            (e.g. from :func:`load_saved_params`, which reads the public pickle safely).
        s: mixing weights ``(B, C, 1, 1)`` (FAMix draws them from Beta(0.1, 0.1)); ``None``: pure transfer.
        activation: ``nn.ReLU`` (fused), ``None`` or any callable.
        rng: where the styles are drawn from: Python's ``random`` module by default, as FAMix (one
            ``random.choice`` per patch and image, patch-major), so a seeded run draws the same styles.
    Returns:
        ``(B, C, H, W)`` augmented features.
    """
    grid = len(most_list)
    div = int(round(grid**0.5))
    if div * div != grid or any(len(m) != features.shape[0] for m in most_list):
        raise ValueError("most_list must hold g*g lists (one per patch) of B entries (one per image)")
    check_equal_patches(features, (div, div), f"div={div}")
    B, C = features.shape[:2]
    means, stds = [[None] * grid for _ in range(B)], [[None] * grid for _ in range(B)]
    for p, most in enumerate(most_list):
        for b, entry in enumerate(most):
            mu, sd = _draw(saved_params, entry, rng)
            means[b][p], stds[b][p] = mu.reshape(C), sd.reshape(C)
    device = features.device
    target_mean = torch.stack([torch.stack(row) for row in means]).to(device)  # (B, g*g, C)
    target_std = torch.stack([torch.stack(row) for row in stds]).to(device)
    target_mean = target_mean.permute(0, 2, 1).reshape(B, C, div, div)
    target_std = target_std.permute(0, 2, 1).reshape(B, C, div, div)
    fused, after = _fused_activation(activation)
    y = local_style_mix(features, target_mean, target_std, grid=div, mix=s, activation=fused)
    return apply_activation(y, after)


def most_list_from_dominant(dominant: Tensor, class_names=CITYSCAPES_NAMES, ignore_index: int = 255) -> list:
    """FAMix's ``most_list`` (patch-major lists of class names or 255) from dominant classes ``(B, g, g)``."""
    B = dominant.shape[0]
    flat = dominant.reshape(B, -1).t().tolist()
    return [[ignore_index if c == ignore_index else class_names[c] for c in patch] for patch in flat]


def transfer_fast(
    features: Tensor, dominant: Tensor, bank, s: Tensor | None, activation="relu", *,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """The same augmentation with everything on the device: styles drawn by ``bank.sample`` (uniform within the
    patch's dominant class, the fallback class when it has none), then one fused kernel.

    Args:
        features: ``(B, C, H, W)``; dominant: ``(B, g, g)`` int64 from ``patch_dominant_class``; bank: a
            ``StyleBank``; s: ``(B, C)`` or ``(B, C, 1, 1)`` mixing weights or None.
    """
    mean_t, std_t = bank.sample(dominant, generator=generator)  # (B, g, g, C)
    fused, after = _fused_activation(activation)
    y = local_style_mix(
        features, mean_t.permute(0, 3, 1, 2), std_t.permute(0, 3, 1, 2), grid=tuple(dominant.shape[1:]), mix=s,
        activation=fused,
    )  # fmt: skip
    return apply_activation(y, after)


def load_saved_params(path) -> dict:
    """FAMix's ``saved_params.pkl`` (``{"<class>_mu": [(C, 1, 1), ...], "<class>_std": [...], ...}``), read without
    running code from the file. For the device-resident bank, use ``StyleBank.from_famix_pickle``."""
    from styleda_fast.style_bank import safe_unpickle

    params = safe_unpickle(path)
    if not isinstance(params, dict) or not all(isinstance(v, list) for v in params.values()):
        raise ValueError(f"{path}: not a FAMix style pickle (expected a dict of lists of tensors)")
    return params
