"""``styleda-fast bench``: times each operation against what a user would otherwise run (the public PODA/FAMix
code, ``torch.compile`` of the fastest plain PyTorch, a copy of the input), prints a table, writes JSON and a plot.

Families are registered here and nowhere else: a name and the module that builds its cases with
``cases(device, quick, full, compile_baseline) -> list[Case]`` (see :mod:`styleda_fast.bench.harness`). Modules
are imported only when their family runs; one whose optional dependency is missing is skipped with a message.
"""

from __future__ import annotations

from styleda_fast.bench import harness
from styleda_fast.bench.harness import Case

__all__ = ["FAMILIES", "Case", "run"]

FAMILIES: dict[str, str] = {
    "style_mix": "styleda_fast.bench.style_mix",
    "famix_step": "styleda_fast.bench.famix_step",
    "class_stats": "styleda_fast.bench.class_stats",
    "text": "styleda_fast.bench.text",
    "mining": "styleda_fast.bench.mining",
    "nn": "styleda_fast.bench.nn",
    "vit": "styleda_fast.bench.vit",
    "jobs": "styleda_fast.bench.jobs",
}
# what `styleda-fast bench` runs without --family (within about 3 minutes on 2 CPU cores); the others on request
DEFAULT_FAMILIES = ("style_mix", "famix_step", "class_stats", "text", "mining")

# the extra that installs a missing third-party module, for the skip message
EXTRAS = {"open_clip": "mining", "triton": "triton"}


def run(
    device: str | None = None,
    out_dir: str = "bench-out",
    quick: bool = False,
    compile_baseline: bool = True,
    families: list[str] | None = None,
    full: bool = False,
    busy_neighbour: bool = False,
) -> list[dict]:
    """Run the families named in ``families`` (default: :data:`DEFAULT_FAMILIES`); returns the table rows.
    ``busy_neighbour``: a process spins on one core during the run (small-tensor paths measured under load)."""
    families = list(families) if families else list(DEFAULT_FAMILIES)
    return harness.run(
        FAMILIES, device, out_dir, quick, compile_baseline, families, full, extras=EXTRAS, busy_neighbour=busy_neighbour
    )
