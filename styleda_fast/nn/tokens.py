"""Style-augmentation layers on Vision-Transformer tokens: :class:`PatchTokens` runs any ``(B, C, H, W)`` layer of
this package on the patch tokens of ``(B, prefix + h*w, C)`` tokens, read through a zero-copy grid view
(:func:`styleda_fast.tokens_as_grid`); the prefix tokens (class token, registers) pass through unchanged.

    block = model.visual.transformer.resblocks[3]
    snn.insert(model, "visual.transformer.resblocks.3", snn.PatchTokens(snn.MixStyle(p=0.5, generator=0)))
"""

from __future__ import annotations

from torch import Tensor, nn

from styleda_fast._checks import check_int
from styleda_fast.tokens import grid_as_tokens, tokens_as_grid

__all__ = ["PatchTokens"]


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
