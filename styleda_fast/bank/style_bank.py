"""A device-resident bank of mined styles (per-class feature statistics), sampled without Python loops.

FAMix keeps its styles as Python lists per class and draws with ``random.choice`` per patch; PODA keeps one pickle
per source image. :class:`StyleBank` holds all styles in three tensors on one device and draws a whole
batch of (image, patch) styles with a few tensor operations, reproducibly from a ``torch.Generator``. It saves to
safetensors with JSON metadata and a checksum, and reads the public pickle formats without running code from them
and with bounded memory (see :mod:`styleda_fast.bank.safe_load`).

FAMix's augmentation in three calls::

    classes = patch_dominant_class(labels, grid=3)                  # (B, 3, 3)
    style_mean, style_std = bank.sample_grid(classes, generator=g)  # (B, C, 3, 3) each
    y = local_style_mix(x, style_mean, style_std, grid=3, mix=beta_weights)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from styleda_fast.bank.bank_file import (
    FORMAT,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    check_safetensors_header,
    checksum,
    checksum_v1,
)
from styleda_fast.bank.safe_load import (
    DEFAULT_MAX_BYTES,
    Budget,
    FileBudgetError,
    UnsafePickleError,
    check_path,
    file_kind,
    safe_unpickle,
    short,
    unpickle_file,
)
from styleda_fast.core.checks import check_bool, check_int
from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "EMPTY_CLASS_MODES",
    "FileBudgetError",
    "StyleBank",
    "StyleFileWarning",
    "UnsafePickleError",
    "safe_unpickle",
]

EMPTY_CLASS_MODES = ("error", "any")
MAX_CHANNELS = 1 << 20
MAX_CLASSES = 1 << 16
_INT64 = (-(2**63), 2**63 - 1)


class StyleFileWarning(UserWarning):
    """A style file loaded with a caveat: entries skipped, negative standard deviations clamped, no checksum."""


def _check_device(device, name: str) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a torch.device, a str such as 'cuda:0', or None; got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"{name} {short(device)} is not a device: {exc}") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"{name} {device} is not available here: {exc}") from None
    return device


def _check_clamp(clamp) -> float | None:
    if clamp is None:
        return None
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)):
        raise TypeError(f"clamp_negative_std must be a float >= 0 or None, got {type(clamp).__name__}")
    if not math.isfinite(clamp) or clamp < 0:
        raise ValueError(f"clamp_negative_std must be a finite float >= 0 or None, got {clamp!r}")
    return float(clamp)


def _negative_std(std: Tensor, clamp: float | None, where: str) -> Tensor:
    """The loaders' rule for negative standard deviations (the bank itself refuses them, see :meth:`StyleBank.add`):
    set them to ``clamp`` with a :class:`StyleFileWarning`, or refuse the file when ``clamp`` is None."""
    negative = std < 0
    count = int(negative.sum())
    if count == 0:
        return std
    what = f"{where}: {count} of {std.numel()} std values are negative (min {float(std.min()):.4g})"
    if clamp is None:
        raise ValueError(f"{what}; pass clamp_negative_std=0.0 (or another value >= 0) to load it with them clamped")
    warnings.warn(
        f"{what}; set to clamp_negative_std = {clamp} (pass clamp_negative_std=None to refuse such files)",
        StyleFileWarning,
        stacklevel=3,
    )
    return torch.where(negative, torch.full_like(std, clamp), std)


class StyleBank:
    """Styles ``(mean, std)``, each ``(C,)``, tagged with a class id in ``[0, num_classes)`` or ``fallback``.

    Args:
        channels: ``C``, the feature channels of a style (256 for CLIP RN50 ``layer1``), in ``[1, 2**20]``.
        num_classes: number of classes ``K`` (19 for Cityscapes; 0 for a class-less PODA bank), in ``[0, 2**16]``.
        fallback: the id of the fallback class (FAMix: 255, the "photo" styles of unlabelled patches), an int64
            outside ``[0, K)``. A class without styles is drawn from the fallback class.
        class_names: ``K`` distinct names (default: Cityscapes for ``K = 19``, else ``"0"``, ``"1"``, ...).
        device: where the styles live and are sampled.
        prompts, backbone, layer: optional metadata kept in saved files (``prompts`` maps a class name to its text).
        provenance: how the bank was made (mining options, model, prompts per class, seed, ...): a dict that JSON
            represents (str keys; str, int, finite float, bool, None, lists and dicts of those), saved with the
            bank and covered by its checksum. Default empty. See :attr:`provenance`.
        empty_class: what :meth:`sample` does for a class that has no styles when the fallback class has none
            either: ``"error"`` (default) raises ``ValueError``; ``"any"`` draws uniformly from all styles of the
            bank. Saved with the bank.

    Errors: a wrong type raises ``TypeError``, a wrong value ``ValueError``, each naming the argument.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int = 19,
        fallback: int = 255,
        class_names: Sequence[str] | None = None,
        *,
        device: torch.device | str | None = None,
        prompts: Mapping[str, str] | None = None,
        backbone: str | None = None,
        layer: str | None = None,
        empty_class: str = "error",
        provenance: Mapping | None = None,
    ) -> None:
        channels = check_int(channels, "channels", 1, MAX_CHANNELS)
        num_classes = check_int(num_classes, "num_classes", 0, MAX_CLASSES)
        fallback = check_int(fallback, "fallback", *_INT64)
        if 0 <= fallback < num_classes:
            raise ValueError(f"fallback must be an int outside [0, num_classes = {num_classes}), got {fallback}")
        if class_names is None:
            class_names = CITYSCAPES_CLASSES if num_classes == 19 else tuple(str(k) for k in range(num_classes))
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
            raise TypeError(f"class_names must be a list or tuple of str, got {short(class_names)}")
        class_names = tuple(class_names)
        if len(class_names) != num_classes:
            raise ValueError(f"class_names must be {num_classes} names (num_classes), got {len(class_names)}")
        if len(set(class_names)) != num_classes or str(fallback) in class_names:
            raise ValueError(f"class_names must be distinct and differ from the fallback {str(fallback)!r}")
        if prompts is not None and (
            not isinstance(prompts, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
        ):
            raise TypeError(f"prompts must map str to str (or be None), got {short(prompts)}")
        for name, value in (("backbone", backbone), ("layer", layer)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
        if not isinstance(empty_class, str):
            raise TypeError(f"empty_class must be one of {EMPTY_CLASS_MODES}, got {type(empty_class).__name__}")
        if empty_class not in EMPTY_CLASS_MODES:
            raise ValueError(f"empty_class must be one of {EMPTY_CLASS_MODES}, got {short(empty_class)}")
        self.device = _check_device(device, "device")
        self.channels, self.num_classes, self.fallback = channels, num_classes, fallback
        self.class_names = class_names
        self.prompts = dict(prompts or {})
        self.backbone, self.layer = backbone, layer
        self.empty_class = empty_class
        self.provenance = {} if provenance is None else provenance
        self.mean = torch.empty(0, channels, device=self.device)
        self.std = torch.empty(0, channels, device=self.device)
        self.class_ids = torch.empty(0, dtype=torch.int64, device=self.device)
        self._index: tuple[Tensor, Tensor, Tensor, list[int]] | None = None

    @property
    def provenance(self) -> dict:
        """How the bank was made: a JSON-representable dict (``{}`` when unknown), e.g. what ``styleda-fast mine``
        records: ``{"tool", "mode", "model", "pretrained", "class_template", "class_prompts", "steps", "seed",
        ...}``. Assigning checks it and keeps a copy; :meth:`save` writes it (JSON, under the checksum), :meth:`load`
        reads it back, and copies of the bank (``copy.deepcopy``, pickle) carry it."""
        return self._provenance

    @provenance.setter
    def provenance(self, value: Mapping) -> None:
        self._provenance = _check_provenance(value)

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return self.class_ids.shape[0]

    def __repr__(self) -> str:
        return (
            f"StyleBank({len(self)} styles, channels={self.channels}, num_classes={self.num_classes}, "
            f"fallback={self.fallback}, empty_class={self.empty_class!r}, device={self.device})"
        )

    def _slots(self, class_ids: Tensor, name: str) -> Tensor:
        """Class ids -> slots ``0..K`` (``K`` = fallback); ``ValueError`` for anything else."""
        ids = class_ids.long()
        if ids.numel() > 0:
            low, high = torch.aminmax(ids)  # one reduction: the usual case, ids of real classes only, ends here
            low, high = int(low), int(high)
            if 0 <= low and high < self.num_classes and not low <= self.fallback <= high:
                return ids
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

    def _as_class_ids(self, class_ids, n: int) -> Tensor:
        if isinstance(class_ids, int) and not isinstance(class_ids, bool):
            check_int(class_ids, "class_ids", *_INT64)
            return torch.full((n,), class_ids, dtype=torch.int64, device=self.device)
        if isinstance(class_ids, Tensor):
            _check_has_data(class_ids, "class_ids")
            if class_ids.is_floating_point() or class_ids.is_complex() or class_ids.dtype == torch.bool:
                raise TypeError(f"class_ids must hold integers, got {class_ids.dtype}")
        elif isinstance(class_ids, (list, tuple)):
            if not all(isinstance(k, int) and not isinstance(k, bool) for k in class_ids):
                raise TypeError("class_ids must be an int, a sequence of ints or an integer tensor")
            if any(not _INT64[0] <= k <= _INT64[1] for k in class_ids):
                raise ValueError("class_ids must be int64 values")
            class_ids = torch.tensor(class_ids, dtype=torch.int64)
        else:
            raise TypeError(f"class_ids must be an int, a sequence of ints or a tensor, got {type(class_ids).__name__}")
        if class_ids.shape != (n,):
            raise ValueError(f"class_ids must be {n} integers (one per style), got shape {tuple(class_ids.shape)}")
        return class_ids.to(self.device, torch.int64)

    def add(
        self,
        mean: Tensor,
        std: Tensor,
        class_ids: Tensor | Sequence[int] | int,
        *,
        allow_negative_std: bool = False,
    ) -> None:
        """Append ``N`` styles: ``mean``, ``std`` of shape ``(N, C)`` (or ``(N, C, 1, 1)``), ``class_ids (N,)``
        (or one int for all). They are stored in float32 on the bank's device.

        Values must be finite (after the conversion to float32) and ``std >= 0``; anything else raises
        ``ValueError`` naming the argument (the loaders clamp negative std from files, see ``clamp_negative_std``).
        ``allow_negative_std=True`` keeps negative stds, as the public mining code leaves them (a negative target
        std flips the sign of the transferred feature): an explicit choice, e.g. ``mine --keep-negative-std``.
        """
        tensors = []
        for name, t in (("mean", mean), ("std", std)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                got = getattr(t, "dtype", type(t).__name__)
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
            _check_has_data(t, name)
            if t.dim() == 4 and t.shape[2:] == (1, 1):
                t = t.flatten(1)
            if t.dim() != 2 or t.shape[1] != self.channels:
                raise ValueError(f"{name} must have shape (N, C = {self.channels}), got {tuple(t.shape)}")
            t = t.detach().to(self.device, torch.float32)
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{name} has {bad} non-finite values (NaN or inf, in float32)")
            tensors.append(t)
        mean, std = tensors
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have the same shape")
        negative = 0 if check_bool(allow_negative_std, "allow_negative_std") else int((std < 0).sum())
        if negative:
            raise ValueError(
                f"std must be >= 0: {negative} of {std.numel()} values are negative (min {float(std.min()):.4g})"
            )
        class_ids = self._as_class_ids(class_ids, mean.shape[0])
        self._slots(class_ids, "class_ids")
        self.mean = torch.cat([self.mean, mean])
        self.std = torch.cat([self.std, std])
        self.class_ids = torch.cat([self.class_ids, class_ids])
        self._index = None

    def to(self, device: torch.device | str) -> StyleBank:
        """Move the styles to ``device`` (in place); returns the bank."""
        self.device = _check_device(device, "device")
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
        if generator is None:
            return
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != self.device.type:
            raise ValueError(f"generator must be on the bank's device {self.device}, got one on {generator.device}")

    def sample(self, class_ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """For each entry of ``class_ids`` (any shape), a style drawn uniformly from that class's styles, or from
        the fallback class when the class has none (FAMix's rule). When the fallback class has none either, the
        bank's ``empty_class`` decides: ``"error"`` raises ``ValueError``, ``"any"`` draws uniformly from all
        styles.

        Returns ``(mean, std)``, each ``class_ids.shape + (C,)`` float32 on the bank's device. One ``torch.rand``
        draw of ``class_ids.numel()`` numbers from ``generator``: the same generator state gives the same styles,
        also after :meth:`save` / :meth:`load`.
        """
        if not isinstance(class_ids, Tensor) or class_ids.is_floating_point() or class_ids.dtype == torch.bool:
            raise TypeError(f"class_ids must be an integer torch.Tensor, got {getattr(class_ids, 'dtype', class_ids)}")
        self._check_generator(generator)
        order, offsets, counts, count_list = self._build()
        slots = self._slots(class_ids.to(self.device), "class_ids")
        fallback_slot = self.num_classes
        use_all = None
        empty = [k for k, n in enumerate(count_list) if n == 0]
        if empty:
            if count_list[fallback_slot] == 0:
                hit = torch.isin(slots, torch.tensor(empty, device=self.device))
                if bool(hit.any()):
                    if self.empty_class == "any" and len(self) == 0:
                        raise ValueError("the bank has no styles; add styles before sampling")
                    if self.empty_class == "any":
                        use_all = hit
                    else:
                        k = int(slots[hit][0])
                        name = self.class_names[k] if k < self.num_classes else str(self.fallback)
                        raise ValueError(
                            f"class {name!r} has no styles and the fallback class {self.fallback} has none either; "
                            "add styles before sampling, or build the bank with empty_class='any' to draw such "
                            "classes from all styles"
                        )
            slots = torch.where(counts[slots] > 0, slots, torch.full_like(slots, fallback_slot))
        n = _take(counts, slots)
        if use_all is not None:
            n = torch.where(use_all, torch.full_like(n, len(self)), n)
        u = torch.rand(slots.shape, generator=generator, device=self.device, dtype=torch.float64)
        pick = (u * n).long().clamp_max(n - 1)
        if use_all is None:
            index = _take(order, _take(offsets, slots) + pick)
        else:  # entries of empty classes index the whole bank directly
            index = torch.where(use_all, pick, _take(order, torch.where(use_all, pick, _take(offsets, slots) + pick)))
        return self._rows(index)

    def sample_grid(self, classes: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Styles for the patches of :func:`patch_dominant_class`: ``classes (B, gh, gw)`` -> ``(mean, std)``, each
        ``(B, C, gh, gw)``, ready for ``local_style_mix(x, mean, std, grid=(gh, gw))``."""
        if not isinstance(classes, Tensor):
            raise TypeError(f"classes must be a (B, gh, gw) integer tensor, got {type(classes).__name__}")
        if classes.dim() != 3:
            raise ValueError(f"classes must be a (B, gh, gw) tensor, got shape {tuple(classes.shape)}")
        mean, std = self.sample(classes, generator)
        return mean.permute(0, 3, 1, 2).contiguous(), std.permute(0, 3, 1, 2).contiguous()

    def sample_any(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n >= 0`` styles drawn uniformly from the whole bank (PODA's draw): ``(mean, std)``, each ``(n, C)``."""
        n = check_int(n, "n", 0)
        if len(self) == 0:
            raise ValueError("the bank has no styles; add styles before sampling")
        self._check_generator(generator)
        u = torch.rand((n,), generator=generator, device=self.device, dtype=torch.float64)
        index = (u * len(self)).long().clamp_max(len(self) - 1)
        return self._rows(index)

    def _rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` rows at ``index`` (any shape), each ``index.shape + (C,)``. index_select, not
        ``mean[index]``: advanced indexing of a few dozen rows may open a parallel region (ATen's index kernel),
        which waits for every intra-op thread: 0.3 ms becomes 30-100 ms when another process keeps a core busy."""
        flat = index.reshape(-1)
        shape = (*index.shape, self.channels)
        return self.mean.index_select(0, flat).view(shape), self.std.index_select(0, flat).view(shape)

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
            "empty_class": self.empty_class,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to ``path`` in safetensors (tensors ``mean``, ``std``, ``class_ids``) with JSON metadata
        (channels, classes, prompts, backbone, layer, empty_class), the :attr:`provenance` (JSON), the format
        version and a SHA-256 checksum of all metadata and the tensors (checked by :meth:`load`; it detects
        corruption, not tampering: it has no key). The folder must exist (``FileNotFoundError`` naming it: a
        mistyped folder is not created); an existing file is replaced."""
        from safetensors.torch import save_file

        path = check_path(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            what = "is not a folder" if os.path.exists(folder) else "does not exist"
            error = NotADirectoryError if os.path.exists(folder) else FileNotFoundError
            raise error(f"cannot save the bank to {path!r}: the folder {folder!r} {what}")
        tensors = {"mean": self.mean, "std": self.std, "class_ids": self.class_ids}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "bank": json.dumps(self.metadata()),
            "provenance": json.dumps(_check_provenance(self.provenance), allow_nan=False),
        }
        meta["checksum"] = checksum(tensors, meta)
        save_file(tensors, path, metadata=meta)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        map_location: torch.device | str | None = None,
        *,
        verify: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clamp_negative_std: float | None = 0.0,
        allow_negative_std: bool = False,
    ) -> StyleBank:
        """Read a bank written by :meth:`save`, onto ``map_location`` (default CPU).

        Args:
            verify: check the file's SHA-256 checksum (default); ``False`` skips it (faster for large banks). A
                file of the current format (version 2) without a checksum is refused unless ``verify=False``;
                version-1 files written before checksums were stored load with a :class:`StyleFileWarning`
                (re-save them to add one). The checksum detects corruption, not tampering (it has no key).
            max_bytes: the largest file accepted (1 GiB by default); its header is checked against the file size
                before any tensor is read.
            clamp_negative_std: negative std values (which :meth:`add` refuses; possible in files from other
                writers or older versions) are set to this value, 0.0 by default, with a :class:`StyleFileWarning`
                giving their count; ``None`` refuses such files.
            allow_negative_std: keep negative std values as they are (a bank mined with ``--keep-negative-std``).

        A file that is not a valid bank (truncated, another format, failed checksum, inconsistent tensors or
        metadata) raises ``ValueError`` naming the path; a missing file ``FileNotFoundError``.
        """
        from safetensors import SafetensorError, safe_open

        path = check_path(path)
        device = _check_device(map_location, "map_location")
        verify = check_bool(verify, "verify")
        budget = Budget(max_bytes)
        clamp = _check_clamp(clamp_negative_std)
        where = repr(path)
        check_safetensors_header(path, budget)
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{where} is not a readable safetensors style bank (truncated or corrupt?): {short(str(exc), 200)}"
            ) from None
        if header.get("format") != FORMAT:
            raise ValueError(f"{where} is not a styleda_fast StyleBank file (format {short(header.get('format'))})")
        version = header.get("format_version", "")
        if version not in READABLE_VERSIONS:
            readable = " and ".join(READABLE_VERSIONS)
            raise ValueError(f"{where} has format version {short(version)}; this package reads versions {readable}")
        if set(tensors) != {"mean", "std", "class_ids"}:
            raise ValueError(f"{where} must hold tensors mean, std, class_ids; found {short(sorted(tensors))}")
        bank_json = header.get("bank")
        if not isinstance(bank_json, str):
            raise ValueError(f"{where} has invalid StyleBank metadata: no 'bank' entry")
        stored = header.get("checksum")
        if stored is None and verify and version != "1":
            raise ValueError(
                f"{where} has no checksum, which every version-{version} StyleBank file carries: the file was "
                "modified; pass verify=False to load it without an integrity check"
            )
        if stored is None:
            if verify:
                warnings.warn(
                    f"{where} has no checksum (written before styleda_fast stored one): loaded without an integrity "
                    "check; save it again to add one",
                    StyleFileWarning,
                    stacklevel=2,
                )
        elif verify and stored != (checksum_v1(tensors, bank_json) if version == "1" else checksum(tensors, header)):
            raise ValueError(
                f"{where} failed its integrity check (the SHA-256 checksum of its contents does not match): the file "
                "is corrupt or was modified; pass verify=False to load it anyway"
            )
        try:
            meta = json.loads(bank_json)
            provenance = json.loads(header.get("provenance", "{}"))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{where} has invalid StyleBank metadata (not JSON): {short(str(exc), 120)}") from None
        try:
            if not isinstance(meta, dict):
                raise TypeError("the metadata must be a JSON object")
            bank = cls(
                meta["channels"],
                meta["num_classes"],
                meta["fallback"],
                meta["class_names"],
                device=device,
                prompts=meta.get("prompts"),
                backbone=meta.get("backbone"),
                layer=meta.get("layer"),
                empty_class=meta.get("empty_class", "error"),
                provenance=provenance,
            )
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"{where} has invalid StyleBank metadata: {short(str(exc), 200)}") from None
        allow_negative_std = check_bool(allow_negative_std, "allow_negative_std")
        std = tensors["std"]
        if std.is_floating_point() and not allow_negative_std:
            std = _negative_std(std, clamp, where)
        try:
            bank.add(tensors["mean"], std, tensors["class_ids"], allow_negative_std=allow_negative_std)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} holds inconsistent style tensors: {exc}") from None
        return bank

    # ------------------------------------------------------------------ the public pickle formats

    @classmethod
    def from_poda_dir(
        cls,
        directory: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        pattern: str = "*.pkl",
        max_bytes: int = DEFAULT_MAX_BYTES,
        clamp_negative_std: float | None = 0.0,
    ) -> StyleBank:
        """PODA's bank: one pickle per source image holding ``{"mu_f1": (C, 1, 1), "std_f1": (C, 1, 1)}``. The
        regular files matching ``pattern`` (sorted by name) are read with :func:`safe_unpickle`; other entries
        (directories, FIFOs, devices, broken links) are skipped with a :class:`StyleFileWarning` naming them.
        Returns a class-less bank (``num_classes=0``; every style in the fallback class): draw with
        :meth:`sample_any`.

        Args:
            max_bytes: the budget of the whole folder: every file, all the tensor data decoded from the files
                together, and the stacked bank must fit (1 GiB by default).
            clamp_negative_std: negative std values are set to this value (0.0, as PODA's PIN clamps before use),
                with a :class:`StyleFileWarning` giving their count; ``None`` refuses them.
        """
        directory = check_path(directory, "directory")
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
        if not pattern:
            raise ValueError("pattern must not be empty")
        device = _check_device(device, "device")
        budget = Budget(max_bytes)
        clamp = _check_clamp(clamp_negative_std)
        where = repr(directory)
        if not os.path.isdir(directory):
            if not os.path.exists(directory):
                raise FileNotFoundError(f"no PODA style folder at {where}")
            raise ValueError(f"directory {where} is not a directory")
        files, skipped = [], []
        for file in sorted(Path(directory).glob(pattern)):
            kind = file_kind(file)
            if kind is None:
                files.append(file)
            else:
                skipped.append(f"{file.name!r} ({kind})")
        if skipped:
            listed = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
            warnings.warn(
                f"{where}: skipped {len(skipped)} entries matching {pattern!r} that are not regular files: {listed}",
                StyleFileWarning,
                stacklevel=2,
            )
        if not files:
            extra = f" (skipped {len(skipped)} that are not regular files)" if skipped else ""
            raise ValueError(f"no PODA style files matching {pattern!r} in {where}{extra}")
        means, stds = [], []
        for file in files:
            data = unpickle_file(file, budget)
            if not isinstance(data, dict) or not {"mu_f1", "std_f1"} <= set(data):
                raise ValueError(f"{os.fspath(file)!r} is not a PODA style file (a dict with mu_f1 and std_f1)")
            for key, out in (("mu_f1", means), ("std_f1", stds)):
                style = _as_style(data[key], file, key)
                channels = means[0].numel() if means else style.numel()
                if style.numel() != channels:
                    raise ValueError(
                        f"{os.fspath(file)!r}: {key} has {style.numel()} channels but {os.fspath(files[0])!r} has "
                        f"{channels}; PODA style files must have one channel count"
                    )
                out.append(style)
        budget.check_size(2 * len(means) * channels * 4, f"the bank stacked from {where}")
        mean, std = torch.stack(means), _negative_std(torch.stack(stds), clamp, where)
        try:
            bank = cls(channels, num_classes=0, device=device)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        bank.add(mean, std, bank.fallback)
        return bank

    @classmethod
    def from_famix_pickle(
        cls,
        path: str | os.PathLike,
        *,
        class_names: Sequence[str] = CITYSCAPES_CLASSES,
        fallback: int = 255,
        device: torch.device | str | None = None,
        empty_class: str = "error",
        max_bytes: int = DEFAULT_MAX_BYTES,
        clamp_negative_std: float | None = 0.0,
    ) -> StyleBank:
        """FAMix's bank: one pickle of ``{"<class name>_mu": [(C, 1, 1), ...], "<class name>_std": [...]}`` with the
        class names and ``"255"`` for the fallback styles, read with :func:`safe_unpickle`. Styles keep their list
        order within each class.

        Args:
            class_names, fallback, device, empty_class: as for :class:`StyleBank`.
            max_bytes: the largest file, the most tensor data decoded from it, and the largest stacked bank
                (1 GiB by default; a list repeating one tensor costs its size for every entry).
            clamp_negative_std: negative std values (FAMix's patch-wise PIN does not clamp) are set to this value,
                0.0 by default, with a :class:`StyleFileWarning` giving their count; ``None`` refuses them.
        """
        path = check_path(path)
        budget = Budget(max_bytes)
        clamp = _check_clamp(clamp_negative_std)
        if not isinstance(class_names, (list, tuple)):
            raise TypeError(f"class_names must be a list or tuple of str, got {type(class_names).__name__}")
        template = cls(1, len(class_names), fallback, class_names, device=device, empty_class=empty_class)
        where = repr(path)
        data = unpickle_file(path, budget)
        if not isinstance(data, dict):
            raise ValueError(f"{where} is not a FAMix style file (a dict of per-class lists)")
        ids = {name: k for k, name in enumerate(template.class_names)} | {str(fallback): fallback}
        known = {f"{name}_{part}" for name in ids for part in ("mu", "std")}
        unknown = [key for key in data if not (isinstance(key, str) and key in known)]
        if unknown:
            listed = ", ".join(short(key) for key in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(f"{where} has keys that are not <class>_mu / <class>_std: {listed}")
        lists = {}
        for name in ids:
            mus, sds = data.get(f"{name}_mu", []), data.get(f"{name}_std", [])
            if not isinstance(mus, (list, tuple)) or not isinstance(sds, (list, tuple)) or len(mus) != len(sds):
                raise ValueError(f"{where}: {name}_mu and {name}_std must be lists of the same length")
            lists[name] = (mus, sds)
        count = sum(len(mus) for mus, _ in lists.values())
        if count == 0:
            raise ValueError(f"{where} holds no styles")
        name = next(name for name, (mus, _) in lists.items() if mus)
        channels = _as_style(lists[name][0][0], path, f"{name}_mu[0]").numel()
        budget.check_size(2 * count * channels * 4, f"the bank stacked from {where}")  # before any copy
        means, stds, labels = [], [], []
        first = None
        for name, k in ids.items():
            mus, sds = lists[name]
            for key, items, out in ((f"{name}_mu", mus, means), (f"{name}_std", sds, stds)):
                for i, t in enumerate(items):
                    style = _as_style(t, path, f"{key}[{i}]")
                    if first is None:
                        first = (f"{key}[{i}]", style.numel())
                    elif style.numel() != first[1]:
                        raise ValueError(
                            f"{where}: {key}[{i}] has {style.numel()} channels but {first[0]} has {first[1]}; all "
                            "styles must have one channel count"
                        )
                    out.append(style)
            labels += [k] * len(mus)
        mean, std = torch.stack(means), _negative_std(torch.stack(stds), clamp, where)
        try:
            bank = cls(first[1], len(template.class_names), fallback, template.class_names, device=device,
                       empty_class=empty_class)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        bank.add(mean, std, torch.tensor(labels, dtype=torch.int64))
        return bank


def _as_style(t, path, key: str) -> Tensor:
    """One style vector from a file: a float tensor of finite values, flattened to float32 on the CPU."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ValueError(f"{os.fspath(path)!r}: {key} must hold float tensors, got {type(t).__name__}")
    flat = t.detach().reshape(-1).float().cpu()
    if flat.numel() == 0 or flat.numel() > MAX_CHANNELS:
        raise ValueError(f"{os.fspath(path)!r}: {key} has {flat.numel()} channels (1 to {MAX_CHANNELS} expected)")
    bad = int((~torch.isfinite(flat)).sum())
    if bad:
        raise ValueError(f"{os.fspath(path)!r}: {key} has {bad} non-finite values (NaN or inf, in float32)")
    return flat


def _take(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-D table by index_select (a few microseconds; advanced indexing costs about four
    times as much on a few dozen entries, which counts when a training step draws its styles)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _check_has_data(t: Tensor, name: str) -> None:
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape and dtype only, no values); give a tensor with data")


def _check_provenance(value) -> dict:
    """A JSON-representable dict, copied (JSON round trip); ``TypeError`` / ``ValueError`` naming ``provenance``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"provenance must be a dict (JSON object), got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise TypeError(f"provenance must have str keys, got {short(list(value))}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"provenance must be representable as JSON (finite numbers, str keys): {exc}") from None
