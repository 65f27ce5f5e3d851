"""Style mining on open_clip VisionTransformers: the head/tail split against open_clip's own forward, and
``mine_styles`` on token grids against a plain-PyTorch transcription of the PIN loop on tokens.

Real open_clip models with random weights (no downloads): small ``VisionTransformer`` configurations for most
checks, and the ViT-B-16 architecture at 64x64 px (a 4x4 patch grid) for the real model.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from open_clip.transformer import VisionTransformer  # noqa: E402

from styleda_fast import grid_as_tokens, grid_prefix, tokens_as_grid  # noqa: E402
from styleda_fast.compat.public_code import pin_on_tokens  # noqa: E402
from styleda_fast.mining.engine import (  # noqa: E402
    ClipViTImageHead,
    ClipViTImageTail,
    clip_image_head,
    clip_image_tail,
    mine_styles,
    select_patches,
)

CONFIGS = {  # small VisionTransformers covering open_clip's pooling variants
    "tok": {},
    "avg": {"pool_type": "avg"},
    "ln-after-pool": {"final_ln_after_pool": True, "no_ln_pre": True},
    "attn-pool": {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2},
    "layer-scale": {"ls_init_value": 0.5},
}


def _small_vit(seed=0, image_size=32, **config) -> VisionTransformer:
    torch.manual_seed(seed)
    visual = VisionTransformer(
        image_size=image_size, patch_size=8, width=32, layers=3, heads=4, mlp_ratio=2.0, output_dim=16, **config
    )
    return visual.eval()


def _images(n, size, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64).to(dtype)


def _open_clip_tokens(visual, images, split_block):
    """Tokens after block ``split_block - 1`` by open_clip's own code (``_embeds``, then the blocks)."""
    x = visual._embeds(images)
    for block in visual.transformer.resblocks[:split_block]:
        x = block(x)
    return x


@pytest.mark.parametrize("config", CONFIGS)
def test_tail_of_head_equals_the_open_clip_forward(config):
    visual = _small_vit(**CONFIGS[config]).double()
    images = _images(3, 32, torch.float64)
    with torch.no_grad():
        expected = visual(images)
        for k in range(len(visual.transformer.resblocks) + 1):
            head, tail = clip_image_head(visual, split_block=k), clip_image_tail(visual, split_block=k)
            grid = head(images)
            assert grid.shape == (3, 32, 4, 4) and grid_prefix(grid) == 1
            torch.testing.assert_close(tail(grid), expected, rtol=0, atol=1e-10)
            tokens = _open_clip_tokens(visual, images, k)
            torch.testing.assert_close(grid, tokens_as_grid(tokens, 4, 4), rtol=0, atol=1e-12)
            torch.testing.assert_close(tail(tokens), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("split_block", [0, 4, 11, 12])
def test_vit_b16_tail_of_head_equals_the_open_clip_forward(split_block):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=64)
    visual = model.visual.double().eval()
    images = _images(2, 64, torch.float64)
    with torch.no_grad():
        grid = clip_image_head(visual, split_block=split_block)(images)
        embedding = clip_image_tail(visual, split_block=split_block)(grid)
        expected = visual(images)
    assert grid.shape == (2, 768, 4, 4) and grid.stride() == (17 * 768, 1, 4 * 768, 768)
    torch.testing.assert_close(embedding, expected, rtol=0, atol=1e-10)


def test_head_at_another_size_resizes_the_positional_embedding_as_open_clip_does():
    """Images of 48 px on a 32 px model: the same numbers as open_clip's model for 48 px loaded with the 32 px
    weights (``resize_pos_embed``, which open_clip runs when it loads weights for another size)."""
    visual = _small_vit().double()
    resized = _small_vit(image_size=48).double()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    open_clip.model.resize_pos_embed(state, types.SimpleNamespace(visual=resized))
    resized.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()})
    images = _images(2, 48, torch.float64)
    with torch.no_grad():
        for k in (0, 2):
            grid = clip_image_head(visual, split_block=k)(images)
            assert grid.shape == (2, 32, 6, 6)
            got = clip_image_tail(visual, split_block=k)(grid)
            torch.testing.assert_close(got, resized(images), rtol=0, atol=1e-10)


def test_split_block_is_checked():
    visual = _small_vit()
    with pytest.raises(TypeError, match="split_block"):
        clip_image_head(visual)
    with pytest.raises(TypeError, match="split_block"):
        clip_image_tail(visual)
    with pytest.raises(ValueError, match="split_block"):
        clip_image_tail(visual, split_block=4)
    with pytest.raises(TypeError, match="split_block"):
        clip_image_head(visual, split_block=1.0)
    resnet = open_clip.create_model("RN50", pretrained=None).visual
    with pytest.raises(TypeError, match="split_block"):
        clip_image_head(resnet, split_block=1)
    assert isinstance(clip_image_head(visual, split_block=0), ClipViTImageHead)
    assert isinstance(clip_image_tail(visual, split_block=3), ClipViTImageTail)


def test_tail_refuses_a_grid_without_the_class_token():
    visual = _small_vit()
    grid = clip_image_head(visual, split_block=1)(_images(2, 32))
    with pytest.raises(ValueError, match="class token"):
        clip_image_tail(visual, split_block=1)(grid.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="content"):
        mine_styles(clip_image_tail(visual, split_block=1), grid.contiguous(), torch.randn(2, 16), steps=1)


# ---------------------------------------------------------------- the PIN loop on tokens, in plain PyTorch


def _frozen(visual):
    for p in visual.parameters():
        p.requires_grad_(False)
    return visual


@pytest.mark.parametrize(("clamp_std", "activation"), [(True, "auto"), (False, None), (True, "relu")])
@pytest.mark.parametrize("config", ["tok", "avg"])
@pytest.mark.usefixtures("poison_fresh_memory")
def test_mining_on_tokens_equals_the_plain_pin_loop(clamp_std, activation, config):
    visual = _frozen(_small_vit(**CONFIGS[config]))
    split_block, steps, n = 1, 4, 5
    images = _images(n, 32)
    targets = F.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    with torch.no_grad():
        content = clip_image_head(visual, split_block=split_block)(images)
        tokens = _open_clip_tokens(visual, images, split_block)
    content_tokens = grid_as_tokens(content).clone()
    tail = clip_image_tail(visual, split_block=split_block)
    result = mine_styles(
        tail, content, targets, steps=steps, clamp_std=clamp_std, final_clamp=False, activation=activation,
        batch_size=2,  # three chunks: the result does not depend on how items are batched
    )  # fmt: skip
    mean, std = pin_on_tokens(visual, split_block, tokens, targets, steps, clamp_std=clamp_std,
                              relu=activation == "relu")  # fmt: skip
    torch.testing.assert_close(result.mean, mean, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(result.std, std, rtol=2e-4, atol=2e-4)
    assert torch.equal(grid_as_tokens(content), content_tokens), "mining wrote into the content tokens"


@pytest.mark.usefixtures("poison_fresh_memory")
def test_patch_wise_mining_on_tokens_keeps_each_patch_with_its_image_class_token():
    """FAMix's patch-wise PIN on tokens: ``select_patches(..., prefix=1)`` gives each chosen patch of the token
    grid its image's class token; mining it equals the plain loop on ``[class token, patch tokens]``."""
    visual = _frozen(_small_vit(image_size=48))
    split_block, n, steps = 2, 2, 3
    images = _images(n, 48, seed=3)
    labels = torch.randint(0, 4, (n, 48, 48), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        grid = clip_image_head(visual, split_block=split_block)(images)
        tokens = _open_clip_tokens(visual, images, split_block)
    selection = select_patches(grid, labels, grid=3, num_classes=4, prefix=1)
    m = len(selection.class_ids)
    assert selection.content.shape == (m, 32, 2, 2) and grid_prefix(selection.content) == 1
    patch_tokens = []
    for b, p in zip(selection.image_index.tolist(), selection.patch_index.tolist()):
        rows = [(p // 3) * 2 + r for r in range(2)]
        cols = [(p % 3) * 2 + c for c in range(2)]
        idx = [1 + r * 6 + c for r in rows for c in cols]
        patch_tokens.append(torch.cat([tokens[b, :1], tokens[b, idx]]))
    patch_tokens = torch.stack(patch_tokens)
    targets = F.normalize(torch.randn(m, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    tail = clip_image_tail(visual, split_block=split_block)
    result = mine_styles(tail, selection.content, targets, steps=steps, clamp_std=False, final_clamp=False)
    mean, std = pin_on_tokens(visual, split_block, patch_tokens, targets, steps, clamp_std=False, relu=False)
    torch.testing.assert_close(result.mean, mean, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(result.std, std, rtol=2e-4, atol=2e-4)


def test_feature_noise_on_tokens_is_keyed_by_item_and_step():
    """With noise and the identity activation, an item's styles do not depend on the batching, and the same seed
    gives the same styles."""
    visual = _frozen(_small_vit())
    images = _images(3, 32, seed=6)
    targets = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(7)), dim=-1)
    with torch.no_grad():
        content = clip_image_head(visual, split_block=1)(images)
    tail = clip_image_tail(visual, split_block=1)
    runs = [
        mine_styles(tail, content, targets, steps=2, feature_noise=0.3, seed=11, batch_size=size) for size in (1, 3)
    ]
    torch.testing.assert_close(runs[0].mean, runs[1].mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0].std, runs[1].std, rtol=1e-5, atol=1e-5)
    quiet = mine_styles(tail, content, targets, steps=2, seed=11)
    assert not torch.allclose(quiet.mean, runs[0].mean)
