"""Loaders against files that declare more than they hold: hand-written pickles and archives (zero-stride tensors of
huge declared size, a DEFLATE-bombed storage archive, storages larger than their bytes, malformed sizes, strides
and offsets), checked for a clear ValueError and for peak memory in a fresh process."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from styleda_fast import StyleBank
from styleda_fast.compat import famix, poda

# ------------------------------------------------------------------------------------- pickle opcodes, by hand


def op_str(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_int(n: int) -> bytes:  # BININT, else LONG1
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def op_bytes(b: bytes) -> bytes:  # BINBYTES
    return b"B" + struct.pack("<I", len(b)) + b


def op_tuple(items) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def op_global(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_list(items) -> bytes:  # EMPTY_LIST MARK ... APPENDS
    return b"](" + b"".join(items) + b"e"


def op_dict(pairs: dict[str, bytes]) -> bytes:  # EMPTY_DICT MARK key value ... SETITEMS
    return b"}(" + b"".join(op_str(k) + v for k, v in pairs.items()) + b"u"


def pickle_of(obj_ops: bytes) -> bytes:
    return b"\x80\x03" + obj_ops + b"."


def legacy_storage(payload: bytes, numel: int, storage_type: str = "FloatStorage", count: int | None = None) -> bytes:
    """torch's legacy torch.save of one storage: magic, protocol, system info, the persistent id of the storage,
    the key list, then the element count and the raw bytes."""
    info = op_dict({"protocol_version": op_int(1001), "little_endian": b"\x88"})
    pid = op_tuple(
        [op_str("storage"), op_global("torch", storage_type), op_str("0"), op_str("cpu"), op_int(numel), b"N"]
    )
    return (
        b"\x80\x02" + op_int(0x1950A86A20F9469CFC6C) + b"."
        + b"\x80\x02" + op_int(1001) + b"."
        + b"\x80\x02" + info + b"."
        + b"\x80\x02" + pid + b"Q."
        + b"\x80\x02" + op_list([op_str("0")]) + b"."
        + struct.pack("<q", numel if count is None else count) + payload
    )  # fmt: skip


def zip_storage(numel: int, compress: int = zipfile.ZIP_DEFLATED, data_size: int | None = None) -> bytes:
    """A zip torch.save of one float storage whose data entry holds ``numel`` zeros, written in chunks."""
    buf = io.BytesIO()
    pid = op_tuple([op_str("storage"), op_global("torch", "FloatStorage"), op_str("0"), op_str("cpu"), op_int(numel)])
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + pid + b"Q.")
        archive.writestr("archive/byteorder", b"little")
        entry = zipfile.ZipInfo("archive/data/0")
        entry.compress_type = compress
        nbytes = numel * 4 if data_size is None else data_size
        with archive.open(entry, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for start in range(0, nbytes, len(chunk)):
                f.write(chunk[: min(len(chunk), nbytes - start)])
        archive.writestr("archive/version", b"3\n")
    return buf.getvalue()


def storage_ops(storage: bytes) -> bytes:
    """``torch.storage._load_from_bytes(storage)``, as pickling a storage writes it."""
    return op_global("torch.storage", "_load_from_bytes") + op_bytes(storage) + b"\x85R"


def tensor_ops(storage: bytes, offset: int, size, stride, storage_expr: bytes | None = None) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride, False, OrderedDict())``, as pickling a
    tensor writes it; ``storage_expr`` replaces ``_load_from_bytes(storage)`` (e.g. a memo get)."""
    return (
        op_global("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + (storage_ops(storage) if storage_expr is None else storage_expr)
        + op_int(offset) + op_tuple(map(op_int, size)) + op_tuple(map(op_int, stride))
        + b"\x89" + op_global("collections", "OrderedDict") + b")R"
        + b"tR"
    )  # fmt: skip


def float_bytes(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def poda_file(mu_ops: bytes, std_ops: bytes) -> bytes:
    return pickle_of(op_dict({"mu_f1": mu_ops, "std_f1": std_ops}))


def famix_file(mu_ops: bytes, std_ops: bytes) -> bytes:
    return pickle_of(op_dict({"road_mu": op_list([mu_ops]), "road_std": op_list([std_ops])}))


C = 4
GOOD = tensor_ops(legacy_storage(float_bytes([0.5, 1.0, 1.5, 2.0]), C), 0, (C, 1, 1), (1, 1, 1))


def test_hand_written_pickles_are_what_torch_writes(tmp_path):
    """The crafting helpers write genuine tensor pickles: plain pickle.load reads them to the same tensors."""
    data = poda_file(GOOD, GOOD)
    expected = pickle.loads(data)
    assert torch.equal(expected["mu_f1"], torch.tensor([0.5, 1.0, 1.5, 2.0]).view(C, 1, 1))
    path = tmp_path / "a.pkl"
    path.write_bytes(data)
    stats = poda.load_stats(path)
    assert torch.equal(stats["mu_f1"], expected["mu_f1"]) and stats["mu_f1"].stride() == (1, 1, 1)
    (tmp_path / "f.pkl").write_bytes(famix_file(GOOD, GOOD))
    assert torch.equal(StyleBank.from_famix_pickle(tmp_path / "f.pkl").mean, expected["mu_f1"].view(1, C))
    # a tensor over an offset part of a storage, with a transposed stride
    t = torch.arange(12.0).view(3, 4).t()[1:]
    ops = tensor_ops(legacy_storage(float_bytes(torch.arange(12.0).tolist()), 12), 1, (3, 3), (1, 4))
    (tmp_path / "t.pkl").write_bytes(pickle_of(op_dict({"mu_f1": ops, "std_f1": GOOD})))
    assert torch.equal(pickle.loads((tmp_path / "t.pkl").read_bytes())["mu_f1"], t)
    assert torch.equal(poda.load_stats(tmp_path / "t.pkl")["mu_f1"], t)


def zero_stride(n: int) -> bytes:
    """A storage of one float viewed as ``(n, 1, 1)`` with stride 0: a few hundred bytes declaring n elements."""
    return tensor_ops(legacy_storage(float_bytes([1.0]), 1), 0, (n, 1, 1), (0, 0, 0))


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run in a fresh interpreter: for each (loader, file), the exception (or "ok") and the peak RSS growth in MiB.
_PROBE = textwrap.dedent(
    """
    import json, resource, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    from styleda_fast import StyleBank
    from styleda_fast.compat import famix, poda

    LOADERS = {
        "load_stats": poda.load_stats,
        "load_saved_params": famix.load_saved_params,
        "from_poda_dir": StyleBank.from_poda_dir,
        "from_famix_pickle": StyleBank.from_famix_pickle,
        "load": StyleBank.load,
    }
    warmup = json.loads(sys.argv[1])
    for name, path in warmup:  # the loaders' own code paths, once, on small valid files
        LOADERS[name](path)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = []
    for name, path in json.loads(sys.argv[2]):
        try:
            LOADERS[name](path)
            outcome = "ok"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"[:600]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        out.append([name, path, outcome, grown])
    print(json.dumps(out))
    """
)


def probe(tmp_path, cases, timeout=300):
    """Load each (loader, path) in one fresh process; returns [(loader, path, outcome, MiB grown)]."""
    good = tmp_path / "good"
    good.mkdir(exist_ok=True)
    (good / "a.pkl").write_bytes(poda_file(GOOD, GOOD))
    (tmp_path / "good_famix.pkl").write_bytes(famix_file(GOOD, GOOD))
    bank = StyleBank(C, num_classes=0)
    bank.add(torch.zeros(1, C), torch.ones(1, C), bank.fallback)
    bank.save(tmp_path / "good.safetensors")
    warmup = [
        ["load_stats", str(good / "a.pkl")],
        ["load_saved_params", str(tmp_path / "good_famix.pkl")],
        ["from_poda_dir", str(good)],
        ["from_famix_pickle", str(tmp_path / "good_famix.pkl")],
        ["load", str(tmp_path / "good.safetensors")],
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)  # this checkout's styleda_fast
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(warmup), json.dumps([[n, str(p)] for n, p in cases])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def every_loader(tmp_path, tag: str, tensor: bytes):
    """The same bad tensor in a PODA file, a PODA folder and a FAMix file, for all four pickle loaders."""
    poda_path = write(tmp_path / tag / "x.pkl", poda_file(tensor, GOOD))
    famix_path = write(tmp_path / f"{tag}_famix.pkl", famix_file(tensor, GOOD))
    return [
        ("load_stats", poda_path),
        ("from_poda_dir", poda_path.parent),
        ("load_saved_params", famix_path),
        ("from_famix_pickle", famix_path),
    ]


LIMIT_MIB = 48  # peak RSS growth allowed for any refused file


def test_declared_sizes_cannot_allocate(tmp_path):
    """A 1.7 KB zero-stride tensor declaring (1e8, 1, 1) (or 1e10), and a ~130 KB pickle whose storage is a
    DEFLATE-compressed torch.save archive of 128 MB: every loader refuses them with a ValueError naming the file,
    and peak memory stays small."""
    cases = every_loader(tmp_path, "zs8", zero_stride(10**8)) + every_loader(tmp_path, "zs10", zero_stride(10**10))
    bomb = tensor_ops(zip_storage(32 * 2**20), 0, (C, 1, 1), (1, 1, 1))
    assert len(bomb) < 200_000
    cases += every_loader(tmp_path, "zip", bomb)
    # a legacy storage whose persistent id declares 2**33 floats in a few bytes
    huge_storage = tensor_ops(legacy_storage(float_bytes([1.0]), 2**33, count=1), 0, (C, 1, 1), (1, 1, 1))
    cases += every_loader(tmp_path, "legacy", huge_storage)
    results = probe(tmp_path, cases)
    for name, path, outcome, grown in results:
        assert outcome.startswith(("ValueError", "MalformedFileError")), (name, path, outcome)
        assert os.path.basename(path.rstrip("/")) in outcome, (name, outcome)
        assert grown < LIMIT_MIB, f"{name} on {path} grew peak memory by {grown:.0f} MiB ({outcome})"
    assert all("storage holds only 1 element" in o for n, p, o, g in results if "zs" in p), (
        "the zero-stride files must be refused for their declared size"
    )
    assert all("compressed" in o for n, p, o, g in results if "zip" in p)


def test_many_views_of_one_storage_are_charged(tmp_path):
    """One 256 KB storage referenced by 8000 tensors (a 1.1 MB pickle) would stack into 2 GB: the views count
    against max_bytes, and so does the bank the loaders stack."""
    storage = legacy_storage(bytes(2**18), 2**16)
    shape, stride = (2**16, 1, 1), (1, 1, 1)
    first = tensor_ops(b"", 0, shape, stride, storage_expr=storage_ops(storage) + b"q\x00")  # memoized as 0
    again = tensor_ops(b"", 0, shape, stride, storage_expr=b"h\x00")  # the same storage, from the memo
    data = pickle_of(op_dict({"road_mu": op_list([first] + [again] * 3999), "road_std": op_list([again] * 4000)}))
    assert len(data) < 1_500_000
    path = write(tmp_path / "views.pkl", data)
    with pytest.raises(ValueError, match=r"views\.pkl.*max_bytes"):
        famix.load_saved_params(path, max_bytes=64 * 2**20)
    # the same tensor object repeated in a list: nothing decoded twice, but the stacked bank is bounded
    refs = op_list([b"h\x01"] * 4000)  # BINGET 1, 4000 times
    repeated = pickle_of(op_dict({"road_mu": first + b"q\x01" + b"0" + refs, "road_std": refs}))
    path = write(tmp_path / "repeated.pkl", repeated)
    assert len(famix.load_saved_params(path)["road_mu"]) == 4000  # the dict itself is small
    with pytest.raises(ValueError, match=r"repeated\.pkl.*max_bytes"):
        StyleBank.from_famix_pickle(path, max_bytes=64 * 2**20)


@pytest.mark.parametrize(
    ("offset", "size", "stride", "message"),
    [
        (0, (C + 1, 1, 1), (1, 1, 1), "storage holds only"),  # more elements than the storage
        (1, (C, 1, 1), (1, 1, 1), "reaches past the end"),  # shifted past the end
        (0, (2, 2, 1), (3, 1, 1), "reaches past the end"),  # strided past the end
        (9, (0, 1, 1), (1, 1, 1), "reaches past the end"),  # an empty tensor beyond the storage
        (0, (-1, 1, 1), (1, 1, 1), "size"),  # a negative size
        (0, (C, 1, 1), (-1, 1, 1), "stride"),  # a negative stride
        (-1, (C, 1, 1), (1, 1, 1), "offset"),  # a negative offset
        (0, (C, 1), (1, 1, 1), "equal-length"),  # size and stride of different lengths
        (0, (2**70, 1, 1), (1, 1, 1), "size"),  # an int too large for torch
        (0, (1,) * 65, (1,) * 65, "dimensions"),  # too many dimensions
    ],
)
def test_malformed_sizes_strides_offsets(tmp_path, offset, size, stride, message):
    tensor = tensor_ops(legacy_storage(float_bytes([1.0] * C), C), offset, size, stride)
    for name, path in every_loader(tmp_path, "bad", tensor):
        loader = {
            "load_stats": poda.load_stats,
            "from_poda_dir": StyleBank.from_poda_dir,
            "load_saved_params": famix.load_saved_params,
            "from_famix_pickle": StyleBank.from_famix_pickle,
        }[name]
        with pytest.raises(ValueError, match=message) as info:
            loader(path)
        assert "x.pkl" in str(info.value) or "bad_famix.pkl" in str(info.value), (name, info.value)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (legacy_storage(float_bytes([1.0] * C), C + 1), "declares"),  # fewer bytes than declared
        (legacy_storage(float_bytes([1.0] * C), C, count=C + 1), "element count"),
        (legacy_storage(float_bytes([1.0] * C) + b"xx", C), "follow"),  # trailing bytes
        (legacy_storage(float_bytes([1.0] * C), C, storage_type="ComplexFloatStorage"), "asks for torch"),
        (legacy_storage(float_bytes([1.0] * C), C)[:30], "storage"),  # truncated inside the preamble
        (zip_storage(C, compress=zipfile.ZIP_STORED, data_size=C * 4 + 4), "size"),
        (b"PK\x03\x04" + bytes(40), "storage"),
    ],
)
def test_malformed_storages(tmp_path, storage, message):
    path = write(tmp_path / "s.pkl", poda_file(tensor_ops(storage, 0, (1,), (1,)), GOOD))
    with pytest.raises(ValueError, match=message) as info:
        poda.load_stats(path)
    assert "s.pkl" in str(info.value)


def test_a_stored_zip_storage_is_read(tmp_path):
    """An uncompressed zip archive (the layout torch.save writes) within the budget is read."""
    storage = zip_storage(C, compress=zipfile.ZIP_STORED)
    path = write(tmp_path / "z.pkl", poda_file(tensor_ops(storage, 0, (C, 1, 1), (1, 1, 1)), GOOD))
    assert torch.equal(poda.load_stats(path)["mu_f1"], torch.zeros(C, 1, 1))


def test_max_bytes_bounds_every_loader(tmp_path):
    gen = torch.Generator().manual_seed(0)
    styles = {"mu_f1": torch.randn(256, 1, 1, generator=gen), "std_f1": torch.rand(256, 1, 1, generator=gen)}
    folder = tmp_path / "poda"
    folder.mkdir()
    for i in range(4):
        with open(folder / f"{i}.pkl", "wb") as f:
            pickle.dump(styles, f)
    famix_path = tmp_path / "famix.pkl"
    with open(famix_path, "wb") as f:
        pickle.dump({"road_mu": [styles["mu_f1"]] * 3, "road_std": [styles["std_f1"]] * 3}, f)
    bank = StyleBank.from_poda_dir(folder)
    bank.save(tmp_path / "bank.safetensors")
    calls = [
        (poda.load_stats, folder / "0.pkl"),
        (famix.load_saved_params, famix_path),
        (StyleBank.from_poda_dir, folder),
        (StyleBank.from_famix_pickle, famix_path),
        (StyleBank.load, tmp_path / "bank.safetensors"),
    ]
    for loader, path in calls:
        loader(path, max_bytes=2**20)  # plenty
        with pytest.raises(ValueError, match=r"max_bytes = 1000 .*pass a larger max_bytes") as info:
            loader(path, max_bytes=1000)
        assert os.path.basename(path) in str(info.value)
        with pytest.raises(TypeError, match="max_bytes"):
            loader(path, max_bytes=1.5)
        with pytest.raises(ValueError, match="max_bytes"):
            loader(path, max_bytes=0)
    # the folder shares one budget: each file fits, the four together do not
    with pytest.raises(ValueError, match="max_bytes"):
        StyleBank.from_poda_dir(folder, max_bytes=5000)


def safetensors_file(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def test_safetensors_declared_sizes_are_checked_before_loading(tmp_path):
    meta = {"format": "styleda_fast.StyleBank", "format_version": "1", "bank": json.dumps(
        {"channels": 2, "num_classes": 0, "fallback": 255, "class_names": []})}  # fmt: skip
    entries = {
        "mean": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "std": {"dtype": "F32", "shape": [1, 2], "data_offsets": [8, 16]},
        "class_ids": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]},
        "__metadata__": meta,
    }
    data = float_bytes([0, 0, 1, 1]) + struct.pack("<q", 255)
    good = write(tmp_path / "good.safetensors", safetensors_file(entries, data))
    assert StyleBank.load(good, verify=False).mean.shape == (1, 2)
    huge = json.loads(json.dumps(entries))
    huge["mean"] = {"dtype": "F32", "shape": [10**9, 2], "data_offsets": [0, 8 * 10**9]}
    cases = {
        "huge": (huge, data, "declares"),
        "short header": (entries, b"", "declares"),
    }
    for tag, (header, payload, message) in cases.items():
        path = write(tmp_path / f"{tag}.safetensors", safetensors_file(header, payload))
        with pytest.raises(ValueError, match=message) as info:
            StyleBank.load(path)
        assert tag in str(info.value)
    lying = write(tmp_path / "lying.safetensors", struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ValueError, match="lying.*header"):
        StyleBank.load(lying)
    deep = write(tmp_path / "deep.safetensors", struct.pack("<Q", 100_000) + b"[" * 100_000)
    with pytest.raises(ValueError, match="deep"):
        StyleBank.load(deep)
