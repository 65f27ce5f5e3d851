"""Reading untrusted style files with bounded memory and without running code from them.

PODA and FAMix keep their styles in plain pickles of tensors. Unpickling runs whatever the file asks for, and even a
pickle restricted to tensors can declare shapes, strides and storages far larger than the file. This module reads
such pickles with a pure-Python unpickler that

* rebuilds only dicts, lists, tuples, numbers, strings, bytes and tensors (anything else: :class:`UnsafePickleError`);
* decodes every tensor storage itself (torch's legacy storage bytes, or an uncompressed ``torch.save`` zip), checking
  that what a storage declares fits in the bytes actually present before allocating it;
* checks each tensor's size, stride and offset (every element must lie in its storage, and a tensor may not have
  more elements than its storage) and charges what it decodes to a budget, ``max_bytes``.

Everything a file declares is checked before memory is allocated for it, so a small file cannot make a loader use
much more memory than the file's own size (the loaders also bound what they stack, see :class:`Budget`).
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct
import zipfile
from collections import OrderedDict

import torch
from torch import Tensor

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB

# torch's legacy serialization (what pickling a tensor embeds for each storage)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_DIMS = 64  # torch's own limit on tensor dimensions
_MAX_INT = 1 << 62  # bigger sizes, strides or offsets are malformed whatever the storage

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
}


class UnsafePickleError(ValueError):
    """A pickle asked to rebuild something other than tensors and plain containers."""


class FileBudgetError(ValueError):
    """A file declares more data than the loader's ``max_bytes`` allows."""


class MalformedFileError(ValueError):
    """A file's contents are inconsistent (sizes, strides, offsets, storages)."""


def short(value, limit: int = 60) -> str:
    """A bounded description of an untrusted value for error messages (no huge reprs, no deep recursion)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"<an int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])
        return text if len(value) <= limit else f"{text}... ({len(value)} long)"
    if isinstance(value, (tuple, list)) and len(value) <= 8 and all(type(v) is int for v in value):
        return repr(tuple(short(v) for v in value)).replace("'", "")
    return f"<{type(value).__name__}>"


def plain(name) -> str:
    """A module or attribute name from a pickle, unquoted but bounded and printable."""
    if not isinstance(name, str):
        return short(name)
    text = name[:80].encode("ascii", "backslashreplace").decode("ascii")
    return text if len(name) <= 80 else text + "..."


# ---------------------------------------------------------------------------------------------- arguments, budget


def check_max_bytes(max_bytes) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int (a number of bytes), got {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    return max_bytes


def check_path(path, name: str = "path") -> str | bytes:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


class Budget:
    """The bytes one load may decode (storages, tensors, byte strings), against ``max_bytes``.

    A loader shares one budget across the files it reads (``StyleBank.from_poda_dir``: the whole folder).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = check_max_bytes(max_bytes)
        self.used = 0

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_bytes - self.used:
            total = short(self.used + nbytes)
            raise FileBudgetError(
                f"{what} would bring the data decoded so far to {total} bytes, more than max_bytes = "
                f"{self.max_bytes} ({self.max_bytes / 2**30:.3g} GiB); if you trust this file, pass a larger "
                "max_bytes= to the loader"
            )
        self.used += nbytes

    def check_size(self, nbytes: int, what: str) -> None:
        """A one-off allocation (the file itself, a stacked bank) may not exceed ``max_bytes`` either."""
        if nbytes > self.max_bytes:
            raise FileBudgetError(
                f"{what} is {short(nbytes)} bytes, more than max_bytes = {self.max_bytes} "
                f"({self.max_bytes / 2**30:.3g} GiB); if you trust this file, pass a larger max_bytes= to the loader"
            )


# ---------------------------------------------------------------------------------------------- regular files


class NotRegularFileError(ValueError):
    """The path is a FIFO, a directory, a device or a socket: loaders read regular files only."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def file_kind(path) -> str | None:
    """``None`` for a regular file (symbolic links followed), else what it is (for skip warnings)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc.strerror})"
    return None if stat.S_ISREG(mode) else _kind(mode)


def open_regular(path, budget: Budget | None = None) -> tuple[int, int]:
    """Open ``path`` for reading without blocking (a FIFO would wait for a writer), check it is a regular file (and,
    with ``budget``, that its size fits). Returns ``(fd, size)``; ``FileNotFoundError`` (an ``OSError``) if missing,
    :class:`NotRegularFileError` if not a regular file, the budget's ``ValueError`` if too large."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(f"{path!r} is {_kind(info.st_mode)}, not a regular file; refusing to read it")
        if budget is not None:
            budget.check_size(info.st_size, f"the file {path!r}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_fd(fd: int, size: int, path) -> bytes:
    """Read exactly ``size`` bytes from ``fd`` (closed afterwards); ``ValueError`` if the file changed meanwhile."""
    with open(fd, "rb", buffering=0, closefd=True) as f:
        chunks, got = [], 0
        while got < size:
            chunk = f.read(min(size - got, 1 << 26))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got != size or f.read(1):
            raise ValueError(f"{path!r} changed size while it was read")
    return b"".join(chunks)


def read_regular_file(path, budget: Budget) -> bytes:
    fd, size = open_regular(path, budget)
    return read_fd(fd, size, path)


# ---------------------------------------------------------------------------------------------- the unpickler


class _Storage:
    """A tensor storage decoded from the file: its elements as a flat tensor (never handed to the caller)."""

    __slots__ = ("flat", "used")

    def __init__(self, flat: Tensor) -> None:
        self.flat = flat
        self.used = False  # the first tensor over a storage costs nothing more; later views are charged


class _StorageRef:
    """A storage named by a persistent id inside a storage's own bytes, before its data are read."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel


class _StorageType:
    """Stands for ``torch.FloatStorage`` & co. inside a storage's bytes (not callable, not a class)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _is_int(value) -> bool:
    return type(value) is int


def _refuse_opcode(name: str):
    def refuse(self):
        raise UnsafePickleError(f"the pickle uses the {name} opcode, which tensors and plain containers never need")

    return refuse


class _Unpickler(pickle._Unpickler):
    """Pure-Python unpickling (no C-level memo or read-size pitfalls) from an in-memory file, with a restricted
    instruction set: object construction (BUILD, INST, OBJ, NEWOBJ), extension codes and out-of-band buffers are
    refused; REDUCE may only call the functions this class hands out; container opcodes only fill containers."""

    dispatch = dict(pickle._Unpickler.dispatch)
    for _op, _name in (
        (pickle.BUILD, "BUILD"),
        (pickle.INST, "INST"),
        (pickle.OBJ, "OBJ"),
        (pickle.NEWOBJ, "NEWOBJ"),
        (pickle.NEWOBJ_EX, "NEWOBJ_EX"),
        (pickle.EXT1, "EXT1"),
        (pickle.EXT2, "EXT2"),
        (pickle.EXT4, "EXT4"),
        (pickle.NEXT_BUFFER, "NEXT_BUFFER"),
        (pickle.READONLY_BUFFER, "READONLY_BUFFER"),
    ):
        dispatch[_op[0]] = _refuse_opcode(_name)
    del _op, _name

    def __init__(self, file, allowed: dict) -> None:
        super().__init__(file)
        self._allowed = allowed  # (module, name) -> object; REDUCE may call only these
        self._callables = [obj for obj in allowed.values() if callable(obj)]

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"the pickle asks for {plain(module)}.{plain(name)}, which is not a tensor or a plain container; "
                "refusing to load it (only tensors and dicts/lists of them are read from style pickles)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids (a torch.save zip?); refusing to load it")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in self._callables):
            raise UnsafePickleError(f"the pickle calls a {type(func).__name__}, which is not an allowed function")
        if type(args) is not tuple:
            raise MalformedFileError("REDUCE needs a tuple of arguments")
        self.stack[-1] = func(*args)

    def _target(self, kinds: tuple[type, ...], op: str, below: int = 1):
        target = self.stack[-below] if len(self.stack) >= below else None
        if type(target) not in kinds:
            raise UnsafePickleError(f"{op} on a {type(target).__name__}; it may only fill a plain container")
        return target

    def load_append(self):
        self._target((list,), "APPEND", 2)
        value = self.stack.pop()
        self.stack[-1].append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    def load_setitem(self):
        self._target((dict, OrderedDict), "SETITEM", 3)
        value = self.stack.pop()
        key = self.stack.pop()
        self.stack[-1][key] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target((dict, OrderedDict), "SETITEMS")
        if len(items) % 2:
            raise MalformedFileError("SETITEMS needs key/value pairs")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


class _StorageUnpickler(_Unpickler):
    """The pickle inside a storage's bytes: one persistent id ``('storage', torch.<T>Storage, key, location, numel
    [, view_metadata])``, nothing else."""

    _TYPES = {("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()} | {
        ("torch", "UntypedStorage"): _StorageType(torch.uint8),
        ("torch.storage", "UntypedStorage"): _StorageType(torch.uint8),
    }

    def __init__(self, file, data_size: int) -> None:
        super().__init__(file, self._TYPES)
        self._data_size = data_size
        self.refs: list[_StorageRef] = []

    def persistent_load(self, pid):
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise MalformedFileError(f"unexpected persistent id {short(pid)} in a storage")
        storage_type, key, location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise MalformedFileError("storage views (view_metadata) are not supported")
        if not isinstance(storage_type, _StorageType) or type(key) is not str or type(location) is not str:
            raise MalformedFileError("a storage's persistent id must name a storage type, a key and a location")
        if not _is_int(numel) or numel < 0:
            raise MalformedFileError(f"a storage declares {short(numel)} elements")
        nbytes = numel * storage_type.dtype.itemsize
        if nbytes > self._data_size:  # checked before anything is allocated for it
            raise MalformedFileError(
                f"a storage declares {short(numel)} elements ({short(nbytes)} bytes) but its data are only "
                f"{self._data_size} bytes long"
            )
        if self.refs:
            raise MalformedFileError("a storage's bytes must hold exactly one storage")
        ref = _StorageRef(storage_type.dtype, key, numel)
        self.refs.append(ref)
        return ref


def _plain_load(f):
    return _Unpickler(f, {}).load()


def _flat(raw: bytes | bytearray, dtype: torch.dtype) -> Tensor:
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


def _read_legacy_storage(data: bytes, budget: Budget) -> Tensor:
    """torch's legacy ``torch.save`` of one storage: magic, protocol, system info, the storage's persistent id, the
    list of storage keys, then the storage's element count (int64) and its raw little-endian bytes."""
    f = io.BytesIO(data)
    if _plain_load(f) != _LEGACY_MAGIC or _plain_load(f) != _LEGACY_PROTOCOL:
        raise MalformedFileError("a storage's bytes are not a torch.save of a storage")
    if not isinstance(_plain_load(f), dict):
        raise MalformedFileError("a storage's bytes lack torch.save's system information")
    unpickler = _StorageUnpickler(f, len(data))
    root = unpickler.load()
    if not isinstance(root, _StorageRef):
        raise MalformedFileError(f"a storage's bytes hold a {type(root).__name__}, not a storage")
    if _plain_load(f) != [root.key]:
        raise MalformedFileError("a storage's bytes list other storages than the one they hold")
    header = f.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != root.numel:
        raise MalformedFileError("a storage's element count does not match its declaration")
    nbytes = root.numel * root.dtype.itemsize
    start = f.tell()
    if start + nbytes != len(data):
        raise MalformedFileError(
            f"a storage declares {nbytes} bytes of data but {len(data) - start} follow (truncated or padded)"
        )
    budget.charge(nbytes, f"a storage of {nbytes} bytes")
    return _flat(data[start:], root.dtype)


def _read_zip_storage(data: bytes, budget: Budget) -> Tensor:
    """A zip ``torch.save`` of one storage (``<dir>/data.pkl`` naming ``<dir>/data/<key>``). torch never compresses
    its archives, so compressed entries are refused; the declared entry sizes are checked before anything is read."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = archive.infolist()
    if len(infos) > 64:
        raise MalformedFileError(f"a storage's zip archive has {len(infos)} entries")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise MalformedFileError(
                f"a storage's zip archive has a compressed entry {short(info.filename)} "
                f"(declared {short(info.file_size)} bytes uncompressed); torch.save never compresses, refusing it"
            )
    declared = sum(info.file_size for info in infos)
    if declared > len(data) or any(info.compress_size != info.file_size for info in infos):
        raise MalformedFileError(
            f"a storage's zip archive declares {short(declared)} bytes of entries in {len(data)} bytes"
        )
    budget.charge(declared, f"a storage's zip archive of {declared} bytes")
    pkl = [info for info in infos if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1]
    if len(pkl) != 1:
        raise MalformedFileError("a storage's zip archive has no single <dir>/data.pkl")
    prefix = pkl[0].filename[: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder) != b"little":
        raise MalformedFileError("big-endian torch.save archives are not supported")
    unpickler = _StorageUnpickler(io.BytesIO(archive.read(pkl[0])), len(data))
    root = unpickler.load()
    if not isinstance(root, _StorageRef):
        raise MalformedFileError(f"a storage's zip archive holds a {type(root).__name__}, not a storage")
    try:
        info = archive.getinfo(f"{prefix}data/{root.key}")
    except KeyError:
        raise MalformedFileError(f"a storage's zip archive lacks the data of storage {short(root.key)}") from None
    if info.file_size != root.numel * root.dtype.itemsize:
        raise MalformedFileError("a storage's data entry does not match its declared size")
    return _flat(archive.read(info), root.dtype)


class _TensorUnpickler(_Unpickler):
    """Rebuilds dicts, lists, numbers, strings and torch tensors (as ``pickle.dump`` of a tensor writes them);
    refuses every other global. Every storage and tensor is checked and charged to ``budget``."""

    def __init__(self, file, budget: Budget) -> None:
        self.budget = budget
        super().__init__(
            file,
            {
                ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
                ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
                ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
                ("torch.storage", "_load_from_bytes"): self._load_from_bytes,
                ("collections", "OrderedDict"): OrderedDict,
                ("_codecs", "encode"): self._latin1_bytes,
            },
        )

    def _latin1_bytes(self, *args):
        """Protocols 0-2 write a bytes object as ``_codecs.encode(text, 'latin1')``; that exact call only."""
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise UnsafePickleError(
                "the pickle calls _codecs.encode other than as encode(str, 'latin1') (how protocols 0-2 write "
                "bytes); refusing to load it"
            )
        self.budget.charge(len(args[0]), f"a byte string of {len(args[0])} bytes")
        return args[0].encode("latin-1")

    def _load_from_bytes(self, data):
        if type(data) is not bytes:
            raise UnsafePickleError("a storage must be rebuilt from bytes")
        try:
            if data[:4] == b"PK\x03\x04":
                flat = _read_zip_storage(data, self.budget)
            else:
                flat = _read_legacy_storage(data, self.budget)
        except FileBudgetError:
            raise
        except MalformedFileError as exc:
            raise MalformedFileError(f"a tensor storage in the pickle is invalid: {exc}") from None
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"a tensor storage in the pickle could not be read safely: {exc}") from None
        except Exception as exc:  # noqa: BLE001 (anything else the storage's bytes can provoke)
            raise MalformedFileError(
                f"a tensor storage in the pickle is unreadable: {type(exc).__name__}: {short(str(exc), 120)}"
            ) from None
        return _Storage(flat)

    def _rebuild_tensor(self, storage, storage_offset, size, stride) -> Tensor:
        if not isinstance(storage, _Storage):
            raise MalformedFileError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        if type(size) not in (tuple, list) or type(stride) not in (tuple, list) or len(size) != len(stride):
            raise MalformedFileError(
                f"a tensor's size {short(size)} and stride {short(stride)} must be equal-length tuples"
            )
        if len(size) > _MAX_DIMS:
            raise MalformedFileError(f"a tensor declares {len(size)} dimensions (at most {_MAX_DIMS})")
        for what, values in (("size", size), ("stride", stride), ("storage offset", (storage_offset,))):
            if not all(_is_int(v) and 0 <= v < _MAX_INT for v in values):
                raise MalformedFileError(f"a tensor's {what} {short(values)} must be ints in [0, 2**62)")
        available = storage.flat.numel()
        numel = 1
        for s in size:
            numel *= s
            if numel > available:  # before the product can grow huge
                break
        if numel > available:
            raise MalformedFileError(
                f"a tensor declares size {short(size)} but its storage holds only {available} elements "
                "(zero or overlapping strides are not accepted in style files)"
            )
        last = storage_offset + sum((s - 1) * t for s, t in zip(size, stride)) if numel else storage_offset - 1
        if last >= available or storage_offset > available:
            raise MalformedFileError(
                f"a tensor (offset {short(storage_offset)}, size {short(size)}, stride {short(stride)}) reaches past "
                f"the end of its storage of {available} elements"
            )
        if storage.used:
            nbytes = numel * storage.flat.element_size()
            self.budget.charge(nbytes, f"another tensor of {nbytes} bytes over the same storage")
        storage.used = True
        return storage.flat.as_strided(tuple(size), tuple(stride), storage_offset)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                           metadata=None) -> Tensor:  # fmt: skip
        tensor = self._rebuild_tensor(storage, storage_offset, size, stride)
        if requires_grad is True and tensor.is_floating_point():
            tensor.requires_grad_(True)
        return tensor

    def _rebuild_parameter(self, data, requires_grad, backward_hooks) -> Tensor:
        if not isinstance(data, Tensor) or type(requires_grad) is not bool:
            raise MalformedFileError("a parameter must be rebuilt from a tensor and a requires_grad flag")
        return torch.nn.Parameter(data, requires_grad=requires_grad and data.is_floating_point())


def unpickle_file(path, budget: Budget):
    """:func:`safe_unpickle` with a shared :class:`Budget`."""
    path = check_path(path)
    data = read_regular_file(path, budget)
    try:
        return _TensorUnpickler(io.BytesIO(data), budget).load()
    except (UnsafePickleError, FileBudgetError) as exc:
        raise type(exc)(f"{path!r}: {exc}") from None
    except MalformedFileError as exc:
        raise MalformedFileError(f"{path!r} is not a readable style pickle: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (whatever else a malformed pickle provokes is a bad file)
        raise ValueError(
            f"{path!r} is not a readable style pickle: {type(exc).__name__}: {short(str(exc), 120)}"
        ) from None


def safe_unpickle(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """Load a pickle that holds only tensors in dicts/lists (PODA/FAMix style banks), never running code from it.

    Only regular files are read (a FIFO or a directory raises ``ValueError``). Tensors come back on the CPU.

    Args:
        path: the pickle file.
        max_bytes: the most bytes the file may be, and the most tensor data it may decode (storages, extra views
            of a storage, protocol 0-2 byte strings), 1 GiB by default. Raise it for a larger trusted file.
    Raises:
        UnsafePickleError: (a ``ValueError``) the pickle asks for any other class or function.
        FileBudgetError: (a ``ValueError``) the file is larger than ``max_bytes`` or declares more data.
        ValueError: the file is not a readable pickle, or its tensors are malformed (a size, stride or offset
            reaching outside the storage, a storage larger than the bytes holding it, ...).
        FileNotFoundError: there is no such file.
    """
    return unpickle_file(path, Budget(max_bytes))
