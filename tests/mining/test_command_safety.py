"""Issue 22's reproductions for mining, each through the real command or API: a symlinked OUT.lock (item 4),
``--pool-to 0`` on images whose layer1 is not 56x56 (item 11), Ctrl-C in the first moments (item 13), a file
name that is not UTF-8 (item 15), and the leftover exception types of ``select_patches`` and ``mine_styles``
(item 16)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from mine_helpers import COMMON, ROOT, mine  # noqa: E402
from PIL import Image  # noqa: E402
from test_command_checks import assert_nothing_written, assert_one_line_error  # noqa: E402

from styleda_fast.bank.style_bank import StyleBank  # noqa: E402
from styleda_fast.mining import clip_image_tail, mine_styles, select_patches  # noqa: E402


def test_a_symlinked_or_special_lock_path_is_refused_and_left_alone(dataset, tmp_path):
    """Item 4: `ln -s precious.txt OUT.lock` made `mine` replace precious.txt with "PID host"; a dangling link
    created its target. Now: one line naming the lock, exit status 2, the link and its target untouched."""
    out, lock = tmp_path / "bank.safetensors", tmp_path / "bank.safetensors.lock"
    args = ["--images", str(dataset[0]), "--prompt", "x", "--out", str(out)]
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    lock.symlink_to(precious)
    assert_one_line_error(mine(*args, check=False), str(lock), "a symbolic link, not a regular file")
    assert precious.read_text() == "keep me\n" and lock.is_symlink()
    lock.unlink()
    lock.symlink_to(tmp_path / "created-by-the-lock")
    assert_one_line_error(mine(*args, check=False), str(lock), "a symbolic link")
    assert not (tmp_path / "created-by-the-lock").exists() and lock.is_symlink()
    lock.unlink()
    os.mkfifo(lock)  # opening a FIFO for reading could block: refused without waiting
    assert_one_line_error(mine(*args, check=False), str(lock), "a FIFO")
    lock.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"], "nothing else written"


def test_pool_to_0_needs_the_attention_pool_grid(dataset, tmp_path):
    """Item 11: `--pool-to 0` on 64x64 images (16x16 layer1, not 56x56) crashed in the attention pool after the
    model loaded. Now it is checked with the image sizes, before anything is loaded or written; the engine gives
    a ValueError naming pool_to for such features."""
    out = tmp_path / "bank.safetensors"
    done = mine("--images", str(dataset[0]), "--prompt", "x", "--pool-to", "0", "--out", str(out), check=False)
    assert_one_line_error(done, "--pool-to 0", "56x56", "16x16", "--pool-to 56")
    done = mine("--images", str(dataset[0]), "--prompt", "x", "--pool-to", "32", "--out", str(out), check=False)
    assert_one_line_error(done, "--pool-to 32", "7x7")
    assert_nothing_written(tmp_path, out)


def test_pool_to_0_runs_on_224_px_images_and_the_tail_names_pool_to(rn50, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / "a.png")
    out = tmp_path / "bank.safetensors"
    mine("--images", str(folder), "--prompt", "x", "--pool-to", "0", "--out", str(out))
    assert len(StyleBank.load(out)) == 1
    tail = clip_image_tail(rn50.visual, pool_to=None)
    with pytest.raises(ValueError, match="pool_to=56"):
        tail(torch.rand(1, 256, 16, 16))


def _caught_signals(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_in_the_first_moments_is_one_line(dataset, tmp_path, signum):
    """Item 13: Ctrl-C in the first ~0.3 s of `mine` printed a KeyboardInterrupt traceback. The command installs
    its handlers first thing (SIGTERM is caught from then on, which is what this test waits for), so a signal
    right after gives one line and exit status 128 + signal, nothing written."""
    out = tmp_path / "bank.safetensors"
    command = [sys.executable, "-m", "styleda_fast.cli", "mine", *COMMON, "--images", str(dataset[0]), "--prompt",
               "x", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _caught_signals(run.pid) & (1 << (signal.SIGTERM - 1)):
        assert run.poll() is None and time.monotonic() < deadline, "the command never caught SIGTERM"
        time.sleep(0.002)
    run.send_signal(signum)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 128 + signum, stdout + stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("styleda-fast mine: interrupted", "interrupted: 0")), lines
    assert_nothing_written(tmp_path, out)


def test_a_file_name_that_is_not_utf8_is_mined_or_named(dataset, tmp_path):
    """Item 15: an image named b'\\xff.png' crashed `mine` (UnicodeEncodeError). Now it is mined like any file;
    an unreadable one is named in one line with its byte escaped."""
    folder = tmp_path / "images"
    folder.mkdir()
    source = sorted(dataset[0].iterdir())
    odd = os.fsdecode(b"\xff.png")
    (folder / odd).write_bytes(source[0].read_bytes())
    (folder / "b.png").write_bytes(source[1].read_bytes())
    out = tmp_path / "bank.safetensors"
    mine("--images", str(folder), "--prompt", "x", "--out", str(out))
    assert len(StyleBank.load(out)) == 2
    (folder / os.fsdecode(b"\xfe.png")).write_bytes(b"not an image")
    done = mine("--images", str(folder), "--prompt", "x", "--out", str(tmp_path / "c.safetensors"), check=False,
                subprocess_run=True)  # fmt: skip
    assert_one_line_error(done, f"cannot read image {folder}{os.sep}\\xfe.png", "--skip-bad-images")


def test_leftover_exception_types(rn50):
    """Item 16: select_patches with B=0 raised RuntimeError, mine_styles(tail=<function>) AttributeError."""
    with pytest.raises(ValueError, match="B >= 1"):
        select_patches(torch.rand(0, 8, 6, 6), torch.zeros(0, 24, 24, dtype=torch.int64), grid=3)
    content = torch.rand(2, 256, 8, 8) + 0.1
    targets = torch.randn(2, 1024)
    with pytest.raises(TypeError, match="tail must be an nn.Module"):
        mine_styles(lambda features: features.mean(dim=(2, 3)), content, targets, steps=1)
    assert mine_styles(clip_image_tail(rn50.visual), content, targets, steps=1).mean.shape == (2, 256)
