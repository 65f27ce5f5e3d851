"""Style mining (PODA's PIN and FAMix's patch-wise PIN), batched across many of the public code's batches.

For each item (a source image's or a patch's ``layer1`` features), trainable statistics ``mean_s, std_s (C,)``
start at the item's own statistics and are optimized for ``steps`` SGD steps so that the CLIP image embedding of
``relu(std_s * xn + mean_s)`` (``xn`` the normalized content) moves toward the item's text target.

Batching does not change any item's result: items are independent (the CLIP tail runs in eval mode, and SGD with
momentum and weight decay acts elementwise), so mining many public batches at once only needs each item's loss
to carry the weight it had in its own batch: ``1 / reference_batch_size``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleda_fast.core.checks import check_features, check_int, check_number, normalize_grid
from styleda_fast.nn.tokens import grid_as_tokens, grid_prefix, tokens_as_grid
from styleda_fast.ops.class_stats import patch_dominant_class
from styleda_fast.ops.style_mix import local_style_mix, patch_mean_std
from styleda_fast.ops.text import clip_cosine_loss, draw_seed, noisy_style_features
from styleda_fast.ops.text import reference as text_reference

STD_FLOOR = 1e-5**0.5
"""Smallest std a mined style keeps (``final_clamp``): ``sqrt(eps)`` with the ``eps = 1e-5`` that instance
statistics add to the variance, i.e. the smallest std a real feature's statistics can have."""


def _adaptive_pool_matrix(size_in: int, size_out: int, device, dtype) -> Tensor:
    """``(size_out, size_in)`` averaging matrix of ``adaptive_avg_pool`` along one axis (PyTorch's windows)."""
    matrix = torch.zeros(size_out, size_in, device=device, dtype=dtype)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _fold_batchnorm(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` with every eval-mode BatchNorm that follows a convolution folded into its weights."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    layer = copy.deepcopy(layer).eval()
    for block in layer.modules():
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            conv, bn = getattr(block, conv_name, None), getattr(block, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(block, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(block, bn_name, nn.Identity())
        downsample = getattr(block, "downsample", None)
        if isinstance(downsample, nn.Sequential) and "0" in downsample._modules and "1" in downsample._modules:
            conv, bn = downsample._modules["0"], downsample._modules["1"]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                downsample._modules["0"] = fuse_conv_bn_eval(conv, bn)
                downsample._modules["1"] = nn.Identity()
    return layer


class ClipImageTail(nn.Module):
    """The part of a CLIP ModifiedResNet after ``layer1``: ``(N, C1, H, W)`` features -> ``(N, D)`` embeddings.

    Features are first average-pooled to ``pool_to x pool_to`` (56 for the RN50 family at 224 px), so that the
    attention pool sees the 7x7 grid its positional embedding was trained for; ``pool_to=None`` skips that.

    The same function as ``visual``'s layers, computed with less work (all exact up to rounding): the adaptive
    pooling is two small matrix products, eval-mode BatchNorms are folded into the preceding convolutions
    (``fold_batchnorm``; the tail then holds its own copy of ``layer2``..``layer4``, so it is for frozen
    encoders), and the attention pool only computes the query and output projection of the token it returns.
    """

    def __init__(self, visual: nn.Module, pool_to: int | None = 56, fold_batchnorm: bool = True):
        super().__init__()
        self.pool_to = pool_to
        layers = (visual.layer2, visual.layer3, visual.layer4)
        if fold_batchnorm:
            layers = tuple(_fold_batchnorm(layer) for layer in layers)
        self.layer2, self.layer3, self.layer4 = layers
        self.attnpool = visual.attnpool

    def _pool(self, features: Tensor) -> Tensor:
        if self.pool_to is None or tuple(features.shape[-2:]) == (self.pool_to, self.pool_to):
            return features
        height, width = features.shape[-2:]
        rows = _adaptive_pool_matrix(height, self.pool_to, features.device, features.dtype)
        cols = _adaptive_pool_matrix(width, self.pool_to, features.device, features.dtype)
        return rows @ features @ cols.t()

    def _attention_pool(self, x: Tensor) -> Tensor:
        """open_clip's AttentionPool2d, returning token 0 without computing the other tokens' outputs."""
        pool = self.attnpool
        if x.shape[2] * x.shape[3] + 1 != pool.positional_embedding.shape[0]:
            side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
            raise ValueError(
                f"the attention pool takes a {side}x{side} grid (layer1 features of {side * 8}x{side * 8}), got "
                f"{x.shape[2]}x{x.shape[3]}; use pool_to={side * 8}"
            )
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False,
        )  # fmt: skip
        return out[0]

    def forward(self, features: Tensor) -> Tensor:
        return self._attention_pool(self.layer4(self.layer3(self.layer2(self._pool(features)))))


class ClipImageHead(nn.Module):
    """The stem and ``layer1`` of a CLIP ModifiedResNet: ``(N, 3, H, W)`` images -> ``(N, C1, H/4, W/4)``."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual_stem = visual.stem
        self.layer1 = visual.layer1
        self._dtype = visual.conv1.weight.dtype

    def forward(self, images: Tensor) -> Tensor:
        return self.layer1(self.visual_stem(images.to(self._dtype)))


def _check_modified_resnet(visual) -> None:
    needed = ("stem", "conv1", "layer1", "layer2", "layer3", "layer4", "attnpool")
    if not isinstance(visual, nn.Module) or not all(hasattr(visual, n) for n in needed):
        raise TypeError(
            "visual must be an open_clip ModifiedResNet (model.visual of RN50, RN101, RN50x4, ...) or "
            f"VisionTransformer (ViT-B-16, ...), got {type(visual).__name__}"
        )


def is_vision_transformer(visual) -> bool:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "_pool")
    return isinstance(visual, nn.Module) and all(hasattr(visual, n) for n in needed)


def _check_split_block(visual, split_block) -> int:
    """``split_block`` for a VisionTransformer (required, in ``[0, layers]``); ``TypeError`` for a ResNet."""
    if not is_vision_transformer(visual):
        _check_modified_resnet(visual)
        if split_block is not None:
            raise TypeError("split_block is for VisionTransformers; a ModifiedResNet splits after layer1")
        return -1
    layers = len(visual.transformer.resblocks)
    if split_block is None:
        raise TypeError(f"split_block is required for a VisionTransformer: the blocks before the split (0..{layers})")
    return check_int(split_block, "split_block", 0, layers)


def clip_image_tail(
    visual: nn.Module, *, pool_to: int | None = 56, fold_batchnorm: bool = True, split_block: int | None = None
) -> nn.Module:
    """The part of ``visual`` after the split: features -> image embedding.

    ModifiedResNet: ``layer1`` features -> (pool, ``layer2``..``layer4``, attention pool); ``fold_batchnorm`` folds
    eval-mode BatchNorms into copies of the convolutions (faster; for frozen encoders).
    VisionTransformer: ``split_block=k`` (required) gives :class:`ClipViTImageTail`, blocks ``k..`` and the pooling
    (``pool_to`` and ``fold_batchnorm`` do not apply).
    """
    if _check_split_block(visual, split_block) >= 0:
        return ClipViTImageTail(visual, split_block)
    if pool_to is not None:
        check_int(pool_to, "pool_to", 1)
    return ClipImageTail(visual, pool_to, fold_batchnorm)


def clip_image_head(visual: nn.Module, *, split_block: int | None = None) -> nn.Module:
    """Images -> the features that styles are mined and applied on.

    ModifiedResNet: the CLIP stem and ``layer1`` (``(N, C1, H/4, W/4)`` features).
    VisionTransformer: ``split_block=k`` (required) gives :class:`ClipViTImageHead`: the patch embedding, class
    token and positional embedding, ``ln_pre`` and blocks ``0..k-1``, returning the patch tokens as a token grid
    ``(N, C, h, w)`` (:func:`styleda_fast.tokens_as_grid`) whose memory holds the class token.
    """
    if _check_split_block(visual, split_block) >= 0:
        return ClipViTImageHead(visual, split_block)
    return ClipImageHead(visual)


# ------------------------------------------------------------------------------------------ VisionTransformer


def _run_blocks(blocks, tokens: Tensor, batch_first: bool) -> Tensor:
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    for block in blocks:
        tokens = block(tokens)
    return tokens if batch_first else tokens.transpose(0, 1)


class ClipViTImageHead(nn.Module):
    """The start of an open_clip ``VisionTransformer`` up to block ``split_block``: images ``(N, 3, H, W)`` -> the
    patch tokens as a ``(N, C, H/p, W/p)`` token grid (a :func:`styleda_fast.tokens_as_grid` view, channels-last,
    whose memory holds the class token before each image's patch tokens: ``prefix_tokens = 1``).

    Computes ``conv1`` (the patch embedding), the class token and positional embedding, ``ln_pre`` and blocks
    ``0..split_block-1``, as ``visual`` does in eval mode (patch dropout is a training-time augmentation and is not
    applied). Images of another size than ``visual``'s get the positional embedding of the patch tokens resized
    bicubically (antialiased), as open_clip resizes it when it loads weights for another image size.
    """

    prefix_tokens = 1

    def __init__(self, visual: nn.Module, split_block: int):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = nn.ModuleList(list(visual.transformer.resblocks)[:split_block])
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.grid_size = tuple(visual.grid_size)

    def positional_embedding_for(self, h: int, w: int) -> Tensor:
        """``(1 + h*w, C)``: the class token's embedding and the patch grid's, resized to ``h x w`` if needed."""
        if (h, w) == self.grid_size:
            return self.positional_embedding
        pos = self.positional_embedding
        cls, grid = pos[:1], pos[1:].reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
        dtype = grid.dtype if grid.dtype in (torch.float32, torch.float64) else torch.float32
        grid = F.interpolate(grid.to(dtype), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([cls, grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)])

    def tokens(self, images: Tensor) -> tuple[Tensor, int, int]:
        """``(tokens, h, w)``: the ``(N, 1 + h*w, C)`` tokens after block ``split_block - 1`` (batch first) and the
        patch grid."""
        x = self.conv1(images.to(self.conv1.weight.dtype))
        n, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(n, 1, c), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding_for(h, w).to(x.dtype))
        return _run_blocks(self.blocks, x, self.batch_first), h, w

    def forward(self, images: Tensor) -> Tensor:
        tokens, h, w = self.tokens(images)
        return tokens_as_grid(tokens, h, w, self.prefix_tokens)


class ClipViTImageTail(nn.Module):
    """The rest of an open_clip ``VisionTransformer`` from block ``split_block``: tokens -> image embedding ``(N, D)``.

    Input: tokens ``(N, 1 + h*w, C)`` (batch first), or a token grid ``(N, C, h, w)`` whose memory holds the class
    token (:class:`ClipViTImageHead`'s output, any :func:`styleda_fast.tokens_as_grid` view). Runs blocks
    ``split_block..``, then ``visual``'s pooling and ``proj``, as ``visual`` does in eval mode (exact up to
    rounding). With the class-token pooling of CLIP (``pool_type='tok'``, no attentional pooler) only the class
    token's output is needed after the last block: the last block computes the attention query, the MLP and
    ``ln_post`` of that token only. Other poolings (``'avg'``, ``attn_pool``, ``final_ln_after_pool``) run open_clip's
    own ``_pool``.

    ``activation = None``: ViT features are not post-ReLU (they are residual-stream tokens, of any sign), so the
    synthesized features of style mining are ``std * xn + mean`` without a ReLU (see :func:`mine_styles`).
    """

    prefix_tokens = 1
    activation = None

    def __init__(self, visual: nn.Module, split_block: int):
        super().__init__()
        self.blocks = nn.ModuleList(list(visual.transformer.resblocks)[split_block:])
        self.channels = visual.conv1.out_channels  # the token width C
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.ln_post = visual.ln_post
        self.attn_pool = getattr(visual, "attn_pool", None)
        self.attn_pool_contrastive = getattr(visual, "attn_pool_contrastive", None)
        self.proj = visual.proj
        self._open_clip_pool = visual._pool  # bound method; its modules are registered above, so .to() moves them
        self.class_token_pool = self.attn_pool is None and getattr(visual, "pool_type", "tok") == "tok"

    def _class_token_last_block(self, tokens: Tensor) -> Tensor | None:
        """The last block's output for the class token only ``(N, 1, C)``, or None where it cannot be split."""
        from open_clip.transformer import ResidualAttentionBlock

        block = self.blocks[-1]
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") or not self.batch_first:
            return None
        y = block.ln_1(tokens)
        x0 = tokens[:, :1] + block.ls_1(block.attn(y[:, :1], y, y, need_weights=False)[0])
        return x0 + block.ls_2(block.mlp(block.ln_2(x0)))

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 4 and grid_prefix(features) != self.prefix_tokens:
            raise ValueError(
                "a token grid for the ViT tail must hold the class token in its memory (a tokens_as_grid view with "
                "prefix=1, or the head's output); pass tokens (N, 1 + h*w, C) otherwise"
            )
        tokens = grid_as_tokens(features) if features.dim() == 4 else features
        if self.class_token_pool and len(self.blocks) > 0:
            head = _run_blocks(self.blocks[:-1], tokens, self.batch_first)
            last = self._class_token_last_block(head)
            tokens = _run_blocks(self.blocks[-1:], head, self.batch_first)[:, :1] if last is None else last
        else:
            tokens = _run_blocks(self.blocks, tokens, self.batch_first)
        if self.class_token_pool:
            pooled = self.ln_post(tokens[:, 0])
        else:
            pooled, _ = self._open_clip_pool(tokens)
        return pooled @ self.proj if self.proj is not None else pooled


@dataclasses.dataclass
class MiningResult:
    """Mined styles: ``mean (N, C)``, ``std (N, C)``, and each item's loss ``(N,)`` at the last step."""

    mean: Tensor
    std: Tensor
    loss: Tensor


def _item_weights(reference_batch_size, n: int, device) -> Tensor:
    """Per-item loss weight ``1 / reference batch size`` (default: the ``n`` items given form one public batch)."""
    if reference_batch_size is None:
        return torch.full((n,), 1.0 / max(n, 1), device=device)
    if not isinstance(reference_batch_size, Tensor):
        check_int(reference_batch_size, "reference_batch_size", 1)
        return torch.full((n,), 1.0 / reference_batch_size, device=device)
    if isinstance(reference_batch_size, Tensor) and reference_batch_size.shape == (n,):
        if (reference_batch_size < 1).any():
            raise ValueError("reference_batch_size must be >= 1 for every item")
        return 1.0 / reference_batch_size.to(device=device, dtype=torch.float32)
    raise ValueError(
        f"reference_batch_size must be None, an int or an (N,) tensor with N = {n}; got shape "
        f"{tuple(reference_batch_size.shape)}"
    )


def mine_styles(
    tail: nn.Module,
    content: Tensor,
    targets: Tensor,
    *,
    steps: int = 100,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    feature_noise: float = 0.0,
    seed: int | None = None,
    detach_norm: bool = True,
    clamp_std: bool = True,
    final_clamp: bool = True,
    activation: str | None = "auto",
    reference_batch_size: int | Tensor | None = None,
    batch_size: int | None = None,
    item_offset: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: Callable[[int], None] | None = None,
    step_progress: Callable[[int, int], None] | None = None,
) -> MiningResult:
    """Optimize a style (mean, std per channel) for each content item toward its text target.

    Args:
        tail: ``layer1`` features -> embeddings ``(N, D)``, e.g. :func:`clip_image_tail`. Put in eval mode here.
            A ViT tail (:class:`ClipViTImageTail`, ``clip_image_tail(visual, split_block=k)``) takes tokens.
        content: ``(N, C, H, W)`` items (whole images for PODA, patches for FAMix); detached. For a ViT tail: a
            token grid (:func:`styleda_fast.tokens_as_grid` view, e.g. :class:`ClipViTImageHead`'s output, or
            ``select_patches(..., prefix=1)``'s patches) whose memory holds each item's class token. The style is
            that of the patch tokens (per-channel mean and std over the ``h*w`` tokens, class token excluded); the
            class token is passed to the tail unchanged.
        targets: ``(N, D)`` text targets (normalized here).
        steps, lr, momentum, weight_decay: SGD as in the public code (100 steps, lr 1, momentum 0.9, wd 1e-4).
        feature_noise: standard deviation of Gaussian noise added to the synthesized features at each step
            (the fused ``noisy_style_features``; a new draw per step and item, keyed by ``seed``, the item's global
            index and the step, so it does not depend on ``batch_size``; ``seed=None`` draws a run seed).
        detach_norm: divide the embedding by its detached norm before the cosine (the public code's graph).
        clamp_std: clamp ``std_s >= 0`` in place before each step (PODA's PIN; FAMix's patch-wise PIN does not).
        activation: of the synthesized features: ``"relu"`` (PODA/FAMix on ResNet ``layer1`` features, which are
            post-ReLU), ``None`` (identity: ``std * xn + mean``) or ``"auto"``: the tail's ``activation`` attribute,
            ``None`` for a ViT tail (its tokens are residual-stream features of any sign; a ReLU would zero about
            half of them), else ``"relu"``.
        final_clamp: clamp the returned std to ``>= STD_FLOOR`` (``sqrt(1e-5)``, the smallest std that instance
            statistics give). Without it a mined std can be negative: FAMix never clamps, and PODA clamps before
            each step, so its last step can still leave a std below 0 (a negative std flips the normalized content
            when the style is applied). ``final_clamp=False`` returns the public code's raw values.
        reference_batch_size: the batch size each item had in the public code, whose loss is averaged over its
            batch: each item's loss is weighted by ``1 / reference_batch_size``, so many public batches mined
            together give the same styles. Default: the ``N`` items given are one public batch (weight ``1/N``),
            whatever ``batch_size`` is.
        batch_size: items optimized together. Default: all of them on a GPU (where batching fills the device);
            8 on the CPU, where the convolutions already run near peak in small batches and larger ones only
            add cache misses (measured: 8 items per chunk were 1.4x faster than 24 on 2 cores).
        item_offset: global index of ``content[0]`` (keys the noise, so that shards and chunks agree).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the encoder tail under autocast.
        channels_last: run the tail on channels_last tensors.
        progress: called with the number of items finished after each chunk.
        step_progress: called after each SGD step with ``(steps done, steps in all)``, counting the steps of every
            chunk of ``batch_size`` items (``steps`` per chunk).
    Returns:
        :class:`MiningResult` with ``mean``, ``std`` ``(N, C)`` float32 and ``loss (N,)``, each item's loss at
        the last step (before its last update).
    Raises:
        ``TypeError`` for an argument of the wrong type (``steps=True``, ``lr="1"``), ``ValueError`` for a wrong
        value (``steps=-1``, ``lr=nan``); the message names the argument.

    The style is applied by the fused ``local_style_mix`` (``grid=1``) and the loss is the fused
    ``clip_cosine_loss``. On ReLU content (real layer1 features) the first step's pre-activation of a zero pixel is
    0 up to rounding, so which of those pixels pass the ReLU is rounding noise, in the public code as here.
    """
    if not isinstance(tail, nn.Module):
        raise TypeError(f"tail must be an nn.Module (e.g. clip_image_tail(model.visual)), got {type(tail).__name__}")
    check_features(content, "content")
    if activation == "auto":
        activation = getattr(tail, "activation", "relu")
    if activation not in ("relu", None):
        raise ValueError(f"activation must be 'relu', None or 'auto', got {activation!r}")
    prefix = getattr(tail, "prefix_tokens", 0)
    if prefix and grid_prefix(content) != prefix:
        raise ValueError(
            f"content must be a token grid holding {prefix} prefix token(s) before each item's patch tokens for this "
            "ViT tail: tokens_as_grid(tokens, h, w), the ViT head's output or select_patches(..., prefix=1)'s "
            f"patches; got strides {tuple(content.stride())}"
        )
    if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.shape[0] != content.shape[0]:
        raise ValueError(
            f"targets must be (N, D) with N = {content.shape[0]} items, got "
            f"{tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__}"
        )
    if targets.device != content.device:
        raise ValueError(f"targets is on {targets.device} but content is on {content.device}")
    check_int(steps, "steps", 0)
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        check_number(value, name)
    check_number(feature_noise, "feature_noise")
    if seed is not None:
        check_int(seed, "seed")
    check_int(item_offset, "item_offset", 0)
    n = content.shape[0]
    if batch_size is None:
        batch_size = max(1, n if content.device.type != "cpu" else min(n, 8))
    check_int(batch_size, "batch_size", 1)
    chunks = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    steps_done, steps_total = 0, steps * len(chunks)

    def count_step() -> None:
        nonlocal steps_done
        steps_done += 1
        step_progress(steps_done, steps_total)

    weights = _item_weights(reference_batch_size, n, content.device)
    sgd = SGDSettings(steps, lr, momentum, weight_decay, clamp_std)
    synthesis = SynthesisSettings(
        activation, prefix, feature_noise, seed if seed is not None or not feature_noise else draw_seed(),
        detach_norm, autocast_dtype, channels_last,
    )  # fmt: skip
    tail.eval()
    if channels_last:
        tail.to(memory_format=torch.channels_last)
    for p in tail.parameters():
        p.requires_grad_(False)
    targets = F.normalize(targets.float(), dim=-1)
    means, stds, losses = [], [], []
    for chunk in chunks:
        items = ItemBatch(
            content[chunk.start : chunk.stop].detach(), targets[chunk.start : chunk.stop],
            weights[chunk.start : chunk.stop], item_offset + chunk.start,
        )  # fmt: skip
        result = _optimize_item_batch(tail, items, sgd, synthesis, count_step if step_progress is not None else None)
        means.append(result.mean)
        stds.append(result.std.clamp_min(STD_FLOOR) if final_clamp else result.std)
        losses.append(result.loss)
        if progress is not None:
            progress(len(chunk))
    if not chunks:
        empty = content.new_zeros(0, content.shape[1], dtype=torch.float32)
        return MiningResult(empty, empty.clone(), content.new_zeros(0, dtype=torch.float32))
    return MiningResult(torch.cat(means), torch.cat(stds), torch.cat(losses))


def derived_seed(seed: int, index: int, stream: str = "") -> int:
    """A 63-bit seed for item (or chunk) ``index`` of a run seeded with ``seed``; independent of any batching.
    ``stream`` names an independent family of seeds (e.g. ``"text-noise"``)."""
    key = f"{seed}:{index}" if not stream else f"{seed}:{stream}:{index}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _feature_noise(like: Tensor, seed: int, step: int) -> Tensor:
    """Standard normals shaped like one item ``(C, H, W)``, in its NCHW element order, keyed by ``(seed, step)``."""
    return text_reference.feature_noise(like.numel(), seed, step).view(like.shape).to(like.device, like.dtype)


def _weighted_loss(embeddings: Tensor, targets: Tensor, weights: Tensor, detach_norm: bool) -> Tensor:
    """``sum_i weights[i] * (1 - cos(z_i, t_i))`` with the fused loss (one call per distinct weight)."""
    total = embeddings.new_zeros(())
    for weight in torch.unique(weights).tolist():
        rows = (weights == weight).nonzero().flatten()
        if rows.numel() == weights.numel():
            rows = slice(None)
        count = weights.numel() if isinstance(rows, slice) else rows.numel()
        total = total + clip_cosine_loss(embeddings[rows], targets[rows], detach_norm=detach_norm) * (weight * count)
    return total


@dataclasses.dataclass(frozen=True)
class SGDSettings:
    """The optimizer of :func:`mine_styles`: ``steps`` SGD steps (``lr``, ``momentum``, ``weight_decay``);
    ``clamp_std`` clamps the trainable std at 0 before each step (PODA)."""

    steps: int
    lr: float
    momentum: float
    weight_decay: float
    clamp_std: bool


@dataclasses.dataclass(frozen=True)
class SynthesisSettings:
    """How :func:`mine_styles` builds and scores the synthesized features: ``activation`` ("relu" or None),
    ``prefix`` tokens of a ViT token grid (0: plain features), Gaussian ``feature_noise`` keyed by ``seed`` (a run
    seed; each item's draws by its global index), the loss' ``detach_norm``, the tail's ``autocast_dtype`` and
    ``channels_last`` layout."""

    activation: str | None
    prefix: int
    feature_noise: float
    seed: int | None
    detach_norm: bool
    autocast_dtype: torch.dtype | None
    channels_last: bool


@dataclasses.dataclass(frozen=True)
class ItemBatch:
    """Items optimized together: ``content (n, C, H, W)``, unit ``targets (n, D)``, loss ``weights (n,)``, and
    ``first_item``, the global index of ``content[0]`` (keys its feature noise)."""

    content: Tensor
    targets: Tensor
    weights: Tensor
    first_item: int


def _optimize_item_batch(
    tail: nn.Module, items: ItemBatch, sgd: SGDSettings, synthesis: SynthesisSettings,
    after_step: Callable[[], None] | None,
) -> MiningResult:  # fmt: skip
    """``sgd.steps`` SGD steps on the styles of one batch of items (optimized together); their raw final styles.
    With ``synthesis.prefix``, content is a token grid and the synthesized grid gets the content's prefix tokens
    back (a ViT tail)."""
    content, targets, weights = items.content, items.targets, items.weights
    prefix, activation, feature_noise = synthesis.prefix, synthesis.activation, synthesis.feature_noise
    channels_last, autocast_dtype = synthesis.channels_last, synthesis.autocast_dtype
    mean0, std0 = patch_mean_std(content, 1)
    prefix_tokens = grid_as_tokens(content)[:, :prefix].float() if prefix else None
    style_mean = mean0.flatten(1).float().clone().requires_grad_()
    style_std = std0.flatten(1).float().clone().requires_grad_()
    optimizer = torch.optim.SGD(
        [style_mean, style_std], lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay
    )
    if feature_noise:
        normalized = ((content - mean0) / std0).float()  # xn, computed once
        item_seeds = [derived_seed(synthesis.seed, items.first_item + i) for i in range(content.shape[0])]
    device_type = content.device.type
    for step in range(sgd.steps):
        if sgd.clamp_std:
            with torch.no_grad():
                style_std.clamp_(min=0)
        if feature_noise and activation == "relu":  # a fresh draw per step and item, keyed by (item seed, step)
            features = torch.cat(
                [
                    noisy_style_features(
                        normalized[i : i + 1],
                        style_mean[i : i + 1],
                        style_std[i : i + 1],
                        feature_noise,
                        seed=item_seeds[i],
                        offset=step,
                    )  # fmt: skip
                    for i in range(content.shape[0])
                ]
            )
        elif feature_noise:  # identity: plain PyTorch, the same noise as noisy_style_features' reference draws
            noise = torch.stack([_feature_noise(normalized[i], item_seeds[i], step) for i in range(content.shape[0])])
            features = style_std[:, :, None, None] * normalized + style_mean[:, :, None, None] + feature_noise * noise
        else:
            features = local_style_mix(content, style_mean, style_std, grid=1, activation=activation)
        if prefix:
            features = grid_as_tokens(features, prefix_tokens)
        elif channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            embeddings = tail(features)
        loss = _weighted_loss(embeddings.float(), targets, weights, synthesis.detach_norm)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last_embeddings = embeddings.detach().float()
        if after_step is not None:
            after_step()
    if sgd.steps == 0:
        item_loss = torch.full((content.shape[0],), float("nan"), device=content.device)
    else:
        item_loss = 1 - F.cosine_similarity(last_embeddings, targets, dim=-1)
    return MiningResult(style_mean.detach(), style_std.detach(), item_loss)


@dataclasses.dataclass
class PatchSelection:
    """Patches chosen for FAMix's patch-wise mining: their features and dominant classes.

    ``content (M, C, ph, pw)``, ``class_ids (M,)`` (``ignore_index`` for mostly unlabelled patches, mined toward
    "photo"), ``image_index (M,)`` and ``patch_index (M,)`` (``p = i * gw + j``), in order of first occurrence.
    """

    content: Tensor
    class_ids: Tensor
    image_index: Tensor
    patch_index: Tensor


def first_patch_per_class(dominant: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FAMix's choice: for each distinct dominant class, its first patch in patch-major, then image order.

    Args:
        dominant: ``(B, gh, gw)`` dominant class of each patch (from ``patch_dominant_class``).
    Returns:
        ``(class_ids, image_index, patch_index)``, each ``(M,)`` int64, ordered by first occurrence.
    """
    if not isinstance(dominant, Tensor) or dominant.dim() != 3 or dominant.is_floating_point():
        raise ValueError("dominant must be an integer (B, gh, gw) tensor")
    batch = dominant.shape[0]
    order = dominant.permute(1, 2, 0).reshape(-1)  # position p * B + b, as FAMix's unfold lists the patches
    classes, inverse = torch.unique(order, return_inverse=True)
    positions = torch.arange(order.numel(), device=order.device)
    first = torch.full((classes.numel(),), order.numel(), device=order.device, dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, positions, "amin").sort().values
    return order[first].long(), first % batch, first // batch


def select_patches(
    features: Tensor, labels: Tensor, *, grid: int | tuple[int, int] = 3, num_classes: int = 19,
    ignore_index: int = 255, prefix: int = 0,
) -> PatchSelection:  # fmt: skip
    """The patches FAMix mines in one batch: the first patch of each distinct dominant class.

    Args:
        features: ``(B, C, H, W)`` layer1 features of the batch's images.
        labels: ``(B, Hl, Wl)`` train ids at image resolution (``ignore_index`` votes like a class, as in FAMix).
        grid: patch grid; all patches of ``features`` must have one size (``H``, ``W`` divisible by the grid).
        prefix: for ViT features (a token grid from :class:`ClipViTImageHead`): the prefix tokens each patch keeps
            (1: its image's class token), see :func:`crop_patches`.
    Returns:
        :class:`PatchSelection`; give ``content`` to :func:`mine_styles` with the text targets of ``class_ids``
        (``famix_descriptions`` + ``encode_prompts``).
    """
    check_features(features, "features")
    if features.shape[0] == 0:
        raise ValueError("features must hold at least one image (B >= 1), got B = 0")
    if not isinstance(labels, Tensor) or labels.dim() != 3 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be (B, Hl, Wl) with B = {features.shape[0]}")
    gh, gw = normalize_grid(grid, features.shape[2], features.shape[3])
    check_equal_patches(features, (gh, gw), f"grid {gh}x{gw}")
    dominant = patch_dominant_class(labels, (gh, gw), num_classes=num_classes, ignore_index=ignore_index)
    class_ids, image_index, patch_index = first_patch_per_class(dominant)
    content = crop_patches(features, (gh, gw), image_index.tolist(), patch_index.tolist(), prefix=prefix)
    return PatchSelection(content, class_ids, image_index, patch_index)


def check_equal_patches(features: Tensor, grid: tuple[int, int], what: str) -> None:
    """``ValueError`` unless the grid divides ``H`` and ``W``: patches mined or styled together need one size."""
    (gh, gw), (H, W) = grid, features.shape[-2:]
    if gh < 1 or gw < 1 or H % gh or W % gw:
        raise ValueError(
            f"{what} must divide the feature size {H}x{W} (patches mined or styled together need one size); "
            "use a crop size whose feature map divides by the grid"
        )


def crop_patches(features: Tensor, grid: tuple[int, int], image_index, patch_index, *, prefix: int = 0) -> Tensor:
    """``(M, C, H/gh, W/gw)``: patch ``patch_index[m]`` (row-major, ``i * gw + j``) of image ``image_index[m]``.
    The grid must divide ``H`` and ``W`` (:func:`check_equal_patches`).

    ``prefix > 0``: ``features`` is a token grid holding ``prefix`` prefix tokens per image (a ViT head's output);
    each patch is returned as a token grid too, with its image's prefix tokens (the class token) before its patch
    tokens, so a ViT tail sees the class token and the patch's tokens."""
    (gh, gw), (H, W) = grid, features.shape[-2:]
    ph, pw = H // gh, W // gw
    patches = [
        features[b, :, (p // gw) * ph : (p // gw + 1) * ph, (p % gw) * pw : (p % gw + 1) * pw]
        for b, p in zip(image_index, patch_index)
    ]
    if not prefix:
        return torch.stack(patches)
    check_int(prefix, "prefix", 0)
    if grid_prefix(features) != prefix:
        raise ValueError(
            f"features must be a token grid holding {prefix} prefix token(s) per image (a ViT head's output)"
        )
    heads = grid_as_tokens(features)[:, :prefix]
    tokens = torch.stack(
        [torch.cat([heads[b], patch.flatten(1).t()]) for b, patch in zip(image_index, patches)]
    ) if patches else features.new_zeros(0, prefix + ph * pw, features.shape[1])  # fmt: skip
    return tokens_as_grid(tokens, ph, pw, prefix)
