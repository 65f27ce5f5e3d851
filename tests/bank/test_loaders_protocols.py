"""Pickles of every protocol load (protocols 0-2 write bytes as ``_codecs.encode(text, 'latin1')``), and that one
allowance runs nothing else: other uses of ``_codecs`` or builtins are still refused."""

from __future__ import annotations

import os
import pickle
import struct

import pytest
import torch

from styleda_fast import StyleBank
from styleda_fast.bank.style_bank import UnsafePickleError, safe_unpickle
from styleda_fast.compat import famix, poda

C = 6


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_loads(tmp_path, protocol):
    gen = torch.Generator().manual_seed(protocol)
    stats = {"mu_f1": torch.randn(C, 1, 1, generator=gen), "std_f1": torch.rand(C, 1, 1, generator=gen)}
    folder = tmp_path / "poda"
    folder.mkdir()
    with open(folder / "a.pkl", "wb") as f:
        pickle.dump(stats, f, protocol=protocol)
    loaded = poda.load_stats(folder / "a.pkl")
    assert set(loaded) == set(stats)
    assert all(torch.equal(loaded[k], stats[k]) for k in stats)
    bank = StyleBank.from_poda_dir(folder)
    assert torch.equal(bank.mean[0], stats["mu_f1"].flatten()) and torch.equal(bank.std[0], stats["std_f1"].flatten())

    params = {
        "road_mu": [torch.randn(C, 1, 1, generator=gen).double() for _ in range(3)],
        "road_std": [torch.rand(C, 1, 1, generator=gen).double() for _ in range(3)],
        "255_mu": [torch.randn(C, 1, 1, generator=gen)],
        "255_std": [torch.rand(C, 1, 1, generator=gen)],
    }
    with open(tmp_path / "saved_params.pkl", "wb") as f:
        pickle.dump(params, f, protocol=protocol)
    loaded = famix.load_saved_params(tmp_path / "saved_params.pkl")
    assert set(loaded) == set(params)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for k in params for a, b in zip(loaded[k], params[k]))
    bank = StyleBank.from_famix_pickle(tmp_path / "saved_params.pkl")
    assert bank.class_counts()["road"] == 3 and bank.class_counts()["255"] == 1
    assert torch.equal(bank.mean[:3], torch.stack([t.flatten().float() for t in params["road_mu"]]))
    # parameters and shared storages (views) come back as pickle.load gives them
    base = torch.randn(4, C, generator=gen)
    shared = {"mu_f1": base[1], "std_f1": base[2].abs(), "p": torch.nn.Parameter(torch.randn(3, generator=gen))}
    with open(tmp_path / "shared.pkl", "wb") as f:
        pickle.dump(shared, f, protocol=protocol)
    loaded = safe_unpickle(tmp_path / "shared.pkl")
    assert torch.equal(loaded["mu_f1"], base[1]) and torch.equal(loaded["std_f1"], base[2].abs())
    assert isinstance(loaded["p"], torch.nn.Parameter) and loaded["p"].requires_grad
    assert torch.equal(loaded["p"].detach(), shared["p"].detach())


def op_str(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def call(module: str, name: str, *args: bytes) -> bytes:
    """``module.name(*args)`` as pickle opcodes (GLOBAL, MARK, args, TUPLE, REDUCE)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(" + b"".join(args) + b"tR"


def as_file(tmp_path, body: bytes):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02" + body + b".")
    return path


@pytest.mark.parametrize(
    "body",
    [
        call("_codecs", "encode", op_str("abc"), op_str("utf-8")),  # another codec
        call("_codecs", "encode", op_str("abc"), op_str("rot13")),
        call("_codecs", "encode", op_str("abc"), op_str("zlib")),
        call("_codecs", "encode", b"C\x03abc", op_str("latin1")),  # bytes, not str
        call("_codecs", "encode", op_str("abc"), op_str("latin1"), op_str("strict")),  # three arguments
        call("_codecs", "encode", op_str("abc")),  # one argument
        call("_codecs", "decode", op_str("abc"), op_str("latin1")),
        call("_codecs", "lookup", op_str("latin1")),
        call("codecs", "encode", op_str("abc"), op_str("latin1")),
        call("builtins", "eval", op_str("1+1")),
        call("__builtin__", "eval", op_str("1+1")),  # the protocol 0-2 spelling
        call("builtins", "bytes", op_str("abc"), op_str("latin1")),
        call("__builtin__", "bytes"),  # how protocols 0-2 write b""
        call("builtins", "getattr", op_str("x"), op_str("y")),
        call("os", "system", op_str("true")),
        # encode's result fed to anything but a storage is fine as bytes; a REDUCE on it is not
        call("_codecs", "encode", op_str("abc"), op_str("latin1")) + b"(tR",
    ],
)
def test_other_codecs_and_builtins_are_refused(tmp_path, body):
    path = as_file(tmp_path, body)
    with pytest.raises(UnsafePickleError) as info:
        safe_unpickle(path)
    assert "evil.pkl" in str(info.value)
    for loader in (poda.load_stats, famix.load_saved_params, StyleBank.from_famix_pickle):
        with pytest.raises(UnsafePickleError):
            loader(path)


def test_latin1_bytes_come_back_as_bytes(tmp_path):
    """The one call allowed is exactly the bytes constructor protocols 0-2 rely on."""
    text = "".join(map(chr, range(256)))
    path = as_file(tmp_path, call("_codecs", "encode", op_str(text), op_str("latin1")))
    assert safe_unpickle(path) == bytes(range(256))
    with open(tmp_path / "b.pkl", "wb") as f:
        pickle.dump({"raw": bytes(range(256)), "n": [1, 2.5, "s"]}, f, protocol=2)
    assert safe_unpickle(tmp_path / "b.pkl") == {"raw": bytes(range(256)), "n": [1, 2.5, "s"]}
    path = as_file(tmp_path, call("_codecs", "encode", op_str("\u0100"), op_str("latin1")))  # not latin-1
    with pytest.raises(ValueError, match="not a readable style pickle"):
        safe_unpickle(path)


@pytest.mark.parametrize(
    ("opcode", "name"),
    [
        (b"ccollections\nOrderedDict\n)\x81", "NEWOBJ"),  # cls.__new__(cls) on an allowed class
        (b"ccollections\nOrderedDict\n)R}b", "BUILD"),  # state set on an object (a tensor: set_ any view)
        (b"(ccollections\nOrderedDict\no", "OBJ"),
        (b"(icollections\nOrderedDict\n", "INST"),
        (b"\x82\x01", "EXT1"),
    ],
)
def test_object_building_opcodes_are_refused(tmp_path, opcode, name):
    path = tmp_path / "op.pkl"
    path.write_bytes(b"\x80\x02" + opcode + b".")
    with pytest.raises(UnsafePickleError, match=name):
        safe_unpickle(path)


def test_container_opcodes_only_fill_containers(tmp_path):
    """SETITEMS on a tensor would write into it, ADDITEMS on a tensor would call Tensor.add: both refused."""
    with open(tmp_path / "t.pkl", "wb") as f:
        pickle.dump(torch.ones(3), f, protocol=4)
    tensor = (tmp_path / "t.pkl").read_bytes()[:-1]  # without STOP
    for tail, name in ((b"(K\x00K\x05u.", "SETITEMS"), (b"(K\x05\x90.", "ADDITEMS"), (b"K\x05a.", "APPEND")):
        (tmp_path / "x.pkl").write_bytes(tensor + tail)
        with pytest.raises(UnsafePickleError, match=name):
            safe_unpickle(tmp_path / "x.pkl")
    assert not os.path.exists(tmp_path / "pwned")
