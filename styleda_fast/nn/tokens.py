"""Vision-Transformer tokens as feature maps, and :class:`PatchTokens`, which runs any layer of this package on
them. The views: the patch tokens ``(B, prefix + h*w, C)`` of a ViT seen as a
``(B, C, h, w)`` grid without a copy, and back.

The grid is a channels-last view whose images are ``(prefix + h*w) * C`` elements apart (not ``C*h*w``): the
prefix tokens (class token, registers) sit between the images. The C++ style-mix kernels read and write such
a view in place (``local_style_mix(grid, ..., out=grid)`` styles the patch tokens of ``tokens`` and leaves the
prefix tokens bit for bit as they were); a fresh output has the same strides, with zeros where the prefix
tokens go. The Triton kernels read and write the same layouts (each tensor has its own batch stride there too).

    grid = tokens_as_grid(tokens, h, w)                     # (B, C, h, w) view, no copy
    local_style_mix(grid, mean, std, grid=1, activation=None, out=grid)  # in place, prefix untouched
    y = local_style_mix(grid, mean, std, grid=1, activation=None)        # differentiable, a new grid
    new_tokens = grid_as_tokens(y, tokens[:, :1])            # (B, 1 + h*w, C): the class token put back
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from styleda_fast.core.checks import batch_strided_layout, check_int

__all__ = ["PatchTokens", "grid_as_tokens", "grid_prefix", "tokens_as_grid"]


def tokens_as_grid(tokens: Tensor, h: int, w: int, prefix: int = 1) -> Tensor:
    """The patch tokens of ``tokens`` as a ``(B, C, h, w)`` feature map: a view, no copy.

    Args:
        tokens: ``(B, prefix + h*w, C)``, batch first (open_clip's ``VisionTransformer`` and timm run batch first),
            patch tokens in row-major order (token ``prefix + i*w + j`` is patch row ``i``, column ``j``).
        h, w: the patch grid (``image_size // patch_size`` per side).
        prefix: tokens before the patch tokens (1: the class token; more with register tokens; 0: none).
    Returns:
        The view ``tokens[:, prefix:]`` as ``(B, C, h, w)``; with dense ``(prefix + h*w, C)`` rows it is
        channels-last with batch stride ``(prefix + h*w) * C``, which the style-mix kernels read and write
        directly. Writing into it writes into ``tokens``, also in place when ``tokens`` require a gradient
        (``grid.mul_(2)``, ``local_style_mix(grid, ..., out=grid)`` under ``no_grad``): autograd treats it as the
        slice ``tokens[:, prefix:]`` does (in-place writes into a view of a leaf that requires grad are refused,
        as for any view).
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    check_int(h, "h", 1)
    check_int(w, "w", 1)
    check_int(prefix, "prefix", 0)
    if tokens.dim() != 3 or tokens.shape[1] != prefix + h * w:
        raise ValueError(
            f"tokens must have shape (B, prefix + h*w, C) = (B, {prefix + h * w}, C) for prefix={prefix}, h={h}, "
            f"w={w}; got {tuple(tokens.shape)}"
        )
    if tokens.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        if _set_creation_meta is None:  # a torch without it: the plain view (its gradient takes a zero-fill + copy)
            return _grid_view(tokens, h, w, prefix)
        _free_references()  # measured here, not inside a backward pass
        grid = _TokenGrid.apply(tokens, h, w, prefix)
        # autograd refuses in-place writes into a custom Function's view; this one is a plain view of the tokens
        # (view ops only), so it takes them as a slice does: the tokens' history is rebased onto the write
        _set_creation_meta(grid, torch._C._autograd.CreationMeta.DEFAULT)
        return grid
    return _grid_view(tokens, h, w, prefix)


_set_creation_meta = getattr(torch._C._autograd, "_set_creation_meta", None)


def _grid_view(tokens: Tensor, h: int, w: int, prefix: int) -> Tensor:
    grid = tokens[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
    if tokens.shape[0] == 1 and grid.stride(0) != tokens.stride(0):
        # a view gives a size-1 batch dimension a stride of its choosing; keep the tokens' own, so that the grid
        # (and the kernels' outputs on it) still say how many prefix rows lie before the patch tokens
        grid = grid.as_strided(grid.shape, (tokens.stride(0), *grid.stride()[1:]))
    return grid


class _TokenGrid(torch.autograd.Function):
    """``tokens_as_grid`` for tokens that need a gradient: the same view forward; backward builds the tokens'
    gradient without a copy when the grid's gradient comes from the style-mix kernels (their gradient of a token
    grid lies in a buffer shaped like the tokens, with unwritten rows where the prefix tokens go: those rows are
    zeroed and the whole buffer is the tokens' gradient) and nothing else holds it (a hook that kept the grid's
    gradient, ``torch.autograd.grad`` asked for it). Any other gradient is copied into zeros, as a slice's
    backward does. After an in-place write into the grid, autograd differentiates the write through the tokens'
    history instead (this backward no longer runs)."""

    @staticmethod
    def forward(ctx, tokens, h, w, prefix):
        ctx.tokens_shape, ctx.prefix = tokens.shape, prefix
        return _grid_view(tokens, h, w, prefix)

    @staticmethod
    def backward(ctx, grad):
        references = sys.getrefcount(grad)  # compared with _ProbeGrid's count: the same frame, nothing else holding
        B, length, C = ctx.tokens_shape
        prefix = ctx.prefix
        if references <= _free_references() and _owns_token_buffer(grad, prefix, length):
            tokens_grad = grad.as_strided((B, length, C), (length * C, C, 1), grad.storage_offset() - prefix * C)
            tokens_grad[:, :prefix].zero_()
            return tokens_grad, None, None, None
        tokens_grad = grad.new_zeros((B, length, C))
        tokens_grad[:, prefix:] = grad.permute(0, 2, 3, 1).reshape(B, length - prefix, C)
        return tokens_grad, None, None, None


class _ProbeGrid(_TokenGrid):
    """``_TokenGrid`` whose backward records how many references its gradient has when nothing else holds it."""

    counts: list[int] = []

    @staticmethod
    def backward(ctx, grad):
        references = sys.getrefcount(grad)
        _ProbeGrid.counts.append(references)
        return grad.new_zeros(ctx.tokens_shape), None, None, None


def _free_references() -> int:
    """``sys.getrefcount`` of a gradient in ``_TokenGrid.backward`` that only autograd holds (measured once; it
    depends on the Python and torch versions)."""
    if not _ProbeGrid.counts:
        with torch.enable_grad():
            tokens = torch.zeros(1, 2, 1, requires_grad=True)
            (_ProbeGrid.apply(tokens, 1, 1, 1) * 1).sum().backward()
    return min(_ProbeGrid.counts)


def _owns_token_buffer(grad: Tensor, prefix: int, length: int) -> bool:
    """Whether ``grad`` is a token grid with room for ``prefix`` rows before each image whose storage no other
    tensor uses (so those rows may be written): the kernels' fresh gradient of a token grid."""
    if grad.shape[0] == 0 or grad._base is not None or grid_prefix(grad) != prefix:
        return False
    B, C = grad.shape[:2]
    storage = grad.untyped_storage()
    if storage.nbytes() != B * length * C * grad.element_size() or grad.storage_offset() != prefix * C:
        return False
    try:  # no other tensor on this storage, and no other holder (C++: torch.autograd.grad) of this tensor
        return torch._C._storage_Use_Count(storage._cdata) <= 2 and grad._use_count() <= 1
    except AttributeError:  # a torch without these counters: take the safe path
        return False


def grid_prefix(grid: Tensor) -> int:
    """How many token rows of ``C`` elements fit before each image of ``grid`` in its memory: the ``prefix`` of
    :func:`tokens_as_grid` for its views and for the C++ kernels' outputs on them, 0 for a dense tensor or a grid
    that is not channels-last with whole token rows between the images."""
    layout = batch_strided_layout(grid)
    if layout is None or layout[0] != "nhwc" or grid.shape[0] == 0:
        return 0
    _, C, h, w = grid.shape
    gap = layout[1] - C * h * w
    if gap % C or grid.storage_offset() < gap:
        return 0
    return gap // C


def grid_as_tokens(grid: Tensor, prefix_tokens: Tensor | None = None) -> Tensor:
    """A ``(B, C, h, w)`` grid as ViT tokens ``(B, prefix + h*w, C)``.

    Args:
        grid: the patch tokens as a map (e.g. :func:`tokens_as_grid`, or the output of ``local_style_mix`` on it).
        prefix_tokens: ``(B, prefix, C)`` tokens to put before the patch tokens (the class token: ``tokens[:, :1]``).
    Returns:
        With ``prefix_tokens``: new tokens ``cat([prefix_tokens, patch tokens])`` (one copy; differentiable with
        respect to both). Without: the tokens around the grid in its own memory, a view (no copy): the inverse of
        :func:`tokens_as_grid`, e.g. the styled tokens after ``local_style_mix(grid, ..., out=grid)``. The prefix
        rows of a fresh output of the C++ kernels are zero (never an earlier tensor's data); pass
        ``prefix_tokens`` to put the class token there.
    """
    if not isinstance(grid, Tensor) or grid.dim() != 4:
        raise ValueError(f"grid must be a (B, C, h, w) tensor, got {getattr(grid, 'shape', type(grid).__name__)}")
    B, C, h, w = grid.shape
    patches = grid.permute(0, 2, 3, 1).reshape(B, h * w, C)
    if prefix_tokens is not None:
        if not isinstance(prefix_tokens, Tensor) or prefix_tokens.dim() != 3 or prefix_tokens.shape[0] != B:
            raise ValueError(f"prefix_tokens must be (B, prefix, C) with B = {B}, C = {C}")
        if prefix_tokens.shape[2] != C:
            raise ValueError(f"prefix_tokens must be (B, prefix, C) with B = {B}, C = {C}")
        return torch.cat([prefix_tokens.to(grid.dtype), patches], dim=1)
    prefix = grid_prefix(grid)
    if prefix == 0 and not grid.permute(0, 2, 3, 1).is_contiguous():
        raise ValueError(
            "grid has no prefix tokens in its memory (not a tokens_as_grid view); pass prefix_tokens to build new "
            "tokens"
        )
    if prefix == 0:
        return patches
    length = prefix + h * w
    return grid.as_strided((B, length, C), (length * C, C, 1), grid.storage_offset() - prefix * C)


class PatchTokens(nn.Module):
    """Applies ``layer`` to the patch tokens of ViT tokens.

    Args:
        layer: a style-augmentation layer taking ``(B, C, H, W)`` features (``MixStyle``, ``PermutedAdaIN``,
            ``DistributionUncertainty``, ``StyleBankAugment``, or any module with that signature).
        prefix: tokens before the patch tokens (1: the class token; more with register tokens; 0: none).
        grid: the patch grid ``(h, w)``; ``None``: square, ``h = w = sqrt(tokens - prefix)``.
        batch_first: tokens are ``(B, L, C)`` (open_clip and timm); ``False``: ``(L, B, C)`` (older open_clip
            blocks), whose patch tokens the kernels cannot address in place (they are copied first).
    Forward: ``tokens (B, prefix + h*w, C)`` (``labels`` passed on to ``layer`` for class-aware banks) ->
    tokens of the same shape: the prefix tokens as they were (the gradient reaches them unchanged) and the
    patch tokens augmented; the input tokens themselves when the layer does not act (eval mode, ``p`` draw,
    switched off), so evaluation is bit for bit the plain model's.
    """

    def __init__(self, layer: nn.Module, prefix: int = 1, grid: tuple[int, int] | None = None, batch_first=True):
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        check_int(prefix, "prefix", 0)
        if grid is not None:
            if not isinstance(grid, (tuple, list)) or len(grid) != 2:
                raise ValueError(f"grid must be None or a pair (h, w), got {grid!r}")
            check_int(grid[0], "grid[0]", 1)
            check_int(grid[1], "grid[1]", 1)
            grid = (int(grid[0]), int(grid[1]))
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {type(batch_first).__name__}")
        self.layer, self.prefix, self.grid, self.batch_first = layer, prefix, grid, batch_first

    @property
    def enabled(self) -> bool:
        """The wrapped layer's on/off switch (``styleda_fast.nn.disabled`` sets it through this wrapper)."""
        return getattr(self.layer, "enabled", True)

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if hasattr(self.layer, "enabled"):
            self.layer.enabled = value

    def extra_repr(self) -> str:
        grid = "square" if self.grid is None else f"{self.grid[0]}x{self.grid[1]}"
        return f"prefix={self.prefix}, grid={grid}" + ("" if self.batch_first else ", batch_first=False")

    def _patch_grid(self, length: int) -> tuple[int, int]:
        patches = length - self.prefix
        if self.grid is not None:
            h, w = self.grid
            if h * w != patches:
                raise ValueError(
                    f"tokens hold {length} tokens; prefix={self.prefix} and grid={self.grid} need {self.prefix + h * w}"
                )
            return h, w
        if patches < 1:
            raise ValueError(f"tokens hold {length} tokens: none left after prefix={self.prefix}")
        side = round(patches**0.5)  # not math.isqrt: under torch.compile with dynamic shapes, length is symbolic
        if side * side != patches:
            raise ValueError(
                f"tokens hold {length} tokens: {patches} after prefix={self.prefix} do not form a square grid; "
                "pass grid=(h, w)"
            )
        return side, side

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise ValueError(
                "tokens must be a 3-D tensor (B, prefix + h*w, C) (batch_first) or (L, B, C), got "
                f"{getattr(tokens, 'shape', type(tokens).__name__)}"
            )
        batched = tokens if self.batch_first else tokens.transpose(0, 1)
        h, w = self._patch_grid(batched.shape[1])
        grid = tokens_as_grid(batched, h, w, self.prefix)
        y = self.layer(grid) if labels is None else self.layer(grid, labels)
        if y is grid:
            return tokens
        out = grid_as_tokens(y, batched[:, : self.prefix])
        return out if self.batch_first else out.transpose(0, 1)
