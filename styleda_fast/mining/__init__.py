"""Style mining: optimise the statistics of low-level CLIP features until the image embedding matches a text
target (PODA's PIN, FAMix's patch-wise PIN), and the ``styleda-fast mine`` command that does it for folders.

- ``engine``: the CLIP image head/tail split, :func:`mine_styles`, patch selection;
- ``command``: the ``styleda-fast mine`` command (files, locks, resumable parts, torch.distributed).

Importing this package does not import open_clip; the command does, when it runs.
"""

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
    "MiningResult",
    "PatchSelection",
    "clip_image_head",
    "clip_image_tail",
    "crop_patches",
    "mine_styles",
    "select_patches",
]
