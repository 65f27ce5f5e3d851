"""Shared fixtures of the mining tests: one small generated data set, one random-weight RN50, and the banks that
several tests compare against, each mined once per session through the real command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mine_helpers import REFERENCE, ZERO_SHOT, mine, write_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """5 RGB images of 64x64 and their train-id label maps (blocks of classes, some ignore pixels)."""
    pytest.importorskip("PIL")

    def label_of(rng):
        label = np.full((64, 64), 255, dtype=np.uint8)
        label[:40, :] = rng.choice([0, 2, 8, 10])
        label[40:, :30] = rng.choice([1, 11, 13])
        return label

    return write_dataset(tmp_path_factory.mktemp("data"), 5, (64, 64), 0, label_of, stem="city_{i:02d}")


@pytest.fixture(scope="session")
def reference_bank(dataset, tmp_path_factory):
    """``(path, printed output)`` of the global bank of ``REFERENCE`` on ``dataset``, mined in one process."""
    pytest.importorskip("open_clip")
    out = tmp_path_factory.mktemp("reference") / "bank.safetensors"
    done = mine("--images", str(dataset[0]), *REFERENCE, "--out", str(out))
    return out, done


@pytest.fixture(scope="session")
def zero_shot_bank(dataset, tmp_path_factory):
    """``(path, printed output)`` of the zero-shot patch bank of ``ZERO_SHOT`` on ``dataset``, in one process."""
    pytest.importorskip("open_clip")
    out = tmp_path_factory.mktemp("zero-shot") / "bank.safetensors"
    done = mine("--images", str(dataset[0]), "--labels", str(dataset[1]), *ZERO_SHOT, "--out", str(out))
    return out, done


@pytest.fixture(scope="session")
def rn50():
    """open_clip's RN50 with random weights (seed 0), eval mode."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.create_model("RN50", pretrained=None).eval()


@pytest.fixture(scope="session")
def small_resnet():
    """A small open_clip ModifiedResNet (random weights, seed 0, eval mode): 64 layer1 channels at 64 px (layer1
    16x16, attention pool 2x2, embedding 64). The PIN parity properties do not depend on the model's size, and
    it mines about 100 times faster than RN50."""
    pytest.importorskip("open_clip")
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return ModifiedResNet(layers=[1, 1, 1, 1], output_dim=64, heads=2, image_size=64, width=16).eval()
