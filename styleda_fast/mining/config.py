"""The options of one mining run: :class:`MineConfig`, built once (from the command line or from Python) and checked
once, when it is created. Everything here is pure: no file is written, no model loaded."""

from __future__ import annotations

import argparse
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from styleda_fast.ops.text.prompts import CITYSCAPES_CLASSES, IMAGENET_TEMPLATES

FALLBACK = 255
"""Class id of the fallback styles (FAMix's mostly unlabelled patches), drawn for every class without styles."""

DEFAULT_CLASS_TEMPLATE = "{class} while {domain}"
"""Zero-shot patch mode: the text target of a patch of class ``{class}`` toward the domain ``{domain}``."""

TEMPLATE_FIELDS = ("class", "domain")


class MineError(Exception):
    """A problem with the inputs of a mining run, reported to the user in one line without a traceback."""


def template_fields(template: str) -> list[str]:
    """The placeholders of a ``--class-template`` in order; :class:`MineError` for a malformed template, a
    positional ``{}`` or a placeholder other than ``{class}`` and ``{domain}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MineError(f"--class-template {template!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    unknown = [name for name in names if name not in TEMPLATE_FIELDS]
    if unknown:
        shown = ", ".join("{" + name + "}" for name in dict.fromkeys(unknown))
        raise MineError(f"--class-template {template!r}: unknown placeholder(s) {shown}; use {{class}} and {{domain}}")
    for _, name, spec, conversion in parsed:
        if name is not None and (spec or conversion):
            raise MineError(f"--class-template {template!r}: write placeholders as {{class}} and {{domain}}")
    return names


def compose_class_prompt(template: str, class_name: str, domain: str) -> str:
    """``template`` with ``{class}`` and ``{domain}`` filled in."""
    return template.format(**{"class": class_name, "domain": domain})


def read_class_prompts(source: str | Path | Mapping | None) -> dict[str, tuple[str, ...]]:
    """``--class-prompts``: a JSON file (or, from Python, a mapping) of class name -> one prompt or a list of
    prompts, as ``{class name: (prompt, ...)}``. :class:`MineError` for a file that is not such JSON or names
    classes that are not Cityscapes class names (all of them named)."""
    if source is None:
        return {}
    what = "--class-prompts"
    if isinstance(source, (str, Path)):
        what = f"--class-prompts {source}"
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MineError(f"{what}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MineError(f"{what}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            source = json.loads(text)
        except ValueError as exc:
            raise MineError(f"{what}: not JSON ({exc})") from None
    if not isinstance(source, Mapping):
        raise MineError(f"{what}: must be a JSON object of class name -> prompt or list of prompts")
    unknown = [str(name) for name in source if name not in CITYSCAPES_CLASSES]
    if unknown:
        raise MineError(
            f"{what}: unknown class name(s) {', '.join(repr(n) for n in unknown)}; the classes are "
            f"{', '.join(CITYSCAPES_CLASSES)}"
        )
    prompts = {}
    for name, value in source.items():
        value = [value] if isinstance(value, str) else value
        if (
            not isinstance(value, Sequence)
            or isinstance(value, str)
            or not value
            or not all(isinstance(p, str) and p.strip() for p in value)
        ):
            raise MineError(f"{what}: the prompts of {name!r} must be a non-empty string or a list of them")
        prompts[name] = tuple(value)
    return prompts


@dataclass(frozen=True)
class MineConfig:
    """Every option of ``styleda-fast mine`` (the same names, ``-`` as ``_``); checked when created.

    Modes: ``mode="global"`` with ``prompt`` (PODA: one style per image toward the domain); ``mode="patch"`` with
    ``labels`` and either ``prompt`` (zero-shot local styles: each patch toward ``class_template`` filled with its
    dominant class and the domain, or its ``class_prompts``) or ``class_styles=True`` (FAMix: a random style name
    per class). ``text_noise`` > 0 mines each item toward ``text_noise_draws`` noisy copies of its text target
    (:func:`styleda_fast.ops.text.noisy_text_projection`), in every mode.

    ``class_prompts`` is a path of a JSON file or a mapping; after creation it holds the checked mapping of class
    name -> tuple of prompts. :class:`MineError` for any bad option (one line, naming it).
    """

    images: str
    out: str
    prompt: str | None = None
    class_styles: bool = False
    labels: str | None = None
    mode: str = "global"
    class_template: str | None = None
    class_prompts: str | Path | Mapping | None = None
    text_noise: float = 0.0
    text_noise_draws: int = 1
    clip_model: str = "RN50"
    split_block: int | None = None
    clip_weights: str = "openai"
    grid: int = 3
    steps: int = 100
    batch_size: int = 16
    seed: int = 0
    crop: int | None = None
    templates: int | None = None
    feature_noise: float = 0.0
    pool_to: int = 56
    device: str | None = None
    threads: int | None = None
    max_chunks: int | None = None
    keep_negative_std: bool = False
    skip_bad_images: bool = False
    restart: bool = False
    prompt_lists: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_modes()
        self._check_numbers()
        prompts = read_class_prompts(self.class_prompts)
        object.__setattr__(self, "class_prompts", prompts or None)
        object.__setattr__(self, "prompt_lists", self._prompt_lists(prompts))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> MineConfig:
        """The config of parsed command-line arguments (``add_arguments``' options)."""
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})

    @property
    def zero_shot(self) -> bool:
        """Patch mode toward a domain prompt (not FAMix's random class styles)."""
        return self.mode == "patch" and self.prompt is not None

    @property
    def template(self) -> str:
        return self.class_template if self.class_template is not None else DEFAULT_CLASS_TEMPLATE

    def _check_modes(self) -> None:
        if self.mode not in ("global", "patch"):
            raise MineError(f"--mode must be global or patch, got {self.mode!r}")
        if self.prompt is not None and self.class_styles:
            raise MineError("give --prompt (a target domain) or --class-styles (FAMix's random styles), not both")
        if self.prompt is None and not self.class_styles:
            raise MineError("give --prompt TEXT (a target domain) or --class-styles (patch mode)")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()):
            raise MineError("--prompt must not be empty")
        if self.mode == "patch" and not self.labels:
            raise MineError("--mode patch needs --labels")
        if self.mode == "global" and self.class_styles:
            raise MineError("--class-styles needs --mode patch")
        if self.mode == "global" and self.labels:
            raise MineError("--labels is for --mode patch (global mode mines whole images)")
        for name in ("class_template", "class_prompts"):
            if getattr(self, name) is not None and not self.zero_shot:
                raise MineError(
                    f"--{name.replace('_', '-')} is for --mode patch with --prompt (zero-shot patch styles)"
                )
        if self.class_template is not None:
            if not isinstance(self.class_template, str) or not self.class_template.strip():
                raise MineError("--class-template must not be empty")
            template_fields(self.class_template)

    def _check_numbers(self) -> None:
        limits = {"steps": (0, None), "batch_size": (1, None), "grid": (1, None), "crop": (1, None),
                  "templates": (1, len(IMAGENET_TEMPLATES)), "pool_to": (0, None), "max_chunks": (0, None),
                  "seed": (0, 2**63 - 1), "split_block": (0, None), "text_noise_draws": (1, 4096),
                  "threads": (1, 4096)}  # fmt: skip
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise MineError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise MineError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
        for name in ("feature_noise", "text_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise MineError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.text_noise_draws > 1 and not self.text_noise:
            raise MineError("--text-noise-draws needs --text-noise SIGMA > 0 (draws without noise are one target)")

    def _prompt_lists(self, overrides: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]] | None:
        """Zero-shot patch mode: each class name's prompts (its ``class_prompts`` or the template filled in)."""
        if not self.zero_shot:
            return None
        return {
            name: overrides.get(name) or (compose_class_prompt(self.template, name, self.prompt),)
            for name in CITYSCAPES_CLASSES
        }
