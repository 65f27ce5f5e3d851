"""FAMix's patch-wise PIN and transfer branch, with the public signatures and data structures.

Replace ``utils/PPIN.py``'s ``PPIN`` with :class:`PPIN` and the transfer branch of the segmentation forward
(``network/utils.py``) with :func:`transfer` (FAMix's own data: ``most_list``, the dict-of-lists bank, Beta weights)
or, keeping everything on the device, with :func:`transfer_fast` (dominant classes as a tensor and a StyleBank).
"""

from __future__ import annotations

import os
import random as _random

import torch
from torch import Tensor, nn

from styleda_fast.bank.safe_load import DEFAULT_MAX_BYTES, short
from styleda_fast.compat.poda import _fused_activation, apply_activation, calc_mean_std
from styleda_fast.core.checks import check_features, check_int
from styleda_fast.mining.engine import check_equal_patches, crop_patches
from styleda_fast.ops.style_mix import local_style_mix
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES

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


def _draw(saved_params: dict, key, rng, channels: int) -> tuple[Tensor, Tensor]:
    """FAMix's draw: uniform from the class's list, from the '255' list when the class has none."""
    name = str(key)
    if not saved_params.get(name + "_mu"):
        name = "255"
        if not saved_params.get("255_mu"):
            raise ValueError(f"saved_params has no style for class {short(key)} and none for the fallback '255'")
    mus, stds = saved_params[name + "_mu"], saved_params.get(name + "_std")
    if not isinstance(stds, list) or len(stds) != len(mus):
        raise ValueError(f"saved_params[{short(name + '_std')}] must be a list as long as {short(name + '_mu')}")
    idx = rng.choice(list(range(len(mus))))
    for key_name, t in ((f"{name}_mu", mus[idx]), (f"{name}_std", stds[idx])):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"saved_params[{short(key_name)}][{idx}] must be a float tensor, got {type(t).__name__}")
        if t.numel() != channels:
            raise ValueError(
                f"saved_params[{short(key_name)}][{idx}] has {t.numel()} values but features has C = {channels} "
                "channels; the styles must come from the same layer"
            )
    return mus[idx], stds[idx]


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
    check_features(features, "features")
    if not isinstance(saved_params, dict):
        raise TypeError(f"saved_params must be a dict of lists (FAMix's bank), got {type(saved_params).__name__}")
    if not isinstance(most_list, (list, tuple)) or not all(isinstance(m, (list, tuple)) for m in most_list):
        raise TypeError("most_list must be a list of g*g lists (one per patch) of B entries (one per image)")
    grid = len(most_list)
    div = int(round(grid**0.5))
    if grid == 0 or div * div != grid or any(len(m) != features.shape[0] for m in most_list):
        raise ValueError("most_list must hold g*g lists (one per patch) of B entries (one per image)")
    check_equal_patches(features, (div, div), f"div={div}")
    B, C = features.shape[:2]
    means, stds = [[None] * grid for _ in range(B)], [[None] * grid for _ in range(B)]
    for p, most in enumerate(most_list):
        for b, entry in enumerate(most):
            mu, sd = _draw(saved_params, entry, rng, C)
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
    """FAMix's ``most_list`` from a tensor of dominant classes, to call :func:`transfer` (FAMix's data structures)
    from :func:`styleda_fast.patch_dominant_class` (computed on the device in one pass).

    Args:
        dominant: ``(B, gh, gw)`` integer class ids, each in ``[0, len(class_names))`` or ``ignore_index``, e.g.
            ``patch_dominant_class(labels, grid=3)``.
        class_names: the ``K`` class names (Cityscapes by default), as FAMix's bank keys spell them.
        ignore_index: the unlabelled id (255), kept as the int in the output (FAMix's key ``"255"``); must lie
            outside ``[0, K)``.
    Returns:
        ``gh * gw`` lists (patches in row-major order), each of ``B`` entries (one per image): the patch's class
        name, or ``ignore_index``. For labels ``(B, H, W)``, ``most_list_from_dominant(patch_dominant_class(labels,
        3))`` equals the list FAMix builds with ``torch.mode`` per patch (both take the smallest class on ties).
    Raises:
        TypeError: ``dominant`` is not an integer tensor, ``class_names`` not a list/tuple of str, ``ignore_index``
            not an int. ValueError: ``dominant`` is not 3-D, holds an id outside ``[0, K)`` other than
            ``ignore_index``, or ``ignore_index`` lies in ``[0, K)``.
    """
    if not isinstance(dominant, Tensor) or dominant.is_floating_point() or dominant.is_complex():
        raise TypeError(f"dominant must be an integer torch.Tensor, got {getattr(dominant, 'dtype', type(dominant))}")
    if dominant.dtype == torch.bool:
        raise TypeError("dominant must be an integer torch.Tensor, got torch.bool")
    if dominant.dim() != 3:
        raise ValueError(f"dominant must have shape (B, gh, gw), got {tuple(dominant.shape)}")
    if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
        raise TypeError("class_names must be a list or tuple of str")
    ignore_index = check_int(ignore_index, "ignore_index")
    K = len(class_names)
    if 0 <= ignore_index < K:
        raise ValueError(f"ignore_index must lie outside [0, {K}) (the class ids), got {ignore_index}")
    ids = dominant.detach().long().cpu()
    valid = ((ids >= 0) & (ids < K)) | (ids == ignore_index)
    if not bool(valid.all()):
        bad = int(ids[~valid][0])
        raise ValueError(f"dominant must hold class ids in [0, {K}) or ignore_index = {ignore_index}, got {bad}")
    flat = ids.reshape(ids.shape[0], -1).t().tolist()
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


def load_saved_params(path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """FAMix's ``saved_params.pkl`` (``{"<class>_mu": [(C, 1, 1), ...], "<class>_std": [...], ...}``), read without
    running code from the file and with bounded memory: ``max_bytes`` (1 GiB by default) bounds the file and the
    tensor data it may declare; malformed tensors raise ``ValueError`` naming the file (see
    :func:`styleda_fast.bank.style_bank.safe_unpickle`). Values are returned as stored. For the device-resident bank,
    use ``StyleBank.from_famix_pickle``."""
    from styleda_fast.bank.safe_load import plain, safe_unpickle

    where = repr(os.fspath(path))
    params = safe_unpickle(path, max_bytes=max_bytes)
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in params.items()):
        raise ValueError(f"{where}: not a FAMix style pickle (expected a dict of lists of tensors)")
    for key, items in params.items():
        for i, t in enumerate(items):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise ValueError(f"{where}: {plain(key)}[{i}] must be a float tensor, got {short(t)}")
    return params
