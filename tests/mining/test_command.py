"""`styleda-fast mine` end to end on a tiny generated data set: global and patch mode, resume, 2-process torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def write_dataset(root, count: int, size: tuple[int, int], seed: int, label_of, stem: str = "c{i}"):
    """``count`` random RGB images of ``size = (H, W)`` in ``root/images`` and their train-id maps, made by
    ``label_of(rng)``, in ``root/labels`` (Cityscapes file names); returns the two folders."""
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        name = stem.format(i=i)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{name}_leftImg8bit.png")
        Image.fromarray(label_of(rng)).save(labels / f"{name}_gtFine_labelTrainIds.png")
    return images, labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """5 RGB images of 64x64 and their train-id label maps (blocks of classes, some ignore pixels)."""

    def label_of(rng):
        label = np.full((64, 64), 255, dtype=np.uint8)
        label[:40, :] = rng.choice([0, 2, 8, 10])
        label[40:, :30] = rng.choice([1, 11, 13])
        return label

    return write_dataset(tmp_path_factory.mktemp("data"), 5, (64, 64), 0, label_of, stem="city_{i:02d}")


def mine(*args, nproc: int = 1, check: bool = True, env: dict | None = None, timeout: float = 600,
         common: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the real command in a subprocess (``common``: small, offline defaults that later flags override)."""
    common = ["--clip-weights", "none", "--steps", "1", "--batch-size", "2", "--seed", "3", "--templates", "2"] * common
    if nproc == 1:
        command = [sys.executable, "-m", "styleda_fast.cli", "mine", *common, *args]  # later flags win
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={port}", "-m", "styleda_fast.cli", "mine", *common, *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_global_mode(dataset, tmp_path):
    images, _ = dataset
    out = tmp_path / "bank.safetensors"
    mine("--images", str(images), "--prompt", "driving at night", "--out", str(out))
    bank = StyleBank.load(out)
    assert len(bank) == 5 and bank.channels == 256
    assert not (tmp_path / "bank.safetensors.parts").exists()


def test_patch_mode(dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
         "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert 3 <= len(bank) <= 5 * 4


def test_resume_gives_the_uninterrupted_bank(dataset, tmp_path):
    images, _ = dataset
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    mine("--images", str(images), "--prompt", "snow", "--out", str(whole))
    mine("--images", str(images), "--prompt", "snow", "--out", str(resumed), "--max-chunks", "1")
    assert not resumed.exists() and len(list((tmp_path / "resumed.safetensors.parts").glob("chunk-*"))) == 1
    mine("--images", str(images), "--prompt", "snow", "--out", str(resumed))
    a, b = StyleBank.load(whole), StyleBank.load(resumed)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def test_torchrun_two_processes_write_the_single_process_bank(dataset, tmp_path):
    images, _ = dataset
    single, sharded = tmp_path / "single.safetensors", tmp_path / "sharded.safetensors"
    mine("--images", str(images), "--prompt", "fog", "--out", str(single))
    mine("--images", str(images), "--prompt", "fog", "--out", str(sharded), nproc=2)
    a, b = StyleBank.load(single), StyleBank.load(sharded)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def test_clear_errors(dataset, tmp_path):
    images, labels = dataset
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png at all")
    done = mine("--images", str(broken), "--prompt", "x", "--out", str(tmp_path / "b.safetensors"), check=False)
    assert done.returncode == 2 and "bad.png" in done.stderr
    done = mine("--images", str(images), "--labels", str(tmp_path), "--class-styles", "--mode", "patch",
                "--out", str(tmp_path / "c.safetensors"), check=False)  # fmt: skip
    assert done.returncode == 2 and "no label PNG" in done.stderr
    weights = tmp_path / "weights.pt"
    torch.save({"not.a.key": torch.zeros(3)}, weights)
    done = mine("--images", str(images), "--prompt", "x", "--out", str(tmp_path / "d.safetensors"),
                "--clip-weights", str(weights), check=False)  # fmt: skip
    assert done.returncode == 2 and "does not fit" in done.stderr


def test_killed_run_resumes_without_losing_finished_chunks(dataset, tmp_path):
    """A real interruption: SIGKILL as soon as the first chunk is on disk, then the same command again."""
    import signal
    import time

    images, _ = dataset
    whole, killed = tmp_path / "whole.safetensors", tmp_path / "killed.safetensors"
    mine("--images", str(images), "--prompt", "rain", "--out", str(whole), "--steps", "2")
    command = [sys.executable, "-m", "styleda_fast.cli", "mine", "--clip-weights", "none", "--batch-size", "2",
               "--seed", "3", "--templates", "2", "--steps", "2", "--images", str(images), "--prompt", "rain",
               "--out", str(killed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.safetensors.parts"
    deadline = time.monotonic() + 300
    while not list(parts.glob("chunk-*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not killed.exists():  # the usual case: killed with chunks left
        assert 1 <= len(list(parts.glob("chunk-*.safetensors"))) < 3
    mine("--images", str(images), "--prompt", "rain", "--out", str(killed), "--steps", "2")
    a, b = StyleBank.load(whole), StyleBank.load(killed)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
