"""mine_styles against an independent transcription of the public PIN loop, on random-weight open_clip ModifiedResNets
(RN50, and a small one where the property does not depend on the model's size)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from styleda_fast.compat import public_code as public  # noqa: E402
from styleda_fast.devtools.testing import assert_close  # noqa: E402
from styleda_fast.mining.engine import clip_image_head, clip_image_tail, mine_styles  # noqa: E402

SMALL = {"channels": 64, "dim": 64}  # small_resnet's layer1 channels and embedding size; its layer1 is 16x16
SMALL_POOL = 16


def _items(n, size=20, seed=0, channels=256, dim=1024):
    """Content without exact zeros: on ReLU outputs (real layer1 features), the first step's pre-activation at a
    zero pixel is 0 up to rounding, so which of those pixels pass the ReLU is decided by rounding noise, in the
    public code as in any reimplementation; parity is only meaningful away from such ties."""
    gen = torch.Generator().manual_seed(seed)
    content = torch.randn(n, channels, size, size, generator=gen) * 0.5 + 0.3
    targets = F.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    return content, targets


def _assert_rel(actual, expected, rtol, what):
    assert_close(actual, expected, rtol, what)


@pytest.mark.parametrize("clamp_std", [True, False], ids=["poda_clamp", "famix_no_clamp"])
@pytest.mark.parametrize("detach_norm", [True, False])
def test_matches_public_pin_loop(small_resnet, clamp_std, detach_norm):
    content, targets = _items(3, **SMALL)
    expected_mean, expected_std = public.pin_mining_loop(
        small_resnet, content, targets, 3, clamp_std, detach_norm, pool_to=SMALL_POOL
    )
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    result = mine_styles(tail, content, targets, steps=3, clamp_std=clamp_std, detach_norm=detach_norm)
    assert result.mean.shape == (3, 64) and result.loss.shape == (3,)
    assert not torch.equal(result.mean, content.mean(dim=(2, 3))), "the styles must move"
    _assert_rel(result.mean, expected_mean, 1e-4, "mean")
    _assert_rel(result.std, expected_std, 1e-4, "std")


def test_matches_public_pin_loop_on_rn50(rn50):
    content, targets = _items(2)
    expected_mean, expected_std = public.pin_mining_loop(rn50.visual, content, targets, 2, True, True)
    result = mine_styles(clip_image_tail(rn50.visual), content, targets, steps=2)
    assert result.mean.shape == (2, 256)
    _assert_rel(result.mean, expected_mean, 1e-4, "mean")
    _assert_rel(result.std, expected_std, 1e-4, "std")


def test_many_public_batches_mined_together(small_resnet):
    """Two public batches (sizes 2 and 3) mined in one call with per-item reference batch sizes."""
    content, targets = _items(5, seed=1, **SMALL)
    first = public.pin_mining_loop(small_resnet, content[:2], targets[:2], 2, True, pool_to=SMALL_POOL)
    second = public.pin_mining_loop(small_resnet, content[2:], targets[2:], 2, True, pool_to=SMALL_POOL)
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    sizes = torch.tensor([2, 2, 3, 3, 3])
    result = mine_styles(tail, content, targets, steps=2, reference_batch_size=sizes)
    _assert_rel(result.mean, torch.cat([first[0], second[0]]), 1e-4, "mean")
    _assert_rel(result.std, torch.cat([first[1], second[1]]), 1e-4, "std")
    chunked = mine_styles(tail, content, targets, steps=2, reference_batch_size=sizes, batch_size=2)
    _assert_rel(chunked.mean, result.mean, 1e-5, "chunked mean")


def test_feature_noise_is_seeded_per_item(small_resnet):
    content, targets = _items(3, seed=2, **SMALL)
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    kwargs = dict(steps=2, feature_noise=0.1, reference_batch_size=3)
    a = mine_styles(tail, content, targets, seed=5, **kwargs)
    b = mine_styles(tail, content, targets, seed=5, batch_size=1, **kwargs)
    c = mine_styles(tail, content, targets, seed=6, **kwargs)
    _assert_rel(b.mean, a.mean, 1e-5, "same seed, other chunking")
    assert not torch.allclose(a.mean, c.mean), "another seed draws other noise"


def test_head_and_tail_compose_to_the_image_encoder(rn50):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        full = rn50.visual(images)
        split = clip_image_tail(rn50.visual)(clip_image_head(rn50.visual)(images))
    _assert_rel(split, full, 1e-5, "embedding")


def test_bad_arguments():
    with pytest.raises(TypeError, match="visual"):
        clip_image_tail(torch.nn.Linear(2, 2))
    content, targets = _items(2, size=8)
    tail = torch.nn.Identity()
    with pytest.raises(ValueError, match="targets"):
        mine_styles(tail, content, targets[:1])
    with pytest.raises(ValueError, match="reference_batch_size"):
        mine_styles(tail, content, targets, reference_batch_size=0)
    with pytest.raises(ValueError, match="content"):
        mine_styles(tail, content[0], targets)


@pytest.mark.parametrize("fold_batchnorm", [False, True])
def test_tail_equals_the_encoder_layers(rn50, fold_batchnorm):
    """Folded BatchNorms (with non-trivial running statistics), matrix pooling and the first-token attention
    pool give the encoder's own embedding."""
    visual = copy.deepcopy(rn50.visual)
    gen = torch.Generator().manual_seed(3)
    for m in visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    features = torch.relu(torch.randn(2, 256, 61, 64, generator=gen))
    with torch.no_grad():
        expected = visual.attnpool(visual.layer4(visual.layer3(visual.layer2(F.adaptive_avg_pool2d(features, 56)))))
        actual = clip_image_tail(visual, fold_batchnorm=fold_batchnorm)(features)
    _assert_rel(actual, expected, 1e-5, "embedding")


def test_default_weights_do_not_depend_on_chunking(small_resnet):
    """Without reference_batch_size the N items given are one public batch, however they are chunked."""
    content, targets = _items(4, seed=4, **SMALL)
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    whole = mine_styles(tail, content, targets, steps=2, batch_size=4)
    chunked = mine_styles(tail, content, targets, steps=2, batch_size=3)
    expected = public.pin_mining_loop(small_resnet, content, targets, 2, True, pool_to=SMALL_POOL)
    _assert_rel(chunked.mean, whole.mean, 1e-5, "chunked mean")
    _assert_rel(whole.mean, expected[0], 1e-4, "mean vs the public loop")


def test_argument_checks_name_the_argument(rn50):
    """Wrong types raise TypeError (``steps=True`` is not a step count), wrong values ValueError."""
    content, targets = _items(2, size=8)
    tail = torch.nn.Identity()
    for kwargs, error, name in [
        (dict(steps=True), TypeError, "steps"),
        (dict(steps=2.0), TypeError, "steps"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(batch_size=False), TypeError, "batch_size"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(reference_batch_size=True), TypeError, "reference_batch_size"),
        (dict(item_offset=-1), ValueError, "item_offset"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr=float("inf")), ValueError, "lr"),
        (dict(lr="1"), TypeError, "lr"),
        (dict(momentum=-0.5), ValueError, "momentum"),
        (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
        (dict(feature_noise=float("nan")), ValueError, "feature_noise"),
        (dict(feature_noise=-0.1), ValueError, "feature_noise"),
    ]:
        with pytest.raises(error, match=name):
            mine_styles(tail, content, targets, **kwargs)
    with pytest.raises(TypeError, match="pool_to"):
        clip_image_tail(rn50.visual, pool_to=True)
    with pytest.raises(ValueError, match="pool_to"):
        clip_image_tail(rn50.visual, pool_to=0)


def test_mined_std_is_clamped_at_the_end_unless_asked(small_resnet):
    """Large steps push some std below 0, also under PODA's clamp (it clamps before each step, so the last step
    can leave a negative std). By default the returned std is clamped to STD_FLOOR, and nothing else changes."""
    from styleda_fast.mining.engine import STD_FLOOR

    content, targets = _items(2, size=8, seed=5, **SMALL)
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    for clamp_std in (True, False):  # PODA, FAMix
        kwargs = dict(steps=1, lr=1000.0, clamp_std=clamp_std)
        raw = mine_styles(tail, content, targets, final_clamp=False, **kwargs)
        assert (raw.std < 0).any(), "the test needs styles whose std went negative"
        clamped = mine_styles(tail, content, targets, **kwargs)
        assert (clamped.std >= STD_FLOOR).all()
        assert torch.equal(clamped.std, raw.std.clamp_min(STD_FLOOR))
        assert torch.equal(clamped.mean, raw.mean)


def test_step_progress_counts_every_step(small_resnet):
    """One call per SGD step of each batch of ``batch_size`` items: 3 items in batches of 2, one step each."""
    content, targets = _items(3, size=8, seed=6, **SMALL)
    calls = []
    tail = clip_image_tail(small_resnet, pool_to=SMALL_POOL)
    mine_styles(tail, content, targets, steps=1, batch_size=2, step_progress=lambda *a: calls.append(a))
    assert calls == [(1, 2), (2, 2)]
