"""Rules shared by every operator family: the accumulation dtype and the argument checks.

Error rule: a wrong type raises ``TypeError``, a wrong value ``ValueError``; each message names the argument.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and reductions accumulate (and are returned) in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_features(x, name: str = "x", *, nonempty: bool = False) -> None:
    """``x`` must be a 4-D ``(B, C, H, W)`` float16/bfloat16/float32/float64 tensor (``nonempty``: with ``B >= 1``
    and at least one pixel)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {x.dim()} dims (shape {tuple(x.shape)})")
    if x.dtype not in FEATURE_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if nonempty and (x.shape[0] == 0 or x.shape[2] * x.shape[3] == 0):
        raise ValueError(f"{name} must have at least one image and one pixel, got shape {tuple(x.shape)}")


def check_grid(grid) -> tuple[int, int]:
    """``grid`` as ``(gh, gw)``, each an int ``>= 1``: an int ``g`` means ``(g, g)``."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) for g in grid)
    ):
        raise TypeError(f"grid must be an int or a pair of ints (gh, gw), got {grid!r}")
    if min(grid) < 1:
        raise ValueError(f"grid must be at least 1 in each direction, got {tuple(grid)}")
    return tuple(grid)


def normalize_grid(grid, height: int, width: int) -> tuple[int, int]:
    """``grid`` as ``(gh, gw)`` (see :func:`check_grid`), each at most the size: ``gh <= H``, ``gw <= W``."""
    gh, gw = check_grid(grid)
    if not (gh <= height and gw <= width):
        raise ValueError(f"grid {(gh, gw)} must be at least 1 and at most the feature size (H, W) = {(height, width)}")
    return gh, gw


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` must be an int (not a bool) in ``[minimum, maximum]`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if maximum is not None and not (minimum if minimum is not None else value) <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value, name: str, *, minimum: float = 0.0) -> float:
    """``value`` must be a real number (int or float, not a bool), finite and ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


FLOAT32_MAX = 3.4028234663852886e38


def check_eps(eps) -> float:
    """``eps`` (added to a variance) must be a number in ``[0, float32 max]``: the GPU kernels take it as float32
    (plus a correction term), so a larger one would become inf there and not on the CPU."""
    eps = check_number(eps, "eps")
    if eps > FLOAT32_MAX:
        raise ValueError(f"eps must be at most the largest float32 ({FLOAT32_MAX:.4g}), got {eps!r}")
    return eps


def check_float_tensor(t, name: str) -> None:
    """``t`` must be a floating-point tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_labels(labels, name: str = "labels") -> None:
    """``labels`` must be a ``(B, H, W)`` integer tensor of train ids."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (train ids), got {labels.dtype}")
    if labels.dim() != 3:
        raise ValueError(f"{name} must have shape (B, H, W), got {labels.dim()} dims (shape {tuple(labels.shape)})")


MAX_CLASSES = 1 << 20


def check_num_classes(num_classes) -> int:
    """At most 2^20 classes: the kernels keep a count per class and patch."""
    return check_int(num_classes, "num_classes", 1, MAX_CLASSES)


def check_ignore_index(ignore_index, num_classes: int) -> int:
    """``ignore_index`` must be an int64 that is not a class id."""
    ignore_index = check_int(ignore_index, "ignore_index", -(2**63), 2**63 - 1)
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index must not be a class id in [0, num_classes = {num_classes}), got {ignore_index}")
    return ignore_index


def label_value_error(labels: Tensor, num_classes: int, ignore_index: int) -> ValueError:
    """The error for labels outside ``[0, num_classes)`` that are not ``ignore_index``: where and what."""
    lab = labels.long()
    bad = ((lab < 0) | (lab >= num_classes)) & (lab != ignore_index)
    where = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.any() else None
    value = f": {int(lab[where])} at {where}" if where is not None else ""
    return ValueError(
        f"labels must hold train ids in [0, num_classes = {num_classes}) or ignore_index = {ignore_index}; "
        f"found {int(bad.sum())} other value(s){value}"
    )


def check_label_values(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ``ValueError`` if a label is outside ``[0, num_classes)`` and not ``ignore_index``."""
    if labels.numel() == 0:
        return
    low, high = torch.aminmax(labels)
    if int(low) >= 0 and int(high) < num_classes:
        return
    lab = labels.long()
    if bool((((lab < 0) | (lab >= num_classes)) & (lab != ignore_index)).any()):
        raise label_value_error(labels, num_classes, ignore_index)


def per_patch(
    value,
    name: str,
    shape: tuple[int, int, int, int],
    device: torch.device,
    dtype: torch.dtype,
    *,
    allow_number: bool = False,
) -> Tensor:
    """Bring a per-image or per-patch parameter to a contiguous ``shape = (B, C, gh, gw)`` tensor of ``dtype``.

    Accepted: ``(B, C)`` (one value per image and channel), anything that broadcasts to ``(B, C, gh, gw)`` with
    4 dims (``(B, C, 1, 1)``, ``(B, C, gh, gw)``, ...), a 0-dim tensor, or (with ``allow_number``) a Python number,
    taken in ``dtype`` (a float64 ``mix=0.37`` is not rounded through float32).
    The expansion stays differentiable, so gradients come back in the caller's shape and dtype.
    """
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), device=device, dtype=dtype)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}; move them to one device")
    if value.dim() == 2:
        value = value[:, :, None, None]
    if value.dim() not in (0, 4) or any(s not in (1, t) for s, t in zip(value.shape, shape)):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to (B, C, gh, gw) = {shape}; "
            "give (B, C), (B, C, 1, 1) or (B, C, gh, gw)"
        )
    return value.to(dtype).expand(shape).contiguous()


def _inner_dense(x: Tensor, order: str) -> bool:
    """Whether each image's ``(C, H, W)`` elements are dense in ``order`` (strides of size-1 dims do not matter)."""
    _, C, H, W = x.shape
    want = {"nchw": (H * W, W, 1), "nhwc": (1, W * C, C)}[order]
    return all(size == 1 or stride == w for size, stride, w in zip(x.shape[1:], x.stride()[1:], want))


def batch_strided_layout(x: Tensor) -> tuple[str, int] | None:
    """``(order, batch_stride)`` when the style-mix kernels address ``x`` directly, else None.

    ``order`` is ``"nchw"`` or ``"nhwc"``: each image's ``(C, H, W)`` elements are dense in that order, and images
    are ``batch_stride >= C*H*W`` elements apart. Dense NCHW and channels_last tensors have ``batch_stride =
    C*H*W``; a ViT's patch tokens seen as a grid (:func:`styleda_fast.tokens_as_grid`) are ``"nhwc"`` with
    ``batch_stride = (prefix + h*w) * C``. NCHW wins when both orders fit (``C == 1`` or ``H == W == 1``), as in
    the C++ kernels (``style_mix_cpu.cpp``, ``memory_layout``).
    """
    if x.dim() != 4:
        return None
    image = x.shape[1] * x.shape[2] * x.shape[3]
    stride_b = x.stride(0) if x.stride(0) >= image else image if x.shape[0] == 1 else -1
    if stride_b < 0:
        return None
    for order in ("nchw", "nhwc"):
        if _inner_dense(x, order):
            return order, stride_b
    return None


def kernel_layout(x: Tensor) -> Tensor:
    """``x`` itself if the style-mix kernels address it directly (:func:`batch_strided_layout`: NCHW or
    channels_last images, any batch stride), else an NCHW-contiguous copy (what the C++ kernels make of it)."""
    return x if batch_strided_layout(x) is not None else x.contiguous()


def empty_kernel_output(x: Tensor) -> Tensor:
    """A fresh ``(B, C, H, W)`` output as the style-mix kernels (C++ and Triton; the fake kernels report the same)
    allocate it for input ``x``, uninitialised but for zeroed gaps between images: x's own strides when they
    address x directly, in a buffer of ``B * batch_stride`` elements that the output ends (so a token grid's output
    has room for the prefix tokens before each image); else NCHW-contiguous, like the copy they make of such an x."""
    B, C, H, W = x.shape
    layout = batch_strided_layout(x)
    if layout is None or layout[1] == C * H * W:
        strides = x.stride() if layout is not None else (C * H * W, H * W, W, 1)
        return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device)
    buffer = torch.empty((B * layout[1],), dtype=x.dtype, device=x.device)
    # the gap before each image (a token grid's prefix rows) is zeroed: never another tensor's stale data
    buffer.view(B, layout[1])[:, : layout[1] - C * H * W].zero_()
    # set_, not as_strided: the output owns its storage alone (not a view of a temporary), as the C++ kernels' own
    return torch.empty(0, dtype=x.dtype, device=x.device).set_(
        buffer.untyped_storage(), layout[1] - C * H * W, x.shape, x.stride()
    )


def per_item(value, name: str, B: int, C: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(C,)``, ``(B, C)`` or ``(B, C, 1, 1)`` (or anything broadcasting to ``(B, C)``) -> contiguous ``(B, C)``."""
    check_float_tensor(value, name)
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the features are on {device}; move them to one device")
    if value.dim() == 4 and value.shape[2:] == (1, 1):
        value = value.reshape(value.shape[0], value.shape[1])
    if value.dim() > 2 or any(s not in (1, t) for s, t in zip(reversed(value.shape), (C, B), strict=False)):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not fit (B, C) = ({B}, {C}); give (C,), (B, C) or (B, C, 1, 1)"
        )
    return value.to(dtype).expand(B, C).contiguous()


# Rules of the registered operators' own arguments (``torch.ops.styleda_fast.<op>`` can be called directly). The
# operator declarations (``ops/<family>/_ops.py``) run them before the fake kernel, the Triton launchers and the
# reference; the C++ kernels check the same with the same exception types.


def require(condition: bool, message: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` (``ValueError`` by default) with ``message`` unless ``condition``."""
    if not condition:
        raise error(f"styleda_fast: {message}")


def require_float(t, name: str) -> None:
    require(isinstance(t, Tensor), f"{name} must be a tensor", TypeError)
    require(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}", TypeError)


def require_params(t, name: str, shape: tuple, like: Tensor, contiguous: bool = True) -> None:
    """A per-patch (or per-item) parameter: ``shape``, like's accumulation dtype and device, and contiguous unless
    the operator takes any strides (``contiguous=False``)."""
    require_float(t, name)
    require(tuple(t.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    kind = "contiguous " if contiguous else ""
    require(
        (t.is_contiguous() or not contiguous) and t.dtype == acc_dtype(like.dtype) and t.device == like.device,
        f"{name} must be a {kind}{acc_dtype(like.dtype)} tensor on {like.device}",
    )


def require_scalar(value: float, name: str, maximum: float = FLOAT32_MAX) -> None:
    """An operator's float argument (eps, sigma, noise): finite, in ``[0, maximum]``."""
    require(math.isfinite(value) and 0 <= value <= maximum, f"{name} must be a finite number in [0, {maximum:.4g}], "
            f"got {value!r}")  # fmt: skip


def memory_bytes(device: torch.device) -> int:
    """The memory of ``device``: the GPU's total memory, else the machine's physical memory (0 if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def require_fits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, name: str) -> None:
    """An output of ``shape`` must fit in the memory of ``device`` (checked before allocating: a ``ValueError``
    naming the argument that sized it instead of an out-of-memory error). Meta tensors are not bounded."""
    if device.type == "meta" or torch.compiler.is_compiling() or not all(type(n) is int for n in shape):
        return  # symbolic sizes (tracing) are bounded when the real call runs
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    limit = memory_bytes(device)
    require(limit == 0 or size <= limit, f"{name}: the output {tuple(shape)} would need {size / 2**30:.4g} GiB, more "
            f"than the {limit / 2**30:.4g} GiB of memory of {device}")  # fmt: skip
