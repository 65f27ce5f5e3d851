"""What the mining tests share: the real command run in this process or in subprocesses, and generated data."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--clip-weights", "none", "--steps", "1", "--batch-size", "2", "--seed", "3", "--templates", "2",
          "--threads", "1"]  # fmt: skip
"""Small, offline defaults of every run (later flags win). One thread per process, as under torchrun, so that a
run in this process, in a subprocess and under torchrun write bit-equal banks."""
REFERENCE = ["--prompt", "fog", "--steps", "2"]
"""The options of the session's global reference bank (``reference_bank``)."""
ZERO_SHOT = ["--mode", "patch", "--prompt", "driving at night", "--grid", "2", "--text-noise", "0.05",
             "--text-noise-draws", "2", "--feature-noise", "0.1"]  # fmt: skip
"""The options of the session's zero-shot patch bank with noisy text targets (``zero_shot_bank``)."""


def write_dataset(root, count: int, size: tuple[int, int], seed: int, label_of, stem: str = "c{i}"):
    """``count`` random RGB images of ``size = (H, W)`` in ``root/images`` and their train-id maps, made by
    ``label_of(rng)``, in ``root/labels`` (Cityscapes file names); returns the two folders."""
    from PIL import Image

    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        name = stem.format(i=i)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{name}_leftImg8bit.png")
        Image.fromarray(label_of(rng)).save(labels / f"{name}_gtFine_labelTrainIds.png")
    return images, labels


def mine(*args, nproc: int = 1, check: bool = True, env: dict | None = None, timeout: float = 600,
         common: bool = True, subprocess_run: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """Run the real command (``common``: the small, offline defaults that later flags override).

    By default in this process, through ``styleda_fast.cli.main`` with stdout and stderr captured (the process
    start and imports cost more than the mining). In a subprocess when ``subprocess_run``, when ``env`` is given
    (variables the command reads at import) and for ``nproc > 1`` (torchrun, real torch.distributed)."""
    common = COMMON * common
    if nproc == 1 and env is None and not subprocess_run:
        from styleda_fast import cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["mine", *common, *args])
            except SystemExit as exc:  # argparse's own errors and --help
                code = exc.code if isinstance(exc.code, int) else 2
        done = subprocess.CompletedProcess(["mine", *common, *args], code, out.getvalue(), err.getvalue())
    else:
        if nproc == 1:
            command = [sys.executable, "-m", "styleda_fast.cli", "mine", *common, *args]
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


def same_bank(a, b) -> bool:
    """Bit-equal styles and classes."""
    return torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std) and torch.equal(a.class_ids, b.class_ids)
