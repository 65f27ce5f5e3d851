"""The Cityscapes -> ACDC study (``styleda_fast.train.study``, ``examples/cityscapes_to_acdc.py``) end to end on tiny
generated folders (real PNG files), a random-weight open_clip RN50, a 48 px crop and batch 2: every augmentation
from a bank file built here, resume after a stop, the mIoU against a hand-computed confusion matrix, bad input."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402

from styleda_fast import StyleBank  # noqa: E402
from styleda_fast.train import data, study  # noqa: E402
from styleda_fast.train import deeplab_clip as dc  # noqa: E402
from styleda_fast.train.metrics import confusion_matrix, iou_per_class, mean_iou  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
H, W = 48, 64  # one crop of 48 px: layer1 12x12 (3x3 patches of 4x4), layer4 3x3
BF16 = study.bf16_native(torch.device("cpu"))  # bfloat16 autocast runs (and is tested) only where native
SPLITS = ["cityscapes/val", "acdc/fog", "acdc/night", "acdc/rain", "acdc/snow"]


def _write_pair(image: Path, label: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (H, W, 3), generator=gen, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(image)
    blocks = torch.randint(0, 19, (4, 4), generator=gen, dtype=torch.uint8)
    blocks[0, 0] = 255  # unlabelled pixels
    Image.fromarray(blocks.repeat_interleave(H // 4, 0).repeat_interleave(W // 4, 1).numpy()).save(label)


def make_cityscapes(root: Path, train: int = 4, val: int = 1) -> Path:
    for split, n in (("train", train), ("val", val)):
        for k in range(n):
            city = f"city{k % 2}"
            name = f"{city}_{k:06d}_000019"
            _write_pair(
                root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png",
                seed=k + (50 if split == "val" else 0),
            )
    return root


def make_acdc(root: Path) -> Path:
    for j, cond in enumerate(data.ACDC_CONDITIONS):
        name = f"GOPR{j:04d}_frame_000001"
        _write_pair(
            root / "rgb_anon" / cond / "val" / f"GOPR{j:04d}" / f"{name}_rgb_anon.png",
            root / "gt" / cond / "val" / f"GOPR{j:04d}" / f"{name}_gt_labelTrainIds.png",
            seed=100 + j,
        )
    return root


def random_styles(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 256, generator=gen) * 0.5, torch.rand(n, 256, generator=gen) * 0.5 + 0.1


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    cityscapes, acdc = make_cityscapes(base / "cityscapes"), make_acdc(base / "acdc")
    poda = StyleBank(256, 0, 255)
    poda.add(*random_styles(8, 1), 255)
    poda.save(base / "poda.safetensors")
    local = StyleBank(256)  # the 19 Cityscapes classes and the fallback 255
    ids = torch.cat([torch.arange(19), torch.tensor([255])]).repeat_interleave(2)
    local.add(*random_styles(len(ids), 2), ids)
    local.save(base / "local.safetensors")
    with open(base / "saved_params.pkl", "wb") as f:  # FAMix's pickle
        pickle.dump({k: [t.clone() for t in v] for k, v in dc.famix_saved_params(local).items()}, f)
    return {"base": base, "cityscapes": cityscapes, "acdc": acdc, "poda": base / "poda.safetensors",
            "local": base / "local.safetensors", "pkl": base / "saved_params.pkl"}  # fmt: skip


@pytest.fixture(scope="module")
def visual():
    return dc.load_visual("none", seed=0)


def _argv(folders, out, *extra, iters=2, acdc=True):
    acdc = ["--acdc", str(folders["acdc"])] if acdc else []
    return ["--cityscapes", str(folders["cityscapes"]), *acdc, "--out", str(out), "--pretrained", "none",
            "--iters", str(iters), "--batch", "2", "--crop", "48", "--workers", "0", "--device", "cpu",
            "--log-every", "1", "--checkpoint-every", "2", *extra]  # fmt: skip


def _weights(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def none_run(folders, visual):
    out = folders["base"] / "run_none"
    assert study.main(_argv(folders, out, "--finetune", "none"), visual=visual) == 0
    return out


def _check_report(out: Path, aug: str, bank: Path | None, splits=SPLITS) -> dict:
    report = json.loads((out / "results.json").read_text())
    assert list(report["results"]) == splits and report["options"]["aug"] == aug
    for name, r in report["results"].items():
        assert 0 <= r["miou"] <= 1 and sum(map(sum, r["confusion"])) > 0, name
        assert r["miou"] == pytest.approx(mean_iou(torch.tensor(r["confusion"])), abs=1e-12)
    if splits == SPLITS:
        assert report["acdc/mean"] == pytest.approx(sum(report["results"][s]["miou"] for s in SPLITS[1:]) / 4)
    expected = getattr(study.load_bank(str(bank), aug), "provenance", {}) if bank else {}
    assert report["bank"]["provenance"] == json.loads(json.dumps(expected, default=str))
    assert report["peak_memory"]["bytes"] > 0 and report["peak_memory"]["kind"] == "CPU peak RSS of the process"
    table = (out / "results.md").read_text()
    for name in splits:
        assert f"| {name} | 1 | {100 * report['results'][name]['miou']:.1f} |" in table
    assert study.MIOU_NOTE in table and f'"aug": "{aug}"' in table
    return report


def test_no_augmentation_baseline(none_run, capsys):
    report = _check_report(none_run, "none", None)
    assert report["iterations"] == 2 and report["world_size"] == 1


@pytest.mark.parametrize(
    "aug, bank, extra",
    [
        ("poda", "poda", ()),
        ("famix", "pkl", ()),
        ("zero-shot-local", "local", ("--in-place", *(("--bf16",) if BF16 else ()))),
    ],
)
def test_augmentation_trains_from_its_bank(folders, visual, none_run, capsys, aug, bank, extra):
    """Each augmentation runs from its bank file and acts: the same seed without it gives other head weights
    (zero-shot local: written in place, under bfloat16 autocast where that is native)."""
    out = folders["base"] / f"run_{aug}"
    argv = _argv(folders, out, "--aug", aug, "--bank", str(folders[bank]), "--finetune", "none", *extra, acdc=False)
    rc = study.main(argv, visual=visual)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "peak memory:" in captured.out and "iter 2/2" in captured.out
    _check_report(out, aug, folders[bank], splits=SPLITS[:1])
    mine, plain = _weights(out)["model"], _weights(none_run)["model"]
    assert not torch.equal(mine["classifier.classify.weight"], plain["classifier.classify.weight"])
    assert torch.equal(mine["backbone.layer4.2.conv3.weight"], plain["backbone.layer4.2.conv3.weight"])  # frozen


def test_resume_after_a_stop_gives_the_uninterrupted_weights(folders, visual, capsys):
    """Stopped after 1 iteration (mid-epoch) and resumed: the same weights, momentum, BatchNorm statistics and mIoU
    as the uninterrupted 3-iteration run, bit for bit (one process, CPU: every generator is restored). The FAMix
    augmentation with layer4 trained and checkpointed (``--checkpoint``)."""
    common = ("--aug", "famix", "--bank", str(folders["local"]), "--checkpoint")
    whole, parts = folders["base"] / "whole", folders["base"] / "parts"
    assert study.main(_argv(folders, whole, *common, iters=3, acdc=False), visual=visual) == 0
    assert study.main(_argv(folders, parts, *common, "--stop-after", "1", iters=3, acdc=False), visual=visual) == 0
    assert "stopped after 1 iterations at 1/3" in capsys.readouterr().out
    assert _weights(parts)["iteration"] == 1 and not (parts / "results.json").exists()
    assert study.main(_argv(folders, parts, *common, iters=3, acdc=False), visual=visual) == 0
    assert "from iteration 1 to 3" in capsys.readouterr().out
    a, b = _weights(whole), _weights(parts)
    assert a["iteration"] == b["iteration"] == 3
    for name, t in a["model"].items():
        torch.testing.assert_close(b["model"][name], t, rtol=0, atol=0, msg=name)
    assert not torch.equal(a["model"]["backbone.layer4.2.conv3.weight"], visual.layer4[2].conv3.weight)
    for k, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][k]["momentum_buffer"], state["momentum_buffer"], rtol=0,
                                   atol=0)  # fmt: skip
    ra, rb = (json.loads((d / "results.json").read_text())["results"] for d in (whole, parts))
    assert {k: v["confusion"] for k, v in ra.items()} == {k: v["confusion"] for k, v in rb.items()}
    # other training options on the same --out: refused, nothing changed
    before = (parts / "checkpoint.pt").read_bytes()
    assert study.main(_argv(folders, parts, *common, "--lr", "0.05", iters=3, acdc=False), visual=visual) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr: 0.1 there, 0.05 now" in err
    assert (parts / "checkpoint.pt").read_bytes() == before


def test_miou_from_a_hand_computed_confusion_matrix():
    """4 classes, 3 ignored pixels: class 3 absent from prediction and ground truth (left out of the mean), class 2
    predicted but absent from the ground truth (IoU 0, counted)."""
    target = torch.tensor([[0, 0, 0, 1, 1], [1, 255, 0, 1, 255], [0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 0, 1, 1, 1], [2, 3, 0, 0, 2], [0, 2, 1, 1, 0]])
    # rows: ground truth 0..3; columns: prediction (ignored pixels dropped)
    expected = torch.tensor([[4, 1, 1, 0], [1, 4, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    cm = confusion_matrix(pred, target, 4, 255)
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    # IoU: class 0: 4 / (6 + 5 - 4) = 4/7; class 1: 4 / (6 + 5 - 4) = 4/7; class 2: 0 / (0 + 2 - 0) = 0
    ious = iou_per_class(cm)
    assert ious[:3] == pytest.approx([4 / 7, 4 / 7, 0.0]) and math.isnan(ious[3])
    assert mean_iou(cm) == pytest.approx((4 / 7 + 4 / 7 + 0) / 3)
    result = study.split_result(torch.nn.functional.pad(cm, (0, 15, 0, 15)), images=1)
    assert result["left_out"] == list(study.CITYSCAPES_CLASSES[3:]) and result["miou"] == pytest.approx(8 / 21)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(pred[:2], target, 4)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(pred.float(), target, 4)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(pred, target.masked_fill(target == 1, 7), 4)


def _bad_cases(folders, tmp: Path):
    broken = make_cityscapes(tmp / "broken", train=2, val=1)
    next((broken / "gtFine" / "train").glob("*/*.png")).unlink()
    sizes = make_cityscapes(tmp / "sizes", train=2, val=1)
    label = next((sizes / "gtFine" / "val").glob("*/*.png"))
    Image.new("L", (W, H + 1)).save(label)
    garbage = make_cityscapes(tmp / "garbage", train=2, val=1)
    next((garbage / "leftImg8bit" / "train").glob("*/*.png")).write_bytes(b"not a png")
    return {
        "missing folder": (["--cityscapes", str(tmp / "nowhere")], "missing folder"),
        "layout mismatch": (["--cityscapes", str(broken)], "layout mismatch"),
        "label of another size": (["--cityscapes", str(sizes)], "pixels (w, h) but its label"),
        "unreadable image": (["--cityscapes", str(garbage)], "not a readable image"),
        "unknown aug": (["--aug", "mixup", "--bank", str(folders["local"])], "--aug must be one of"),
        "classless bank": (["--aug", "zero-shot-local", "--bank", str(folders["poda"])], "needs a bank with"),
        "no bank": (["--aug", "famix"], "needs --bank"),
        "bank for none": (["--bank", str(folders["poda"])], "--bank is an option"),
        "missing bank file": (["--aug", "poda", "--bank", str(tmp / "none.safetensors")], "no such file"),
        "crop": (["--crop", "40"], "--crop must be"),
        "batch of one": (["--batch", "1"], "--batch must be >= 2"),
        "missing ACDC condition": (["--acdc", str(tmp / "broken")], "missing folder"),
        "unknown option": (["--nonsense"], "unrecognized arguments"),
    }


def test_bad_input_one_line_exit_2_nothing_written(folders, tmp_path, capsys):
    for name, (override, message) in _bad_cases(folders, tmp_path).items():
        out = tmp_path / "out"
        argv = _argv(folders, out)
        for flag, value in zip(override[::2], override[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        if override == ["--nonsense"]:
            argv.append("--nonsense")
        assert study.main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (name, err)
        assert not out.exists(), name


def test_command_line_exit_status(folders, tmp_path):
    """The example script itself: one line on stderr, status 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = _argv(folders, tmp_path / "out", "--aug", "famix", "--bank", str(folders["poda"]))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "cityscapes_to_acdc.py"), *argv],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "needs a bank with classes" in run.stderr


def test_bf16_only_where_native(folders, tmp_path, capsys):
    if BF16:
        pytest.skip("this CPU has native bfloat16: the refusal cannot be observed here")
    assert study.main(_argv(folders, tmp_path / "out", "--bf16")) == 2
    assert "--bf16 needs native bfloat16" in capsys.readouterr().err


def test_two_processes_torchrun_gloo(folders, visual, tmp_path):
    """2 processes (torch.distributed.run, gloo): one checkpoint with both processes' generators, one results file,
    and the sharded evaluation summed over processes equals a one-process evaluation of the saved model."""
    out = tmp_path / "ddp"
    argv = _argv(folders, out, "--aug", "zero-shot-local", "--bank", str(folders["local"]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "styleda_fast.train.study", *argv], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("peak memory:") == 1  # rank 0 only
    state = _weights(out)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["aug"], state["rng"][1]["aug"])
    report = json.loads((out / "results.json").read_text())
    assert report["world_size"] == 2 and len(report["peak_memory"]["per_process"]) == 2
    model = dc.SegmentationModel(copy.deepcopy(visual))
    model.load_state_dict(state["model"])
    args = study.build_parser().parse_args(argv)
    for name, pairs in (("cityscapes/val", data.cityscapes_pairs(folders["cityscapes"], "val")),
                        ("acdc/night", data.acdc_pairs(folders["acdc"], "night"))):  # fmt: skip
        confusion = study.evaluate(args, model, pairs, study.Dist())
        assert confusion.tolist() == report["results"][name]["confusion"], name


def test_training_samples_depend_on_seed_epoch_and_index_only(tmp_path):
    """A crop is drawn from (seed, epoch, index): the same in any reader; the image normalized with CLIP's
    statistics, padded with 0 and the label with 255 where the crop is larger; labels outside 0..18 read as 255."""
    root = make_cityscapes(tmp_path / "cs", train=2, val=1)
    pairs = data.cityscapes_pairs(root, "train")
    label_path = pairs[0][1]
    raw = torch.from_numpy(np.array(Image.open(label_path))).long()
    raw[5, 7] = 33  # a labelId, not a train id
    Image.fromarray(raw.to(torch.uint8).numpy()).save(label_path)
    full = data.SegmentationFolder(pairs)[0]  # evaluation: the whole image
    expected = raw.masked_fill((raw >= 19), 255)
    assert torch.equal(full[1], expected) and full[1][5, 7] == 255
    pixels = torch.from_numpy(np.array(Image.open(pairs[0][0]))).double().permute(2, 0, 1)
    mean, std = torch.tensor(data.CLIP_MEAN, dtype=torch.float64), torch.tensor(data.CLIP_STD, dtype=torch.float64)
    reference = (pixels / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    torch.testing.assert_close(full[0].double(), reference, rtol=1e-6, atol=1e-6)  # float32
    a, b = data.SegmentationFolder(pairs, crop=48, seed=3), data.SegmentationFolder(pairs, crop=48, seed=3)
    draws = set()
    for epoch in range(6):
        a.epoch = b.epoch = epoch
        (xa, ya), (xb, yb) = a[0], b[0]
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (3, 48, 48)
        draws.add(tuple(ya.flatten().tolist()))
        # the crop is a window of the full sample, flipped or not
        windows = [(full[1][:, k : k + 48], ya) for k in range(W - 48 + 1)] + [
            (full[1][:, k : k + 48].flip(-1), ya) for k in range(W - 48 + 1)
        ]
        assert any(torch.equal(w, y) for w, y in windows)
    assert len(draws) > 1  # the epochs draw other crops
    big = data.SegmentationFolder(pairs, crop=80, seed=0)[1]
    assert big[0].shape == (3, 80, 80) and bool((big[1][H:] == 255).all()) and bool((big[0][:, H:] == 0).all())
