"""The whole-job training steps (``styleda_fast.train.poda_train_step`` / ``famix_train_step``, whose command lines
are ``examples/``) on tiny sizes, with a real random-weight open_clip RN50: the memory options that must not change
the numbers give the same loss, gradients and BatchNorm statistics as the plain step (bit for bit, float32);
bfloat16 autocast stays within a tolerance; the memory counters count what they claim."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")

from styleda_fast.memory import LiveBytes, SavedBytes, state_bytes  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CROP, BATCH = 48, 2  # crop/4 = 12: 3x3 patches of 4x4; output stride 16: a 3x3 layer4 map


@pytest.fixture(scope="module")
def famix():
    from styleda_fast.train import famix_train_step

    return famix_train_step


@pytest.fixture(scope="module")
def poda():
    from styleda_fast.train import poda_train_step

    return poda_train_step


@pytest.fixture(scope="module")
def visual(famix):
    return famix.dc.load_visual("none", seed=0)


def _famix_job(famix, visual, *options):
    args = famix.parse_args(["--crop", str(CROP), "--batch", str(BATCH), "--device", "cpu", *options])
    return famix.build(args, visual=copy.deepcopy(visual))


@pytest.fixture(scope="module")
def famix_job(famix, visual):
    """One FAMix job (built once: the tests switch its options) and its initial state."""
    job = _famix_job(famix, visual)
    return job, copy.deepcopy(job.model.state_dict())


def _switch(famix, job, initial, in_place=False, checkpoint=False, bf16=False):
    """Reset the model to its initial state and set the options: the augmentation layer (StyleBankAugment or the
    in-place one, re-seeded), layer4 checkpointing, bf16 autocast; torch's generator re-seeded."""
    from styleda_fast.nn import StyleBankAugment, insert, remove

    job.model.load_state_dict(initial)
    torch.manual_seed(0)  # the head's dropout draws from torch's generator
    remove(job.model)
    bank = job.aug.bank
    job.aug = (
        famix.dc.InPlaceBankAugment(bank, "famix", seed=0) if in_place else StyleBankAugment.famix(bank, generator=0)
    )
    insert(job.model, "backbone.layer1", job.aug)
    job.model.backbone.checkpoint_layer4 = checkpoint
    job.bf16 = bf16
    return job


def _grads(job):
    return {n: p.grad.clone() for n, p in job.model.named_parameters() if p.grad is not None}


def _buffers(job):
    return {n: b.clone() for n, b in job.model.named_buffers()}


def test_famix_memory_options_keep_the_numbers(famix, famix_job):
    """In-place augmentation with layer4 checkpointing: the same loss, gradients and BatchNorm statistics as the
    plain step, bit for bit in float32 (the same operations on the same numbers)."""
    job = _switch(famix, *famix_job)
    state = job.aug.generator.get_state()
    loss = famix.forward_backward(job)
    assert not torch.equal(job.aug.generator.get_state(), state)  # the augmentation acted
    grads, buffers = _grads(job), _buffers(job)
    assert set(grads) == {n for n, p in job.model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("backbone.layer4.", "classifier.")) for n in grads)
    _switch(famix, *famix_job, in_place=True, checkpoint=True)
    torch.testing.assert_close(famix.forward_backward(job), loss, rtol=0, atol=0)
    for name, g in _grads(job).items():
        torch.testing.assert_close(g, grads[name], rtol=0, atol=0, msg=name)
    for name, b in _buffers(job).items():
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0, msg=name)
    before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
    famix.step(job)
    changed = {n for n, p in job.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("backbone.layer4.", "classifier.")) for n in changed)
    decay = (1 - job.scheduler.last_epoch / 40_000) ** 0.9  # poly schedule
    assert [g["lr"] for g in job.optimizer.param_groups] == pytest.approx([0.01 * decay, 0.1 * decay])


def test_famix_bf16_autocast_within_tolerance(famix, famix_job):
    """bfloat16 autocast changes the numbers: the loss by under 2%; the gradients stay aligned with float32's
    (cosine above 0.85 at this tiny size, where a 3x3 layer4 map makes layer4's batch statistics noisy)."""
    job = _switch(famix, *famix_job)
    loss = famix.forward_backward(job)
    grads = _grads(job)
    _switch(famix, *famix_job, in_place=True, bf16=True)
    other = famix.forward_backward(job)
    assert abs(other.item() - loss.item()) <= 0.02 * abs(loss.item())
    flat = torch.cat([g.flatten() for g in grads.values()])
    other_flat = torch.cat([_grads(job)[n].flatten() for n in grads])
    assert torch.nn.functional.cosine_similarity(flat, other_flat, dim=0) > 0.85


def test_famix_finetune_last_block_only(famix, visual):
    job = _famix_job(famix, visual, "--finetune", "layer4.2")
    trained = {n for n, p in job.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("backbone.layer4.2.", "classifier.")) for n in trained)


def test_poda_main_runs_and_in_place_matches(poda, visual, capsys):
    from styleda_fast.nn import insert, remove

    result = poda.main(["--crop", str(CROP), "--batch", str(BATCH), "--device", "cpu"])
    assert torch.isfinite(torch.tensor(result["loss"])) and result["saved_bytes"] > 0
    assert "held for backward" in capsys.readouterr().out
    job = poda.build(poda.parse_args(["--crop", str(CROP), "--batch", str(BATCH), "--device", "cpu"]),
                     visual=copy.deepcopy(visual))  # fmt: skip
    assert all(not p.requires_grad for p in job.model.backbone.parameters())
    initial = copy.deepcopy(job.model.state_dict())
    torch.manual_seed(0)
    loss = poda.forward_backward(job)
    grads = _grads(job)
    job.model.load_state_dict(initial)
    remove(job.model)
    insert(job.model, "backbone.layer1", poda.dc.InPlaceBankAugment(job.aug.bank, "poda", seed=0))
    torch.manual_seed(0)
    torch.testing.assert_close(poda.forward_backward(job), loss, rtol=0, atol=0)
    for name, g in _grads(job).items():
        torch.testing.assert_close(g, grads[name], rtol=0, atol=0, msg=name)


def test_saved_bytes_counts_storages_once_and_checkpoints_keep_their_inputs():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with SavedBytes(exclude=[w]) as saved:
        h = torch.relu(x @ w)  # mm saves x (and w: excluded); relu saves its output
        (h * h).sum()  # mul saves h twice: one storage
    assert saved.bytes == x.nbytes + h.nbytes and saved.count == 2
    layer = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    y = torch.randn(32, 64)
    with SavedBytes(exclude=layer.parameters()) as plain:
        layer(y).sum()
    with SavedBytes(exclude=layer.parameters()) as ckpt:
        torch.utils.checkpoint.checkpoint(layer, y, use_reentrant=False).sum()
    assert plain.bytes == y.nbytes + 32 * 256 * 4  # the input, the ReLU output (saved twice)
    assert ckpt.bytes == y.nbytes  # the checkpoint keeps its input only


def test_live_bytes_peak_of_in_place_augmentation_is_smaller(famix):
    from styleda_fast.nn import StyleBankAugment

    bank = famix.dc.random_bank(True)
    x = torch.rand(2, 256, 24, 24)
    labels = torch.randint(0, 19, (2, 96, 96))
    aug, in_place = StyleBankAugment.famix(bank, generator=0), famix.dc.InPlaceBankAugment(bank, "famix", seed=0)
    aug.set_labels(labels)
    in_place.set_labels(labels)
    with LiveBytes() as live:
        y = aug(x)
    with LiveBytes() as live_in_place:
        z = in_place(x.clone())
    assert live.peak >= x.nbytes > live_in_place.peak - x.nbytes  # the clone is the only feature-sized storage
    torch.testing.assert_close(z, y)
    model = torch.nn.Linear(10, 10)
    sizes = state_bytes(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert sizes["parameters"] == sizes["gradients"] == sizes["optimizer"] == 440 and sizes["total"] == 3 * 440


def test_job_table_extrapolates_to_100_steps_and_80_templates():
    from styleda_fast.bench.jobs import job_table

    def row(case, provider, ms, images=16, shape="16 img 192px, 8 cls"):
        return {"case": case, "provider": provider, "ms": ms, "throughput": images / (ms / 1e3), "spread": 0.1,
                "shape": shape}  # fmt: skip

    rows = [
        row("famix mine, 1 step, 4 templates", "public", 10_000),
        row("famix mine, 3 steps, 4 templates", "public", 16_000),
        row("famix prompts, 4 templates", "public", 2_000),
        row("famix mine, 1 step, 4 templates", "ours", 5_000),
        row("famix mine, 3 steps, 4 templates", "ours", 7_000),
        row("famix prompts, 4 templates", "ours", 1_000),
        row("famix mine, 1 step, 4 templates", "ours fast", 1_600),
        row("famix mine, 3 steps, 4 templates", "ours fast", 2_000),
        {**row("famix train step", "public", 4_000, 2), "aug_in_step_ms": 200.0},
        row("famix augmentation alone", "public", 400, 2),
    ]
    table = job_table(rows)
    # public: 10 s + 99 x 3 s + 19 x 2 s (the prompts at 80 templates) = 345 s for 16 images
    public, ours, fast = 345 / 16, (5 + 99 * 1 + 19 * 1) / 16, (1.6 + 99 * 0.2) / 16
    # cached: of 1560 batches x 8 classes, only 400 descriptions are encoded
    cached = ours - (1 - 400 / (24_966 // 16 * 8)) * 20 / 16
    assert (
        f"| famix | {public:.2f} | {ours:.2f} | {cached:.2f} | {fast:.2f} | {public / ours:.2f}x | "
        f"{public / cached:.2f}x | {public / fast:.2f}x |"
    ) in table
    assert "| famix | public | 4.00 | 10% | 200.0 | 5.0% | 400.0 |" in table


def test_job_table_without_bf16_rows_says_they_were_skipped():
    """On a CPU without native bf16 the mining cases have no "ours fast" rows: the table still extrapolates."""
    from styleda_fast.bench.jobs import job_table

    def row(case, provider, ms):
        return {"case": case, "provider": provider, "ms": ms, "throughput": 16 / (ms / 1e3), "spread": 0.1,
                "shape": "16 img 192px, 8 cls"}  # fmt: skip

    rows = [
        row("famix mine, 1 step, 4 templates", "public", 10_000),
        row("famix mine, 3 steps, 4 templates", "public", 16_000),
        row("famix mine, 1 step, 4 templates", "ours", 5_000),
        row("famix mine, 3 steps, 4 templates", "ours", 7_000),
    ]
    table = job_table(rows)
    public, ours = (10 + 99 * 3) / 16, (5 + 99 * 1) / 16
    line = f"| famix | {public:.2f} | {ours:.2f} | {ours:.2f} | skipped (no native bf16) | {public / ours:.2f}x |"
    assert line in table


@pytest.mark.parametrize("name", ["poda_train_step", "famix_train_step"])
def test_example_is_the_package_command_line(name):
    """``examples/<name>.py`` runs the package's ``main`` (its options and help come from there)."""
    from styleda_fast.bench.jobs import load_examples
    from styleda_fast.train import famix_train_step, poda_train_step

    assert load_examples()[1:] == (poda_train_step, famix_train_step)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--help"], capture_output=True, text=True,
                         env=env, cwd=root, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    module = {"poda_train_step": poda_train_step, "famix_train_step": famix_train_step}[name]
    assert module.__doc__.split("\n")[0] in run.stdout
    assert "--in-place" in run.stdout
