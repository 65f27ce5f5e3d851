"""`styleda-fast mine` end to end on a tiny generated data set: global and patch mode, resume, 2-process torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import COMMON, REFERENCE, ROOT, mine, same_bank  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402


def test_global_mode(reference_bank):
    out, done = reference_bank
    bank = StyleBank.load(out)
    assert len(bank) == 5 and bank.channels == 256
    assert not out.with_name(out.name + ".parts").exists() and not out.with_name(out.name + ".lock").exists()
    assert "mining 5 images in 3 chunks of 2 on 1 process(es)" in done.stdout


def test_patch_mode(dataset, tmp_path):
    images, labels = dataset
    out = tmp_path / "bank.safetensors"
    mine("--images", str(images), "--labels", str(labels), "--class-styles", "--mode", "patch", "--grid", "2",
         "--out", str(out))  # fmt: skip
    bank = StyleBank.load(out)
    assert 3 <= len(bank) <= 5 * 4


def test_resume_gives_the_uninterrupted_bank(dataset, reference_bank, tmp_path):
    images, _ = dataset
    resumed = tmp_path / "resumed.safetensors"
    mine("--images", str(images), *REFERENCE, "--out", str(resumed), "--max-chunks", "1")
    assert not resumed.exists() and len(list((tmp_path / "resumed.safetensors.parts").glob("chunk-*"))) == 1
    done = mine("--images", str(images), *REFERENCE, "--out", str(resumed))
    assert "1 chunks done before" in done.stdout
    assert same_bank(StyleBank.load(reference_bank[0]), StyleBank.load(resumed))


@pytest.mark.slow
def test_torchrun_two_processes_write_the_single_process_bank(dataset, reference_bank, tmp_path):
    """Bit-equal to the run in one process with the same thread count (--threads 1); the header says how many
    chunks this process mines, and the progress numbers chunks among all chunks of the run."""
    images, _ = dataset
    sharded = tmp_path / "sharded.safetensors"
    done = mine("--images", str(images), *REFERENCE, "--out", str(sharded), nproc=2)
    assert same_bank(StyleBank.load(reference_bank[0]), StyleBank.load(sharded))
    assert "in 3 chunks of 2 on 2 process(es)" in done.stdout and "2 of them here (rank 0)" in done.stdout
    assert "mining chunk 1/3 done" in done.stderr and "mining chunk 3/3 done" in done.stderr, done.stderr
    assert "chunk 2/3" not in done.stderr, "rank 1 mines chunk 2; only rank 0 prints"


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


@pytest.mark.slow
def test_killed_run_resumes_without_losing_finished_chunks(dataset, reference_bank, tmp_path):
    """A real interruption: SIGKILL as soon as the first chunk is on disk, then the same command again."""
    images, _ = dataset
    killed = tmp_path / "killed.safetensors"
    command = [sys.executable, "-m", "styleda_fast.cli", "mine", *COMMON, "--images", str(images), *REFERENCE,
               "--out", str(killed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.safetensors.parts"
    deadline = time.monotonic() + 600
    while not list(parts.glob("chunk-*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not killed.exists():  # the usual case: killed with chunks left
        assert 1 <= len(list(parts.glob("chunk-*.safetensors"))) < 3
    mine("--images", str(images), *REFERENCE, "--out", str(killed))
    assert same_bank(StyleBank.load(reference_bank[0]), StyleBank.load(killed))
