"""Style mining: optimise the statistics of low-level CLIP features until the image embedding matches a text
target (PODA's PIN, FAMix's patch-wise PIN, zero-shot class-aware patch styles), and the ``styleda-fast mine``
command that does it for folders (user guide: ``README.md`` next to this file).

- ``engine``: the CLIP image head/tail split, :func:`mine_styles`, patch selection;
- ``config``: :class:`MineConfig`, every option of a run, checked once;
- ``command``: the command (argparse, the stages of a run) and :func:`mine`, the same from Python;
- ``files``, ``clip``, ``targets``, ``chunks``, ``parts``, ``locks``, ``distributed``, ``progress``, ``output``:
  images and labels, the CLIP model, text targets, one chunk's mining, resumable parts, the output lock,
  torchrun, the console, the bank written with its provenance.

Importing this package does not import open_clip; a run does, when it starts.
"""

from styleda_fast.mining.command import mine
from styleda_fast.mining.config import DEFAULT_CLASS_TEMPLATE, MineConfig, MineError
from styleda_fast.mining.engine import (
    MiningResult,
    PatchSelection,
    clip_image_head,
    clip_image_tail,
    crop_patches,
    mine_styles,
    select_patches,
)

__all__ = [
    "DEFAULT_CLASS_TEMPLATE",
    "MineConfig",
    "MineError",
    "MiningResult",
    "PatchSelection",
    "clip_image_head",
    "clip_image_tail",
    "crop_patches",
    "mine",
    "mine_styles",
    "select_patches",
]
