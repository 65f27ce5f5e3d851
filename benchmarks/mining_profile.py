"""Where one FAMix mining batch of ``styleda-fast mine`` spends its time on the CPU, by torch.profiler: stages
(the frozen head, patch selection, prompt encoding, the mining loop) and, inside them, operator classes
(convolutions forward and backward, the package's operators, other ATen operators, Python and everything the
profiler does not see as an operator).

    PYTHONPATH=$PWD python benchmarks/mining_profile.py [--crop 192] [--images 16] [--steps 3] [--templates 4]

The defaults are the CPU jobs benchmark's (``styleda_fast.bench.jobs``: 16 images of 192 px, 4 templates) with a
random-weight open_clip RN50. One untimed warm-up batch first. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("head forward", "patch selection", "prompt encoding", "mining loop")


def op_class(name: str) -> str:
    """The class of a profiler event by its operator name."""
    if name.startswith("styleda_fast::"):
        return "our operators (styleda_fast::*)"
    if "convolution_backward" in name or name.startswith("aten::mkldnn_convolution_backward"):
        return "convolutions, backward"
    if name in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
                "aten::_mkldnn_convolution", "aten::thnn_conv2d"):  # fmt: skip
        return "convolutions, forward"
    if name.startswith("aten::") or name.startswith("autograd::") or name.startswith("Optimizer."):
        return "other ATen operators (incl. autograd engine)"
    return None


def run_batch(parts, steps: int, profile_ranges: bool):
    import torch

    from styleda_fast.mining.engine import mine_styles, select_patches
    from styleda_fast.ops.text import encode_prompts
    from styleda_fast.ops.text.prompts import famix_descriptions

    head, tail, model, tokenizer, images, labels, templates = parts
    rf = torch.profiler.record_function if profile_ranges else _nothing
    with rf("head forward"), torch.no_grad():
        features = head(images).float()
    with rf("patch selection"):
        selection = select_patches(features, labels, grid=3)
        content, class_ids = selection.content, selection.class_ids.tolist()
        descriptions = famix_descriptions(class_ids, generator=torch.Generator().manual_seed(0))
        reference = len(descriptions)
        content = torch.cat([content, content[:1]])
        descriptions.append("photo")
    with rf("prompt encoding"):
        targets = encode_prompts(model, tokenizer, descriptions, templates)
    with rf("mining loop"):
        mine_styles(tail, content, targets, steps=steps, clamp_std=False, reference_batch_size=reference)


class _nothing:
    def __init__(self, *_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--templates", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch
    from torch.profiler import ProfilerActivity, profile

    from styleda_fast.bench.jobs import IMAGENET_TEMPLATES, _clip, mining_batch
    from styleda_fast.mining.engine import clip_image_head, clip_image_tail

    model, tokenizer = _clip(torch.device("cpu"))
    visual = model.visual.eval()
    images, labels = mining_batch(args.images, args.crop)
    parts = (clip_image_head(visual), clip_image_tail(visual), model, tokenizer, images, labels,
             IMAGENET_TEMPLATES[: args.templates])  # fmt: skip
    run_batch(parts, args.steps, False)  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_batch(parts, args.steps, True)
    wall = time.perf_counter() - start

    # Stage totals from the record_function ranges; operator classes from each top-level operator's self time
    # attributed to the stage whose range contains it.
    events = prof.events()
    ranges = {e.name: e.time_range for e in events if e.name in STAGES}
    table = defaultdict(float)  # (stage, class) -> us
    for e in events:
        cls = op_class(e.name)
        if cls is None:
            continue
        stage = next((s for s, r in ranges.items() if r.start <= e.time_range.start < r.end), "outside")
        table[stage, cls] += e.self_cpu_time_total
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images of {args.crop} px, "
          f"{args.steps} steps, {args.templates} templates; profiled wall {wall * 1e3:.0f} ms (profiler overhead "
          f"included); load {Path('/proc/loadavg').read_text().split()[:3]}")  # fmt: skip
    print()
    print("| stage | class | ms | % of stage |")
    print("|---|---|---|---|")
    for stage in STAGES:
        total = (ranges[stage].end - ranges[stage].start) if stage in ranges else 0.0
        classes = {c: t for (s, c), t in table.items() if s == stage}
        seen = sum(classes.values())
        print(f"| **{stage}** | total | {total / 1e3:.1f} | 100 |")
        for cls, t in sorted(classes.items(), key=lambda kv: -kv[1]):
            print(f"| | {cls} | {t / 1e3:.1f} | {100 * t / max(total, 1e-9):.0f} |")
        rest = total - seen
        print(f"| | Python and untraced (stage total - operators) | {rest / 1e3:.1f} | "
              f"{100 * rest / max(total, 1e-9):.0f} |")  # fmt: skip
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
