"""A device-resident bank of mined styles (per-class feature statistics), sampled without Python loops.

FAMix keeps its styles as Python lists per class and draws with ``random.choice`` per patch; PODA keeps one pickle
per source image (SPEC 6). :class:`StyleBank` holds all styles in three tensors on one device and draws a whole
batch of (image, patch) styles with a few tensor operations, reproducibly from a ``torch.Generator``. It saves to
safetensors with JSON metadata, and reads the public pickle formats without running code from them.

FAMix's augmentation in three calls::

    classes = patch_dominant_class(labels, grid=3)                  # (B, 3, 3)
    style_mean, style_std = bank.sample_grid(classes, generator=g)  # (B, C, 3, 3) each
    y = local_style_mix(x, style_mean, style_std, grid=3, mix=beta_weights)
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from styleda_fast.prompts import CITYSCAPES_CLASSES

FORMAT = "styleda_fast.StyleBank"
FORMAT_VERSION = 1


class StyleBank:
    """Styles ``(mean, std)``, each ``(C,)``, tagged with a class id in ``[0, num_classes)`` or ``fallback``.

    Args:
        channels: ``C``, the feature channels of a style (256 for CLIP RN50 ``layer1``).
        num_classes: number of classes ``K`` (19 for Cityscapes; 0 for a class-less PODA bank).
        fallback: the id of the fallback class (FAMix: 255, the "photo" styles of unlabelled patches). A class
            without styles is drawn from the fallback class.
        class_names: ``K`` names (default: Cityscapes for ``K = 19``, else ``"0"``, ``"1"``, ...).
        device: where the styles live and are sampled.
        prompts, backbone, layer: optional metadata kept in saved files (``prompts`` maps a class name to its text).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int = 19,
        fallback: int = 255,
        class_names: Sequence[str] | None = None,
        *,
        device: torch.device | str | None = None,
        prompts: dict[str, str] | None = None,
        backbone: str | None = None,
        layer: str | None = None,
    ) -> None:
        for name, value, low in (("channels", channels, 1), ("num_classes", num_classes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(fallback, bool) or not isinstance(fallback, int) or 0 <= fallback < num_classes:
            raise ValueError(f"fallback must be an int outside [0, num_classes = {num_classes}), got {fallback!r}")
        if class_names is None:
            class_names = CITYSCAPES_CLASSES if num_classes == 19 else tuple(str(k) for k in range(num_classes))
        class_names = tuple(class_names)
        if len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names):
            raise ValueError(f"class_names must be {num_classes} strings, got {class_names!r}")
        if len(set(class_names)) != num_classes or str(fallback) in class_names:
            raise ValueError(f"class_names must be distinct and differ from the fallback {str(fallback)!r}")
        self.channels, self.num_classes, self.fallback = channels, num_classes, fallback
        self.class_names = class_names
        self.prompts = dict(prompts or {})
        self.backbone, self.layer = backbone, layer
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mean = torch.empty(0, channels, device=self.device)
        self.std = torch.empty(0, channels, device=self.device)
        self.class_ids = torch.empty(0, dtype=torch.int64, device=self.device)
        self._index: tuple[Tensor, Tensor, Tensor, list[int]] | None = None

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return self.class_ids.shape[0]

    def __repr__(self) -> str:
        return (
            f"StyleBank({len(self)} styles, channels={self.channels}, num_classes={self.num_classes}, "
            f"fallback={self.fallback}, device={self.device})"
        )

    def _slots(self, class_ids: Tensor, name: str) -> Tensor:
        """Class ids -> slots ``0..K`` (``K`` = fallback); ``ValueError`` for anything else."""
        ids = class_ids.long()
        valid = ((ids >= 0) & (ids < self.num_classes)) | (ids == self.fallback)
        if not bool(valid.all()):
            bad = ids[~valid][0].item()
            raise ValueError(
                f"{name} must be in [0, num_classes = {self.num_classes}) or the fallback {self.fallback}, got {bad}"
            )
        return torch.where(ids == self.fallback, torch.full_like(ids, self.num_classes), ids)

    def class_counts(self) -> dict[str, int]:
        """Number of styles per class name (the fallback class under ``str(fallback)``)."""
        counts = self._build()[3]
        names = (*self.class_names, str(self.fallback))
        return dict(zip(names, counts, strict=True))

    def add(self, mean: Tensor, std: Tensor, class_ids: Tensor | Sequence[int] | int) -> None:
        """Append ``N`` styles: ``mean``, ``std`` of shape ``(N, C)`` (or ``(N, C, 1, 1)``), ``class_ids (N,)``
        (or one int for all). They are stored in float32 on the bank's device."""
        tensors = []
        for name, t in (("mean", mean), ("std", std)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(t).__name__}")
            if t.dim() == 4 and t.shape[2:] == (1, 1):
                t = t.flatten(1)
            if t.dim() != 2 or t.shape[1] != self.channels:
                raise ValueError(f"{name} must have shape (N, C = {self.channels}), got {tuple(t.shape)}")
            tensors.append(t.detach().to(self.device, torch.float32))
        mean, std = tensors
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape")
        if isinstance(class_ids, int) and not isinstance(class_ids, bool):
            class_ids = torch.full((mean.shape[0],), class_ids, dtype=torch.int64)
        class_ids = torch.as_tensor(class_ids, device=self.device)
        if class_ids.dtype.is_floating_point or class_ids.dtype == torch.bool or class_ids.shape != (mean.shape[0],):
            raise ValueError(
                f"class_ids must be {mean.shape[0]} integers, got {class_ids.dtype} {tuple(class_ids.shape)}"
            )
        self._slots(class_ids, "class_ids")
        self.mean = torch.cat([self.mean, mean])
        self.std = torch.cat([self.std, std])
        self.class_ids = torch.cat([self.class_ids, class_ids.long()])
        self._index = None

    def to(self, device: torch.device | str) -> StyleBank:
        """Move the styles to ``device`` (in place); returns the bank."""
        self.device = torch.device(device)
        self.mean, self.std, self.class_ids = (t.to(self.device) for t in (self.mean, self.std, self.class_ids))
        self._index = None
        return self

    def _build(self) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """Styles grouped by slot: ``order`` (a stable sort by slot), ``offsets (K+1,)``, ``counts (K+1,)`` on the
        device, and the counts as a list."""
        if self._index is None:
            slots = self._slots(self.class_ids, "class_ids")
            order = torch.argsort(slots, stable=True)
            counts = torch.bincount(slots, minlength=self.num_classes + 1)
            offsets = torch.cumsum(counts, 0) - counts
            self._index = (order, offsets, counts, counts.tolist())
        return self._index

    # ------------------------------------------------------------------ sampling

    def _check_generator(self, generator: torch.Generator | None) -> None:
        if generator is not None and (
            not isinstance(generator, torch.Generator) or generator.device.type != self.device.type
        ):
            raise ValueError(f"generator must be a torch.Generator on the bank's device {self.device}, got {generator}")

    def sample(self, class_ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """For each entry of ``class_ids`` (any shape), a style drawn uniformly from that class's styles, or from
        the fallback class when the class has none (FAMix's rule).

        Returns ``(mean, std)``, each ``class_ids.shape + (C,)`` float32 on the bank's device. One ``torch.rand``
        draw of ``class_ids.numel()`` numbers from ``generator``: the same generator state gives the same styles,
        also after :meth:`save` / :meth:`load`. ``ValueError`` when an entry's class and the fallback have none.
        """
        if not isinstance(class_ids, Tensor) or class_ids.is_floating_point() or class_ids.dtype == torch.bool:
            raise TypeError(f"class_ids must be an integer torch.Tensor, got {getattr(class_ids, 'dtype', class_ids)}")
        self._check_generator(generator)
        order, offsets, counts, count_list = self._build()
        slots = self._slots(class_ids.to(self.device), "class_ids")
        fallback_slot = self.num_classes
        empty = [k for k, n in enumerate(count_list) if n == 0]
        if empty:
            if count_list[fallback_slot] == 0:
                hit = torch.isin(slots, torch.tensor(empty, device=self.device))
                if bool(hit.any()):
                    k = int(slots[hit][0])
                    name = self.class_names[k] if k < self.num_classes else str(self.fallback)
                    raise ValueError(
                        f"class {name!r} has no styles and the fallback class {self.fallback} has none either; "
                        "add styles before sampling"
                    )
            slots = torch.where(counts[slots] > 0, slots, torch.full_like(slots, fallback_slot))
        n = counts[slots]
        u = torch.rand(slots.shape, generator=generator, device=self.device, dtype=torch.float64)
        pick = (u * n).long().clamp_max(n - 1)
        index = order[offsets[slots] + pick]
        return self.mean[index], self.std[index]

    def sample_grid(self, classes: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Styles for the patches of :func:`patch_dominant_class`: ``classes (B, gh, gw)`` -> ``(mean, std)``, each
        ``(B, C, gh, gw)``, ready for ``local_style_mix(x, mean, std, grid=(gh, gw))``."""
        if not isinstance(classes, Tensor) or classes.dim() != 3:
            raise ValueError(f"classes must be a (B, gh, gw) tensor, got {getattr(classes, 'shape', classes)}")
        mean, std = self.sample(classes, generator)
        return mean.permute(0, 3, 1, 2).contiguous(), std.permute(0, 3, 1, 2).contiguous()

    def sample_any(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` styles drawn uniformly from the whole bank (PODA's draw): ``(mean, std)``, each ``(n, C)``."""
        if len(self) == 0:
            raise ValueError("the bank has no styles; add styles before sampling")
        self._check_generator(generator)
        u = torch.rand((n,), generator=generator, device=self.device, dtype=torch.float64)
        index = (u * len(self)).long().clamp_max(len(self) - 1)
        return self.mean[index], self.std[index]

    # ------------------------------------------------------------------ the package's own format

    def metadata(self) -> dict:
        return {
            "channels": self.channels,
            "num_classes": self.num_classes,
            "fallback": self.fallback,
            "class_names": list(self.class_names),
            "prompts": self.prompts,
            "backbone": self.backbone,
            "layer": self.layer,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to ``path`` in safetensors (tensors ``mean``, ``std``, ``class_ids``) with JSON metadata
        (channels, classes, prompts, backbone, layer) and the format version."""
        from safetensors.torch import save_file

        tensors = {"mean": self.mean, "std": self.std, "class_ids": self.class_ids}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "bank": json.dumps(self.metadata())}
        save_file(tensors, os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None) -> StyleBank:
        """Read a bank written by :meth:`save`, onto ``map_location`` (default CPU). A file that is not a valid
        bank (truncated, another format, inconsistent tensors) raises ``ValueError`` naming the path."""
        from safetensors import SafetensorError, safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no style bank file at {path!r}")
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{path!r} is not a readable safetensors style bank (truncated or corrupt?): {exc}"
            ) from None
        if header.get("format") != FORMAT:
            raise ValueError(f"{path!r} is not a styleda_fast StyleBank file (format {header.get('format')!r})")
        version = header.get("format_version", "")
        if not version.isdigit() or int(version) > FORMAT_VERSION:
            raise ValueError(f"{path!r} has format version {version!r}; this package reads up to {FORMAT_VERSION}")
        try:
            meta = json.loads(header["bank"])
            bank = cls(
                meta["channels"],
                meta["num_classes"],
                meta["fallback"],
                meta["class_names"],
                device=map_location,
                prompts=meta.get("prompts"),
                backbone=meta.get("backbone"),
                layer=meta.get("layer"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path!r} has invalid StyleBank metadata: {exc}") from None
        if set(tensors) != {"mean", "std", "class_ids"}:
            raise ValueError(f"{path!r} must hold tensors mean, std, class_ids; found {sorted(tensors)}")
        try:
            bank.add(tensors["mean"], tensors["std"], tensors["class_ids"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path!r} holds inconsistent style tensors: {exc}") from None
        return bank

    # ------------------------------------------------------------------ the public pickle formats (SPEC 6)

    @classmethod
    def from_poda_dir(
        cls, directory: str | os.PathLike, *, device: torch.device | str | None = None, pattern: str = "*.pkl"
    ) -> StyleBank:
        """PODA's bank: one pickle per source image holding ``{"mu_f1": (C, 1, 1), "std_f1": (C, 1, 1)}``. Files
        (``pattern``, sorted by name) are read with :func:`safe_unpickle`. Returns a class-less bank
        (``num_classes=0``; every style in the fallback class): draw with :meth:`sample_any`."""
        files = sorted(Path(directory).glob(pattern))
        if not files:
            raise ValueError(f"no PODA style files matching {pattern!r} in {os.fspath(directory)!r}")
        means, stds = [], []
        for file in files:
            data = safe_unpickle(file)
            if not isinstance(data, dict) or not {"mu_f1", "std_f1"} <= set(data):
                raise ValueError(f"{os.fspath(file)!r} is not a PODA style file (a dict with mu_f1 and std_f1)")
            means.append(_as_style(data["mu_f1"], file, "mu_f1"))
            stds.append(_as_style(data["std_f1"], file, "std_f1"))
        channels = means[0].numel()
        if any(t.numel() != channels for t in means + stds):
            raise ValueError(f"PODA style files in {os.fspath(directory)!r} have different channel counts")
        bank = cls(channels, num_classes=0, device=device)
        bank.add(torch.stack(means), torch.stack(stds), bank.fallback)
        return bank

    @classmethod
    def from_famix_pickle(
        cls,
        path: str | os.PathLike,
        *,
        class_names: Sequence[str] = CITYSCAPES_CLASSES,
        fallback: int = 255,
        device: torch.device | str | None = None,
    ) -> StyleBank:
        """FAMix's bank: one pickle of ``{"<class name>_mu": [(C, 1, 1), ...], "<class name>_std": [...]}`` with the
        class names and ``"255"`` for the fallback styles, read with :func:`safe_unpickle`. Styles keep their list
        order within each class."""
        data = safe_unpickle(path)
        where = repr(os.fspath(path))
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not a FAMix style file (a dict of per-class lists)")
        ids = {name: k for k, name in enumerate(class_names)} | {str(fallback): fallback}
        bank = None
        for name, k in ids.items():
            mus, stds = data.get(f"{name}_mu", []), data.get(f"{name}_std", [])
            if not isinstance(mus, (list, tuple)) or not isinstance(stds, (list, tuple)) or len(mus) != len(stds):
                raise ValueError(f"{where}: {name}_mu and {name}_std must be lists of the same length")
            if not mus:
                continue
            m = torch.stack([_as_style(t, path, f"{name}_mu") for t in mus])
            s = torch.stack([_as_style(t, path, f"{name}_std") for t in stds])
            if bank is None:
                bank = cls(m.shape[1], len(class_names), fallback, class_names, device=device)
            bank.add(m, s, k)
        unknown = {key for key in data if not (isinstance(key, str) and key.rsplit("_", 1)[0] in ids)}
        if unknown:
            raise ValueError(f"{where} has keys that are not <class>_mu / <class>_std: {sorted(map(str, unknown))}")
        if bank is None:
            raise ValueError(f"{where} holds no styles")
        return bank


def _as_style(t, path, key: str) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ValueError(f"{os.fspath(path)!r}: {key} must hold float tensors, got {type(t).__name__}")
    return t.detach().reshape(-1).float().cpu()


# ---------------------------------------------------------------------- restricted unpickling


class UnsafePickleError(ValueError):
    """A pickle asked to rebuild something other than tensors and plain containers."""


def _load_storage_from_bytes(data: bytes):
    # What torch's own pickling of a storage calls (torch.storage._load_from_bytes), but with the weights-only
    # loader: the bytes are a torch.save of the storage, and torch's restricted unpickler reads them.
    if not isinstance(data, bytes):
        raise UnsafePickleError("a storage must be rebuilt from bytes")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch's weights-only loader refused or could not read the bytes
        raise UnsafePickleError(f"a tensor storage in the pickle could not be read safely: {exc}") from None


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
}


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, numbers, strings and CPU/GPU-saved torch tensors; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle asks for {module}.{name}, which is not a tensor or a plain container; refusing to load it "
                "(only tensors and dicts/lists of them are read from style pickles)"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids (a torch.save zip?); refusing to load it")


def safe_unpickle(path: str | os.PathLike):
    """Load a pickle that holds only tensors in dicts/lists (PODA/FAMix style banks), never running code from it.

    Raises :class:`UnsafePickleError` (a ``ValueError``) if the pickle asks for any other class or function, and
    ``ValueError`` if the file is not a readable pickle.
    """
    with open(path, "rb") as f:
        try:
            return _TensorUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{os.fspath(path)!r}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
            raise ValueError(
                f"{os.fspath(path)!r} is not a readable style pickle: {type(exc).__name__}: {exc}"
            ) from None
