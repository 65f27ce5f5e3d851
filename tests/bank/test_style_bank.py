"""StyleBank: sampling rules, reproducibility, save/load, the public pickle formats and malicious pickles."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from styleda_fast import StyleBank, patch_dominant_class
from styleda_fast.bank.style_bank import CITYSCAPES_CLASSES, UnsafePickleError, safe_unpickle
from styleda_fast.ops.class_stats.reference import sample_styles_loop

C = 16


def make_bank(per_class: dict[int, int], seed: int = 0, num_classes: int = 19) -> StyleBank:
    """A bank whose style means encode (class, index): mean[:, 0] = class id, mean[:, 1] = index within the class."""
    gen = torch.Generator().manual_seed(seed)
    bank = StyleBank(C, num_classes=num_classes, backbone="RN50", layer="layer1", prompts={"road": "a road"})
    for k, n in per_class.items():
        mean = torch.randn(n, C, generator=gen)
        mean[:, 0] = k
        mean[:, 1] = torch.arange(n)
        bank.add(mean, torch.rand(n, C, generator=gen) + 0.5, torch.full((n,), k))
    return bank


def test_add_len_counts_and_shapes():
    bank = make_bank({0: 3, 5: 1, 255: 2})
    assert len(bank) == 6
    counts = bank.class_counts()
    assert counts["road"] == 3 and counts["pole"] == 1 and counts["255"] == 2 and counts["sky"] == 0
    bank.add(torch.randn(2, C, 1, 1), torch.rand(2, C, 1, 1), 7)  # (N, C, 1, 1) and one id for all
    assert bank.class_counts()["traffic sign"] == 2
    with pytest.raises(ValueError, match="mean"):
        bank.add(torch.randn(2, C + 1), torch.rand(2, C + 1), 0)
    with pytest.raises(ValueError, match="class_ids"):
        bank.add(torch.randn(2, C), torch.rand(2, C), [0, 19])
    with pytest.raises(TypeError, match="std"):
        bank.add(torch.randn(2, C), [1.0], 0)
    with pytest.raises(ValueError, match="fallback"):
        StyleBank(C, num_classes=19, fallback=3)


def test_sample_stays_in_class_and_falls_back():
    bank = make_bank({0: 3, 5: 1, 255: 2})
    classes = torch.tensor([[0, 5, 11], [255, 0, 18]])  # 11 and 18 have no styles -> fallback 255
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        mean, std = bank.sample(classes, generator=gen)
        assert mean.shape == std.shape == (2, 3, C)
        assert mean[..., 0].tolist() == [[0, 5, 255], [255, 0, 255]]
        assert (std > 0.5).all()
    # each style of a class is drawn, uniformly
    mean, _ = bank.sample(torch.zeros(30_000, dtype=torch.int64), generator=gen)
    freq = torch.bincount(mean[:, 1].long(), minlength=3).double() / 30_000
    assert ((freq - 1 / 3).abs() < 0.02).all()


def test_sample_errors():
    bank = make_bank({0: 2})
    with pytest.raises(ValueError, match="'sky' has no styles and the fallback class 255 has none"):
        bank.sample(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="class_ids"):
        bank.sample(torch.tensor([20]))
    with pytest.raises(TypeError, match="class_ids"):
        bank.sample(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="no styles"):
        StyleBank(C).sample_any(3)


def test_sample_is_reproducible_and_matches_the_loop_distribution():
    bank = make_bank({k: k % 4 for k in range(19)} | {255: 3}, seed=1)
    classes = torch.randint(0, 19, (8, 9), generator=torch.Generator().manual_seed(2))
    a = bank.sample(classes, torch.Generator().manual_seed(7))
    b = bank.sample(classes, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = bank.sample(classes, torch.Generator().manual_seed(8))
    assert not torch.equal(a[0], c[0])
    # FAMix's loop draws from the same sets
    lists = {}
    for k in [*range(19), 255]:
        rows = (bank.class_ids == k).nonzero().flatten()
        lists[k] = [(bank.mean[r], bank.std[r]) for r in rows]
    loop_mean, _ = sample_styles_loop(lists, classes)
    assert torch.equal(loop_mean[..., 0], a[0][..., 0])  # same class (or fallback) per entry


def test_sample_grid_feeds_local_style_mix():
    from styleda_fast import local_style_mix

    bank = make_bank({k: 2 for k in range(19)} | {255: 2})
    labels = torch.randint(0, 19, (2, 48, 48))
    classes = patch_dominant_class(labels, grid=3)
    mean, std = bank.sample_grid(classes, generator=torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (2, C, 3, 3)
    assert torch.equal(mean[:, 0].long(), classes)
    x = torch.randn(2, C, 12, 12)
    y = local_style_mix(x, mean, std, grid=3, mix=torch.rand(2, C))
    assert y.shape == x.shape


def test_save_load_round_trip_and_reproducible(tmp_path):
    bank = make_bank({0: 3, 4: 2, 255: 1}, seed=3)
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    loaded = StyleBank.load(path)
    assert len(loaded) == len(bank) and loaded.class_counts() == bank.class_counts()
    assert loaded.metadata() == bank.metadata()
    assert loaded.backbone == "RN50" and loaded.prompts == {"road": "a road"}
    classes = torch.tensor([0, 4, 9, 255, 0, 4])
    a = bank.sample(classes, torch.Generator().manual_seed(11))
    b = loaded.sample(classes, torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_load_rejects_malformed_files(tmp_path):
    bank = make_bank({0: 3, 255: 1})
    good = tmp_path / "bank.safetensors"
    bank.save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        StyleBank.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable"):
        StyleBank.load(garbage)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a styleda_fast StyleBank"):
        StyleBank.load(other)
    future = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(future), metadata={"format": "styleda_fast.StyleBank", "format_version": "9"})
    with pytest.raises(ValueError, match="format version"):
        StyleBank.load(future)
    bad_ids = tmp_path / "bad_ids.safetensors"
    meta = {
        "format": "styleda_fast.StyleBank",
        "format_version": "1",
        "bank": '{"channels": 16, "num_classes": 19, "fallback": 255, "class_names": null}',
    }
    save_file({"mean": torch.zeros(1, C), "std": torch.ones(1, C), "class_ids": torch.tensor([77])}, str(bad_ids), meta)
    with pytest.raises(ValueError, match="inconsistent style tensors"):
        StyleBank.load(bad_ids)
    with pytest.raises(FileNotFoundError):
        StyleBank.load(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- public pickle formats


def write_poda_dir(directory, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    styles = []
    for i in range(n):
        style = {"mu_f1": torch.randn(C, 1, 1, generator=gen), "std_f1": torch.rand(C, 1, 1, generator=gen)}
        with open(directory / f"img_{i:03d}.pkl", "wb") as f:
            pickle.dump(style, f)  # the way PODA writes them
        styles.append(style)
    return styles


def test_from_poda_dir(tmp_path):
    styles = write_poda_dir(tmp_path)
    bank = StyleBank.from_poda_dir(tmp_path)
    assert len(bank) == 5 and bank.num_classes == 0
    assert torch.equal(bank.mean, torch.stack([s["mu_f1"].flatten() for s in styles]))
    assert torch.equal(bank.std, torch.stack([s["std_f1"].flatten() for s in styles]))
    mean, std = bank.sample_any(8, torch.Generator().manual_seed(0))
    assert mean.shape == (8, C) and all((bank.mean == m).all(1).any() for m in mean)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PODA style files"):
        StyleBank.from_poda_dir(tmp_path / "empty")


def test_from_famix_pickle(tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = {}
    for k, name in enumerate([*CITYSCAPES_CLASSES, "255"]):
        n = k % 3
        data[f"{name}_mu"] = [torch.randn(C, 1, 1, generator=gen) for _ in range(n)]
        data[f"{name}_std"] = [torch.rand(C, 1, 1, generator=gen) for _ in range(n)]
    path = tmp_path / "famix_styles.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)  # the way FAMix writes it
    bank = StyleBank.from_famix_pickle(path)
    assert bank.class_counts()["sidewalk"] == 1 and bank.class_counts()["255"] == 19 % 3
    assert torch.equal(bank.mean[bank.class_ids == 2], torch.stack([t.flatten() for t in data["building_mu"]]))
    # road has no styles -> drawn from the 255 list
    mean, _ = bank.sample(torch.zeros(10, dtype=torch.int64), torch.Generator().manual_seed(0))
    fallback = torch.stack([t.flatten() for t in data["255_mu"]])
    assert all((fallback == m).all(1).any() for m in mean)
    with open(tmp_path / "bad_keys.pkl", "wb") as f:
        pickle.dump({"roadd_mu": [torch.zeros(C, 1, 1)], "roadd_std": [torch.ones(C, 1, 1)]}, f)
    with pytest.raises(ValueError, match="keys"):
        StyleBank.from_famix_pickle(tmp_path / "bad_keys.pkl")


class _Payload:
    """Runs a shell command when unpickled (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _StoragePayload:
    """Pickles like a torch storage (``torch.storage._load_from_bytes(data)``) but carries a payload."""

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.data,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    poda = tmp_path / "poda"
    poda.mkdir()
    write_poda_dir(poda, n=2)
    with open(poda / "img_999.pkl", "wb") as f:
        pickle.dump({"mu_f1": _Payload(marker), "std_f1": torch.ones(C, 1, 1)}, f)
    with pytest.raises(UnsafePickleError, match=r"img_999\.pkl.*asks for (posix|nt|os)\.system"):
        StyleBank.from_poda_dir(poda)
    famix = tmp_path / "famix.pkl"
    with open(famix, "wb") as f:
        pickle.dump({"road_mu": [_Payload(marker)], "road_std": [torch.ones(C, 1, 1)]}, f)
    with pytest.raises(ValueError, match="refusing"):
        StyleBank.from_famix_pickle(famix)
    # a payload hidden in the bytes of a "storage" goes through torch's weights-only loader, which refuses it
    evil_storage = tmp_path / "storage.pkl"
    with open(evil_storage, "wb") as f:
        pickle.dump({"road_mu": [_StoragePayload(pickle.dumps(_Payload(marker)))]}, f, protocol=4)
    with pytest.raises(UnsafePickleError, match="storage"):
        safe_unpickle(evil_storage)
    assert not marker.exists(), "the pickle payload ran"


def test_safe_unpickle_rejects_garbage(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable style pickle"):
        safe_unpickle(path)
    path.write_bytes(pickle.dumps({"mu_f1": torch.ones(3)})[:-10])
    with pytest.raises(ValueError, match="not a readable style pickle"):
        safe_unpickle(path)


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 4), min_size=19, max_size=19),
    fallback=st.integers(1, 3),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_sample_property(counts, fallback, shape, seed):
    bank = make_bank({k: n for k, n in enumerate(counts) if n} | {255: fallback}, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 19, shape, generator=gen)
    mean, std = bank.sample(classes, generator=gen)
    want = torch.where(torch.tensor(counts)[classes] > 0, classes, torch.full_like(classes, 255))
    assert torch.equal(mean[..., 0].long(), want)
    limit = torch.where(want == 255, fallback, torch.tensor(counts)[classes.clamp_max(18)])
    assert ((mean[..., 1] >= 0) & (mean[..., 1] < limit)).all()


# ----------------------------------------------------------------------------- bad arguments (each names itself)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"fallback": 10**30}, ValueError, "fallback"),  # accepted before, OverflowError when sampling
        ({"fallback": -(2**64)}, ValueError, "fallback"),
        ({"fallback": 2.0}, TypeError, "fallback"),
        ({"channels": "16"}, TypeError, "channels"),
        ({"channels": 0}, ValueError, "channels"),
        ({"channels": 10**12}, ValueError, "channels"),
        ({"num_classes": 10**9}, ValueError, "num_classes"),  # would build a billion default names
        ({"num_classes": 3, "class_names": "abc"}, TypeError, "class_names"),
        ({"num_classes": 2, "class_names": ["a", 1]}, TypeError, "class_names"),
        ({"num_classes": 2, "class_names": ["a"]}, ValueError, "class_names"),
        ({"prompts": {"road": ["nested"]}}, TypeError, "prompts"),
        ({"prompts": "a road"}, TypeError, "prompts"),
        ({"backbone": 50}, TypeError, "backbone"),
        ({"layer": ["layer1"]}, TypeError, "layer"),
        ({"device": "nonsense"}, ValueError, "device"),
        ({"device": 3.5}, TypeError, "device"),
        ({"empty_class": "fallback"}, ValueError, "empty_class"),
        ({"empty_class": None}, TypeError, "empty_class"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, name):
    kwargs = {"channels": C} | kwargs
    with pytest.raises(error, match=name):
        StyleBank(**kwargs)


def test_add_and_sampling_reject_bad_arguments():
    bank = make_bank({0: 2, 255: 1})
    with pytest.raises(ValueError, match="std"):
        bank.add(torch.randn(2, C), torch.rand(2, C + 1), 0)  # mismatched channel counts
    with pytest.raises(ValueError, match="mean"):
        bank.add(torch.randn(2, C, 1), torch.rand(2, C, 1), 0)
    with pytest.raises(ValueError, match="same shape"):
        bank.add(torch.randn(2, C), torch.rand(3, C), 0)
    with pytest.raises(TypeError, match="class_ids"):
        bank.add(torch.randn(2, C), torch.rand(2, C), [0, "road"])
    with pytest.raises(TypeError, match="class_ids"):
        bank.add(torch.randn(2, C), torch.rand(2, C), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="class_ids"):
        bank.add(torch.randn(2, C), torch.rand(2, C), 10**30)
    with pytest.raises(ValueError, match="class_ids"):
        bank.add(torch.randn(2, C), torch.rand(2, C), [0, 2**70])
    with pytest.raises(ValueError, match="mean has 1 non-finite"):
        bank.add(torch.tensor([[float("nan")] + [0.0] * (C - 1)]), torch.ones(1, C), 0)
    with pytest.raises(ValueError, match="std has 1 non-finite"):
        bank.add(torch.zeros(1, C), torch.tensor([[1e300] + [1.0] * (C - 1)], dtype=torch.float64), 0)  # inf in f32
    assert len(bank) == 3  # nothing was added by the failed calls
    with pytest.raises(ValueError, match="n must be >= 0"):
        bank.sample_any(-1)
    with pytest.raises(TypeError, match="n must be an int"):
        bank.sample_any(2.5)
    assert bank.sample_any(0)[0].shape == (0, C)
    with pytest.raises(TypeError, match="generator"):
        bank.sample_any(2, generator=0)
    with pytest.raises(TypeError, match="classes"):
        bank.sample_grid([[0]])
    with pytest.raises(ValueError, match="classes"):
        bank.sample_grid(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="device"):
        bank.to("nonsense")


def test_load_rejects_bad_metadata_and_map_location(tmp_path):
    from safetensors.torch import save_file

    bank = make_bank({0: 2})
    good = tmp_path / "bank.safetensors"
    bank.save(good)
    with pytest.raises(ValueError, match="map_location"):
        StyleBank.load(good, map_location="nonsense")
    with pytest.raises(TypeError, match="map_location"):
        StyleBank.load(good, map_location={"cuda:0": "cpu"})  # torch.load's dict form is not supported
    with pytest.raises(TypeError, match="path"):
        StyleBank.load(3)
    tensors = {"mean": torch.zeros(1, C), "std": torch.ones(1, C), "class_ids": torch.tensor([0])}
    base = {"channels": C, "num_classes": 19, "fallback": 255, "class_names": None}
    cases = {
        "deep": "[" * 100_000 + "]" * 100_000,  # RecursionError in json before
        "nested_prompts": json.dumps(base | {"prompts": {"road": {"a": [[[[["deep"]]]]]}}}),
        "huge_classes": json.dumps(base | {"num_classes": 10**9}),
        "not_object": "[1, 2]",
        "empty_class": json.dumps(base | {"empty_class": "sometimes"}),
    }
    for tag, text in cases.items():
        path = tmp_path / f"{tag}.safetensors"
        save_file(tensors, str(path), {"format": "styleda_fast.StyleBank", "format_version": "1", "bank": text})
        with pytest.warns(UserWarning, match="no checksum"), pytest.raises(ValueError, match=f"{tag}.*metadata"):
            StyleBank.load(path)


def test_loaders_name_styles_with_other_channel_counts(tmp_path):
    data = {"road_mu": [torch.zeros(C, 1, 1), torch.zeros(C + 1, 1, 1)], "road_std": [torch.ones(C, 1, 1)] * 2}
    with open(tmp_path / "famix.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ValueError, match=r"famix\.pkl.*road_mu\[1\] has 17 channels but road_mu\[0\] has 16"):
        StyleBank.from_famix_pickle(tmp_path / "famix.pkl")
    data = {"road_mu": [torch.zeros(C, 1, 1)], "road_std": [torch.ones(C, 1, 1)], "255_mu": [torch.zeros(C + 1)]}
    data["255_std"] = [torch.ones(C + 1)]
    with open(tmp_path / "famix.pkl", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(ValueError, match=r"255_mu\[0\] has 17 channels"):
        StyleBank.from_famix_pickle(tmp_path / "famix.pkl")
    folder = tmp_path / "poda"
    folder.mkdir()
    write_poda_dir(folder, n=2)
    with open(folder / "img_002.pkl", "wb") as f:
        pickle.dump({"mu_f1": torch.zeros(C + 1, 1, 1), "std_f1": torch.ones(C + 1, 1, 1)}, f)
    with pytest.raises(ValueError, match=r"img_002\.pkl.*mu_f1 has 17 channels but .*img_000\.pkl.* has 16"):
        StyleBank.from_poda_dir(folder)


# ----------------------------------------------------------------------------- negative std, empty classes


def test_add_rejects_negative_std():
    bank = StyleBank(C)
    std = torch.rand(3, C) + 0.1
    std[0, 1], std[2, 3] = -0.5, -0.01
    with pytest.raises(ValueError, match=r"std must be >= 0: 2 of 48 values are negative \(min -0\.5\)"):
        bank.add(torch.zeros(3, C), std, 0)
    assert len(bank) == 0
    bank.add(torch.zeros(3, C), std.clamp_min(0), 0)  # zero is a valid std


def test_loaders_report_and_clamp_negative_std(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "poda"
    folder.mkdir()
    styles = write_poda_dir(folder, n=3)
    styles[1]["std_f1"][2] = -0.25
    styles[1]["std_f1"][5] = -0.5
    with open(folder / "img_001.pkl", "wb") as f:
        pickle.dump(styles[1], f)
    famix = tmp_path / "famix.pkl"
    with open(famix, "wb") as f:
        pickle.dump({"road_mu": [s["mu_f1"] for s in styles], "road_std": [s["std_f1"] for s in styles]}, f)
    old = tmp_path / "old.safetensors"
    meta = json.dumps({"channels": C, "num_classes": 19, "fallback": 255, "class_names": None})
    save_file(
        {"mean": torch.zeros(3, C), "std": torch.stack([s["std_f1"].flatten() for s in styles]),
         "class_ids": torch.tensor([0, 1, 255])},
        str(old), {"format": "styleda_fast.StyleBank", "format_version": "1", "bank": meta},
    )  # fmt: skip
    loaders = {
        "poda": lambda **kw: StyleBank.from_poda_dir(folder, **kw),
        "famix": lambda **kw: StyleBank.from_famix_pickle(famix, **kw),
        "old": lambda **kw: StyleBank.load(old, verify=False, **kw),
    }
    for tag, load in loaders.items():
        with pytest.warns(UserWarning, match=rf"{tag}.*2 of {3 * C} std values are negative \(min -0\.5\).*clamp"):
            bank = load()
        assert (bank.std >= 0).all() and bank.std[1, 2] == 0 and bank.std[1, 5] == 0
        assert torch.equal(bank.std[0], styles[0]["std_f1"].flatten())  # the rest unchanged
        with pytest.warns(UserWarning, match="negative"):
            bank = load(clamp_negative_std=0.125)
        assert bank.std[1, 2] == 0.125 and bank.std[1, 5] == 0.125
        assert torch.equal(bank.std[1, 3], styles[1]["std_f1"].flatten()[3])  # positives are kept as they are
        with pytest.raises(ValueError, match=rf"{tag}.*2 of {3 * C} std values are negative"):
            load(clamp_negative_std=None)
        with pytest.raises(ValueError, match="clamp_negative_std"):
            load(clamp_negative_std=-1.0)
        with pytest.raises(TypeError, match="clamp_negative_std"):
            load(clamp_negative_std="0")


def test_empty_class_any_draws_from_all_styles(tmp_path):
    bank = make_bank({0: 2, 4: 3})  # no fallback styles
    classes = torch.tensor([0, 7, 4, 255, 7])
    with pytest.raises(ValueError, match="empty_class='any'"):
        bank.sample(classes)  # "error", the default
    anyb = StyleBank(C, empty_class="any", backbone="RN50", layer="layer1", prompts={"road": "a road"})
    anyb.add(bank.mean, bank.std, bank.class_ids)
    mean, _ = anyb.sample(classes.repeat(2000), torch.Generator().manual_seed(0))
    drawn = mean[:, :2].reshape(2000, 5, 2)
    assert (drawn[:, 0, 0] == 0).all() and (drawn[:, 2, 0] == 4).all()  # classes with styles keep their own
    for column in (1, 3, 4):  # empty class and empty fallback: any of the 5 styles, uniformly
        keys = drawn[:, column, 0] * 10 + drawn[:, column, 1]
        freq = torch.stack([(keys == k).double().mean() for k in (0, 1, 40, 41, 42)])
        assert abs(float(freq.sum()) - 1) < 1e-9 and ((freq - 0.2).abs() < 0.05).all(), freq
    # saved with the bank; the same generator gives the same styles after loading
    anyb.save(tmp_path / "any.safetensors")
    loaded = StyleBank.load(tmp_path / "any.safetensors")
    assert loaded.empty_class == "any" and loaded.metadata() == anyb.metadata()
    a = anyb.sample(classes, torch.Generator().manual_seed(3))
    b = loaded.sample(classes, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="no styles"):
        StyleBank(C, empty_class="any").sample(torch.tensor([0]))
    famix = tmp_path / "famix.pkl"
    with open(famix, "wb") as f:
        pickle.dump({"road_mu": [torch.zeros(C, 1, 1)], "road_std": [torch.ones(C, 1, 1)]}, f)
    assert StyleBank.from_famix_pickle(famix, empty_class="any").sample(torch.tensor([5]))[0].shape == (1, C)
    with pytest.raises(ValueError, match="no styles"):
        StyleBank.from_famix_pickle(famix).sample(torch.tensor([5]))
