"""Plain-PyTorch statements of what the public style-augmentation layers compute, given their random draws.

The executable specification of :mod:`styleda_fast.nn` (tests and benchmark baselines): unfused, any dtype
(float64 for tight checks), differentiated by autograd. Each function says where it departs from the public code,
and only where that code has no defined answer (an error or NaN).

- MixStyle (Zhou et al., ICLR 2021; KaiyangZhou/mixstyle-release, Dassl.pytorch)
- PermutedAdaIN (Nuriel et al., CVPR 2021; onuriel/PermutedAdaIN)
- DSU (Li et al., ICLR 2022; lixiaotong97/DSU)
- PODA / FAMix transfer (Fahes et al., ICCV 2023 / CVPR 2024): AdaIN per patch toward a mined style
"""

from __future__ import annotations

import torch
from torch import Tensor

from styleda_fast.ops.style_mix.reference import patch_mean_std


def spatial_mean_std(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and ``sqrt(unbiased variance + eps)`` over the spatial positions, each ``(B, C, 1, 1)``.

    One pixel has no unbiased variance (PyTorch gives NaN); it is taken as 0 here, as in the package's kernels: the
    statistics of :func:`styleda_fast.ops.style_mix.reference.patch_mean_std` with one patch.
    """
    return patch_mean_std(x, (1, 1), eps)


def mixstyle(x: Tensor, perm: Tensor, lam: Tensor, eps: float = 1e-6) -> Tensor:
    """MixStyle's forward for draws ``perm (B,)`` and ``lam (B,)``: statistics detached, own and partner's mixed."""
    mean, std = spatial_mean_std(x, eps)
    mean, std = mean.detach(), std.detach()
    normalized = (x - mean) / std
    w = lam.to(x.dtype).reshape(-1, 1, 1, 1)
    mixed_std = std * w + std[perm] * (1 - w)
    mixed_mean = mean * w + mean[perm] * (1 - w)
    return normalized * mixed_std + mixed_mean


def crossdomain_permutation(first_shuffle: Tensor, second_shuffle: Tensor) -> Tensor:
    """MixStyle's "crossdomain" partners from its two ``randperm`` draws (sizes ``ceil(B/2)`` and ``floor(B/2)``).

    The reversed batch ``B-1, ..., 0`` is cut into a first part of ``ceil(B/2)`` entries and the rest
    (``Tensor.chunk(2)``), each part reordered by its draw. Dassl.pytorch's version (draw sizes from the parts)
    is followed: mixstyle-release's ``MixStyle2`` draws ``B // 2`` for both parts and fails for odd ``B``;
    ``chunk`` of a one-element batch gives one part, so ``B = 1`` fails there too, and gives ``[0]`` here.
    """
    batch = first_shuffle.numel() + second_shuffle.numel()
    reverse = torch.arange(batch - 1, -1, -1)
    half = (batch + 1) // 2
    return torch.cat([reverse[:half][first_shuffle.cpu()], reverse[half:][second_shuffle.cpu()]])


def permuted_adain(x: Tensor, perm: Tensor, eps: float = 1e-5, eps_after_sqrt: bool = True) -> Tensor:
    """PermutedAdaIN's forward for a draw ``perm (B,)``: AdaIN toward image ``perm[b]``'s statistics (detached);
    the own statistics stay differentiable. The public code adds ``eps`` once more to the own std after the square
    root (``eps_after_sqrt=True``, its behaviour); ``False`` gives plain AdaIN. 1x1 features are returned as is."""
    if x.shape[2] * x.shape[3] == 1:
        return x
    style_mean, style_std = spatial_mean_std(x[perm].detach(), eps)
    mean, std = spatial_mean_std(x, eps)
    if eps_after_sqrt:
        std = std + eps
    return (x - mean) / std * style_std + style_mean


def dsu(x: Tensor, noise_mean: Tensor, noise_std: Tensor, eps: float = 1e-6) -> Tensor:
    """DSU's forward for standard-normal draws ``noise_mean``, ``noise_std`` ``(B, C)``; all statistics are
    differentiated. The public code's batch variance of a one-image batch is NaN (and so is its output); here it is
    0, so the statistics move by ``sqrt(eps)`` times the noise."""
    B, C = x.shape[:2]
    mean, std = (t.flatten(1) for t in spatial_mean_std(x, eps))

    def spread(stat: Tensor) -> Tensor:
        batch_var = stat.var(dim=0, keepdim=True) if B > 1 else torch.zeros_like(stat[:1])
        return (batch_var + eps).sqrt().expand(B, C)

    beta = mean + noise_mean.to(x.dtype) * spread(mean)
    gamma = std + noise_std.to(x.dtype) * spread(std)
    normalized = (x - mean[:, :, None, None]) / std[:, :, None, None]
    return normalized * gamma[:, :, None, None] + beta[:, :, None, None]


def patch_transfer(
    x: Tensor,
    style_mean: Tensor,
    style_std: Tensor,
    grid: tuple[int, int],
    mix: Tensor | None,
    activation: str | None,
    eps: float = 1e-5,
) -> Tensor:
    """PODA/FAMix's transfer: per patch of a ``gh x gw`` grid (rows ``floor(i*H/gh)..floor((i+1)*H/gh)``, columns
    likewise; FAMix's ``unfold`` when ``g`` divides the size), AdaIN toward ``style_mean/std (B, C, gh, gw)``, the
    target mixed with the patch's own statistics by ``mix (B, C)`` (``None``: pure transfer), then the activation."""
    gh, gw = grid
    H, W = x.shape[2:]
    rows = [i * H // gh for i in range(gh + 1)]
    cols = [j * W // gw for j in range(gw + 1)]
    out_rows = []
    for i in range(gh):
        out_cols = []
        for j in range(gw):
            patch = x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            mean, std = spatial_mean_std(patch, eps)
            target_mean = style_mean[:, :, i : i + 1, j : j + 1].to(x.dtype)
            target_std = style_std[:, :, i : i + 1, j : j + 1].to(x.dtype)
            if mix is not None:
                s = mix.to(x.dtype).reshape(x.shape[0], x.shape[1], 1, 1)
                target_mean = s * mean + (1 - s) * target_mean
                target_std = s * std + (1 - s) * target_std
            out_cols.append((patch - mean) / std * target_std + target_mean)
        out_rows.append(torch.cat(out_cols, dim=3))
    y = torch.cat(out_rows, dim=2)
    return torch.relu(y) if activation == "relu" else y
