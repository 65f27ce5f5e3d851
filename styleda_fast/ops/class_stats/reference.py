"""Plain-PyTorch references of the class-statistics family: the executable specification (math: ``README.md``).

* ``patch_dominant_class_loop``: the way FAMix's public code finds each patch's class, ``torch.mode`` over the
  pixels of one patch at a time in nested Python loops. It is the reference for the kernels and the benchmark
  baseline.
* ``class_mean_std``: per image and class, statistics of each channel over the pixels of that class, in float64
  and two-pass (centered), never ``E[x^2] - E[x]^2``.
* ``sample_styles_loop``: FAMix's style draw, ``random.choice`` from per-class Python lists, one entry at a time.

Conventions (the kernels follow them):

* Patches use the split of ``styleda_fast.ops.style_mix.reference.patch_bounds`` (``floor(k*size/g)``).
* Dominant class: the mode of the patch's labels; ties go to the smallest value. With ``count_ignore`` the
  ignore value votes like a class (FAMix); without, only labelled pixels vote and a patch with none gets
  ``ignore_index``.
* Class statistics: ``std = sqrt(var_unbiased + eps)``. A class with one pixel has variance 0 (``std =
  sqrt(eps)``), a class with no pixel has ``mean = std = 0``; ``count`` tells them apart.
"""

from __future__ import annotations

import random

import torch

from styleda_fast.ops.style_mix.reference import patch_bounds


def patch_dominant_class_loop(
    labels: torch.Tensor,
    grid: tuple[int, int],
    ignore_index: int = 255,
    count_ignore: bool = True,
) -> torch.Tensor:
    """Mode of each patch of ``labels (B, H, W)`` with ``torch.mode``, one patch and image at a time.

    Returns ``(B, gh, gw)`` int64. ``torch.mode`` returns the smallest of tied values.
    """
    gh, gw = grid
    rows, cols = patch_bounds(labels.shape[1], gh), patch_bounds(labels.shape[2], gw)
    out = torch.empty(labels.shape[0], gh, gw, dtype=torch.int64, device=labels.device)
    for b in range(labels.shape[0]):
        for i in range(gh):
            for j in range(gw):
                patch = labels[b, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].flatten()
                if not count_ignore:
                    patch = patch[patch != ignore_index]
                    if patch.numel() == 0:
                        out[b, i, j] = ignore_index
                        continue
                out[b, i, j] = torch.mode(patch).values
    return out


def patch_dominant_class_bincount(
    labels: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    ignore_index: int = 255,
    count_ignore: bool = True,
) -> torch.Tensor:
    """Same result as :func:`patch_dominant_class_loop` from per-patch histograms (a second, independent reference).

    Returns ``(B, gh, gw)`` int64.
    """
    gh, gw = grid
    B, H, W = labels.shape
    rows, cols = patch_bounds(H, gh), patch_bounds(W, gw)
    row_patch = torch.repeat_interleave(torch.arange(gh), torch.tensor([rows[k + 1] - rows[k] for k in range(gh)]))
    col_patch = torch.repeat_interleave(torch.arange(gw), torch.tensor([cols[k + 1] - cols[k] for k in range(gw)]))
    patch = (row_patch[:, None] * gw + col_patch[None, :]).to(labels.device)  # (H, W)
    lab = labels.long()
    slot = torch.where(lab == ignore_index, torch.full_like(lab, num_classes), lab)  # (B, H, W) in [0, K]
    flat = (torch.arange(B, device=labels.device)[:, None, None] * gh * gw + patch) * (num_classes + 1) + slot
    hist = torch.bincount(flat.flatten(), minlength=B * gh * gw * (num_classes + 1))
    hist = hist.view(B, gh, gw, num_classes + 1)
    values = torch.cat([torch.arange(num_classes), torch.tensor([ignore_index])]).to(labels.device)
    if not count_ignore:
        hist = hist.clone()
        hist[..., num_classes] = 0
    # order slots by value so that argmax (first maximum) picks the smallest value among ties
    order = torch.argsort(values)
    best = values[order][hist[..., order].argmax(-1)]
    return torch.where(hist.sum(-1) > 0, best, torch.full_like(best, ignore_index))


def class_mean_std(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = 255, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and class statistics of ``x (B, C, H, W)`` over the pixels labelled with that class.

    ``labels`` is ``(B, H, W)``; pixels equal to ``ignore_index`` are skipped. Returns ``mean (B, K, C)``,
    ``std (B, K, C)`` in x's dtype (run it in float64 to get the specification), and ``count (B, K)`` int64.
    """
    B, C = x.shape[:2]
    K = num_classes
    lab = labels.long().flatten(1)  # (B, N)
    valid = lab != ignore_index
    index = torch.where(valid, lab, torch.zeros_like(lab)) + K * torch.arange(B, device=x.device)[:, None]
    weight = valid.to(x.dtype)
    values = x.flatten(2).transpose(1, 2).reshape(-1, C)  # (B*N, C)
    flat_index, flat_weight = index.flatten(), weight.flatten()
    count = torch.zeros(B * K, dtype=x.dtype, device=x.device).index_add_(0, flat_index, flat_weight)
    total = torch.zeros(B * K, C, dtype=x.dtype, device=x.device).index_add_(
        0, flat_index, values * flat_weight[:, None]
    )
    mean = total / count.clamp_min(1)[:, None]
    centered = (values - mean[flat_index]) * flat_weight[:, None]
    sq = torch.zeros(B * K, C, dtype=x.dtype, device=x.device).index_add_(0, flat_index, centered * centered)
    var = sq / (count - 1).clamp_min(1)[:, None]
    std = torch.where(count[:, None] > 0, (var + eps).sqrt(), torch.zeros_like(var))
    return mean.view(B, K, C), std.view(B, K, C), count.view(B, K).long()


def class_mean_std_loop(x, labels, num_classes, ignore_index=255, eps=1e-5):
    """:func:`class_mean_std` one image and class at a time with boolean masks, written for reading."""
    B, C = x.shape[:2]
    mean = x.new_zeros(B, num_classes, C)
    std = x.new_zeros(B, num_classes, C)
    count = torch.zeros(B, num_classes, dtype=torch.int64)
    for b in range(B):
        for k in range(num_classes):
            pixels = x[b][:, labels[b] == k]  # (C, n)
            n = pixels.shape[1]
            count[b, k] = n
            if n == 0:
                continue
            mean[b, k] = pixels.mean(1)
            var = pixels.var(1) if n > 1 else torch.zeros_like(mean[b, k])
            std[b, k] = (var + eps).sqrt()
    return mean, std, count


def sample_styles_loop(style_lists: dict, classes: torch.Tensor, fallback: int = 255, rng: random.Random | None = None):
    """FAMix's draw: for each entry of ``classes``, ``random.choice`` from that class's list of ``(mean, std)``
    pairs, from the ``fallback`` list when the class has none. Returns stacked ``(mean, std)`` of shape
    ``classes.shape + (C,)``."""
    rng = rng or random
    means, stds = [], []
    for k in classes.flatten().tolist():
        styles = style_lists.get(k) or style_lists[fallback]
        m, s = rng.choice(styles)
        means.append(m)
        stds.append(s)
    C = means[0].shape[-1]
    return torch.stack(means).view(*classes.shape, C), torch.stack(stds).view(*classes.shape, C)
