"""``styleda-fast mine``: mine a folder of images into a StyleBank (PODA's global PIN, zero-shot class-aware patch
styles toward a domain prompt, or FAMix's patch-wise PIN).

Work is cut into fixed chunks of ``--batch-size`` images (the public code's batches, in file-name order). Each
finished chunk is written at once to ``OUT.parts/`` (atomically), so an interrupted run resumes where it stopped.
Under ``torchrun`` the chunks are dealt round-robin to the ranks; a chunk's result does not depend on which rank
mines it (same weights, same per-chunk seeds), so the bank equals, bit for bit, the one a single process with the
same number of threads writes (``--threads``).

A run goes through these stages; every problem with the inputs is one line on stderr and exit status 2:

1. Every option is checked without writing anything (:class:`~styleda_fast.mining.config.MineConfig`): numbers,
   modes, the class template and prompts, the image folder and each image's and label map's header, the CLIP
   model name and weights, the device, the output path.
2. ``OUT.lock`` (next to the output) is locked (:mod:`~styleda_fast.mining.locks`): a second run into the same
   ``--out`` stops with the PID and host of the first. The CLIP model is loaded.
3. ``OUT.parts/`` is created, or reused when its ``run.json`` holds the same options
   (:mod:`~styleda_fast.mining.parts`).
4. Chunks are mined (:mod:`~styleda_fast.mining.chunks`; progress on stderr) and the bank is written atomically
   with its provenance (:mod:`~styleda_fast.mining.output`), followed by a report of the styles per class and of
   the skipped files. Ctrl-C (or SIGTERM) stops with exit status 130 (143) and the command that resumes the run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from styleda_fast.bank.style_bank import StyleBank
from styleda_fast.mining import distributed
from styleda_fast.mining.chunks import Encoder, mine_chunk
from styleda_fast.mining.clip import check_clip_model, check_clip_weights, load_clip
from styleda_fast.mining.config import DEFAULT_CLASS_TEMPLATE, FALLBACK, MineConfig, MineError
from styleda_fast.mining.engine import clip_image_head, clip_image_tail
from styleda_fast.mining.files import ImageFiles, scan_files, shown
from styleda_fast.mining.locks import OutputLock
from styleda_fast.mining.output import class_report, skip_report, write_bank
from styleda_fast.mining.parts import (
    check_out,
    chunk_bytes,
    chunk_file,
    chunk_skipped,
    disk_error,
    prepare_parts,
    run_record,
    write_atomic,
)
from styleda_fast.mining.progress import Console, Eta
from styleda_fast.mining.targets import PromptTargets

__all__ = ["FALLBACK", "MineConfig", "MineError", "add_arguments", "load_clip", "mine", "run"]


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to every option that has a default value (not to flags and unset options, whose
    help text says what happens without them)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and "(default:" not in text
            and action.default is not None
            and action.default is not False
        ):
            if action.default is not argparse.SUPPRESS and action.option_strings:
                text += " (default: %(default)s)"
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.description = (
        "Mine styles from a folder of images into a StyleBank file: PODA's global styles toward a target domain "
        "(--prompt, --mode global), zero-shot class-aware patch styles toward it (--prompt --mode patch --labels "
        "DIR) or FAMix's random class styles of image patches (--class-styles --mode patch --labels DIR). "
        "Finished chunks are kept in OUT.parts/, so the same command resumes an interrupted run."
    )
    add = parser.add_argument
    add("--images", required=True, metavar="DIR", help="folder of source images, mined in name order")
    add(
        "--labels",
        metavar="DIR",
        help="folder of train-id label PNGs named like the images (patch mode; Cityscapes' "
        "*_gtFine_labelTrainIds.png are found too) (default: none)",
    )
    add(
        "--prompt",
        metavar="TEXT",
        help="target domain, e.g. 'driving at night': global mode, or patch mode composed with each patch's class "
        "(--class-template) (default: none; give --prompt or --class-styles)",
    )
    add("--class-styles", action="store_true", help="patch mode, FAMix: '<random style> <class>' per patch")
    add(
        "--class-template",
        metavar="TEXT",
        help="patch mode with --prompt: the target of a patch, with {class} and {domain} placeholders "
        f"(default: '{DEFAULT_CLASS_TEMPLATE}')",
    )
    add(
        "--class-prompts",
        metavar="FILE",
        help="patch mode with --prompt: JSON object of class name -> prompt or list of prompts (one drawn per patch), "
        "replacing the template for those classes (default: none)",
    )
    add(
        "--text-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="std of Gaussian noise on each text target (per coordinate, then projected to the unit sphere)",
    )
    add(
        "--text-noise-draws",
        type=int,
        default=1,
        metavar="N",
        help="with --text-noise: noisy targets per item, each mined into a style of its own",
    )
    add(
        "--out",
        required=True,
        metavar="FILE",
        help="output bank, e.g. bank.safetensors; OUT.parts/ and OUT.lock are kept next to it while mining",
    )
    add(
        "--clip-model",
        default="RN50",
        metavar="NAME",
        help="open_clip ModifiedResNet (RN50, RN101, RN50x4, ...) or VisionTransformer (ViT-B-16, ... with "
        "--split-block) (a *-quickgelu name for OpenAI weights as a PATH)",
    )
    add(
        "--split-block",
        type=int,
        metavar="K",
        help="ViT models: mine on the tokens after the first K transformer blocks (0: after the patch embedding and "
        "ln_pre); the synthesized tokens use no ReLU (default: none; required for a ViT)",
    )
    add(
        "--clip-weights",
        default="openai",
        metavar="WEIGHTS",
        help="'openai' (downloaded once, then read from the cache), 'none' (random weights, offline) or the PATH "
        "of a state dict",
    )
    add(
        "--mode",
        choices=["global", "patch"],
        default="global",
        help="global: one style per image (PODA); patch: one style per patch class (FAMix)",
    )
    add("--grid", type=int, default=3, metavar="G", help="patch grid (patch mode); must divide the feature map")
    add("--steps", type=int, default=100, metavar="N", help="SGD steps per style (lr 1, momentum 0.9, wd 1e-4)")
    add("--batch-size", type=int, default=16, metavar="N", help="images per chunk (the public batch size)")
    add("--seed", type=int, default=0, help="seed of the random weights, FAMix's style draws and feature noise")
    add(
        "--crop",
        type=int,
        metavar="N",
        help="center-crop images (and labels) to N x N (default: whole images, of one size per chunk)",
    )
    add("--templates", type=int, metavar="N", help="use the first N ImageNet prompt templates (default: all 80)")
    add("--feature-noise", type=float, default=0.0, metavar="SIGMA", help="noise std on the synthesized features")
    add(
        "--pool-to",
        type=int,
        default=56,
        metavar="N",
        help="ResNet models: pool layer1 features to N x N (0: no pooling)",
    )
    add("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    add(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads per process; runs with the same N write bit-equal banks (default: torch's, 1 per process "
        "under torchrun)",
    )
    add("--max-chunks", type=int, metavar="N", help="stop after N chunks; rerun to continue (default: all)")
    add(
        "--keep-negative-std",
        action="store_true",
        help="keep mined std values below 0, as the public code does (default: clamp std to >= sqrt(1e-5))",
    )
    add(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images and label maps, list them at the end (default: stop with an error)",
    )
    add(
        "--restart",
        action="store_true",
        help="discard the finished chunks in OUT.parts/ of an earlier run and start over (default: resume them)",
    )


def check_device(device_arg: str | None) -> str:
    """The device string to use; ``MineError`` for unknown devices and CUDA without CUDA."""
    if device_arg is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except (RuntimeError, ValueError):
        raise MineError(f"--device {device_arg}: not a device; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise MineError(f"--device {device_arg}: the mining runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            raise MineError(f"--device {device_arg}: CUDA is not available (this torch {built}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MineError(f"--device {device_arg}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device_arg


@dataclass
class RunState:
    """What an interrupted or failed run needs to clean up and report."""

    world: int
    parts: Path | None = None
    lock: OutputLock | None = None
    validating: bool = False
    argv: list[str] | None = None  # the command line (None: called from Python)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """The command: ``args`` from :func:`add_arguments`; ``argv`` the command line, for the resume hint. Returns
    the exit status; raises :class:`MineError` (rank 0) for a problem with the inputs."""
    rank = int(os.environ.get("RANK", "0"))
    state = RunState(world=int(os.environ.get("WORLD_SIZE", "1")), validating=True,
                     argv=sys.argv[1:] if argv is None else argv)  # fmt: skip
    return _guarded(lambda console: MineConfig.from_namespace(args), rank, state)


def mine(config: MineConfig) -> StyleBank | None:
    """Run a mining job from Python: the same stages as the command (resumable parts, lock, torchrun ranks).
    Returns the bank written (None on ranks other than 0, or when ``max_chunks`` left chunks to mine); raises
    :class:`MineError` for a problem with the inputs and ``KeyboardInterrupt`` when interrupted (the finished
    chunks are kept)."""
    if not isinstance(config, MineConfig):
        raise TypeError(f"config must be a MineConfig, got {type(config).__name__}")
    rank = int(os.environ.get("RANK", "0"))
    state = RunState(world=int(os.environ.get("WORLD_SIZE", "1")), validating=True)
    console = Console(rank)
    try:
        return _run(config, console, state)
    finally:
        console.end_line()
        if state.lock is not None:
            state.lock.release()


def _guarded(make_config, rank: int, state: RunState) -> int:
    console = Console(rank)
    try:
        _run(make_config(console), console, state)
        return 0
    except KeyboardInterrupt as exc:
        console.end_line()
        if rank == 0:
            print(interrupted_message(state), file=sys.stderr, flush=True)
        return 128 + (exc.args[0] if exc.args and isinstance(exc.args[0], int) else 2)
    except distributed.OtherRankFailed:
        console.end_line()
        return 2
    except MineError:
        console.end_line()
        if rank != 0 and state.validating:
            return 2  # every rank checks the same arguments; rank 0 reports
        raise
    finally:
        if state.lock is not None:
            state.lock.release()


def interrupted_message(state: RunState) -> str:
    """What was kept and the command that resumes the run."""
    parts = state.parts
    kept = len(list(parts.glob("chunk-*.safetensors"))) if parts is not None and parts.is_dir() else 0
    where = f"kept in {shown(parts)}" if kept else "kept"
    if state.argv is None:
        return f"interrupted: {kept} finished chunk(s) {where}; run the same MineConfig again to resume"
    argv = [a for a in state.argv if not (a.startswith("--re") and "--restart".startswith(a))]
    if Path(sys.argv[0]).name.startswith("styleda-fast"):
        head = ["styleda-fast"] if shutil.which("styleda-fast") == sys.argv[0] else [sys.argv[0]]
    elif state.world > 1:
        head = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', state.world)}", "-m",
                "styleda_fast.cli"]  # fmt: skip
    else:
        head = [sys.executable, "-m", "styleda_fast.cli"]
    if argv[:1] != ["mine"]:
        argv = ["mine", *argv]
    return f"interrupted: {kept} finished chunk(s) {where}; resume with: {shlex.join(head + argv)}"


def _run(config: MineConfig, console: Console, state: RunState) -> StyleBank | None:
    threads = torch.get_num_threads()
    try:
        return _stages(config, console, state)
    finally:
        torch.set_num_threads(threads)  # --threads is this run's, not the calling program's


def _stages(config: MineConfig, console: Console, state: RunState) -> StyleBank | None:
    try:
        import open_clip  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as exc:
        raise MineError(f"{exc}; install the mining extra: pip install --no-build-isolation '.[mining]'") from exc

    # 1. every option, nothing written yet
    state.validating = True
    out = Path(config.out)
    check_out(out)
    device_name = check_device(config.device)
    check_clip_model(config.clip_model, config.split_block)
    weights = check_clip_weights(config.clip_model, config.clip_weights)
    files = scan_files(config)
    state.validating = False
    if files.not_regular:
        console.say(f"skipping {len(files.not_regular)} entries that are not regular files: "
                    + ", ".join(files.not_regular), err=True)  # fmt: skip
    if config.threads is not None:
        torch.set_num_threads(config.threads)

    # 2. the lock, then the model
    rank, world, device = distributed.start(device_name)
    state.world = world
    parts = out.with_name(out.name + ".parts")

    def lock():
        if rank == 0:
            state.lock = OutputLock(out)
            state.lock.acquire()

    distributed.together(world, device, lock)
    model, tokenizer = distributed.together(
        world, device, lambda: load_clip(config.clip_model, config.clip_weights, config.seed, checked=weights)
    )
    model = model.to(device)
    if config.split_block is None:
        head = clip_image_head(model.visual)
        tail = clip_image_tail(model.visual, pool_to=config.pool_to or None)
    else:
        head = clip_image_head(model.visual, split_block=config.split_block)
        tail = clip_image_tail(model.visual, split_block=config.split_block)
    encoder = Encoder(head, tail, PromptTargets(model, tokenizer, config.templates), device)

    # 3. OUT.parts/
    def prepare():
        if rank == 0:
            try:
                note = prepare_parts(parts, run_record(config, files), config.restart)
            except OSError as exc:
                raise disk_error(exc, parts) from None
            if note:
                console.say(note, err=True)

    distributed.together(world, device, prepare)
    state.parts = parts

    # 4. mining
    chunks = [list(range(k, min(k + config.batch_size, len(files.images))))
              for k in range(0, len(files.images), config.batch_size)]  # fmt: skip
    done_before = [chunk_file(parts, k).exists() for k in range(len(chunks))]
    mine_here = [k for k in range(len(chunks)) if k % world == rank and not done_before[k]]
    if config.max_chunks is not None:
        mine_here = mine_here[: config.max_chunks]
    share = f", {len(mine_here)} of them here (rank {rank})" if world > 1 else ""
    console.say(
        f"mining {len(files.images)} images in {len(chunks)} chunks of {config.batch_size} on {world} process(es) "
        f"({device.type}, {torch.get_num_threads()} thread(s) each), {sum(done_before)} chunks done before{share}"
    )
    _mine_chunks(mine_here, chunks, files, config, encoder, parts, console)
    distributed.barrier(world)
    bank = None
    if rank == 0:
        finished = [chunk_file(parts, k) for k in range(len(chunks))]
        if all(p.exists() for p in finished):
            results, skipped = [], list(files.skipped)
            for p in finished:
                results.append(load_file(str(p)))
                skipped += chunk_skipped(p)
            bank = write_bank(out, results, config, files, world)
            shutil.rmtree(parts)
            console.say(f"wrote {shown(out)}")
            console.say(class_report(bank))
            if skipped or files.not_regular:
                console.say(skip_report(skipped, files.not_regular))
        else:
            missing = sum(not p.exists() for p in finished)
            console.say(f"stopped with {missing} chunks left; run the same command again to continue")
    distributed.barrier(world)
    return bank


def _mine_chunks(
    mine_here: list[int], chunks: list[list[int]], files: ImageFiles, config: MineConfig, encoder: Encoder,
    parts: Path, console: Console,
) -> None:  # fmt: skip
    """Mine the chunks ``mine_here`` (indices into ``chunks``), writing each one's part as it finishes. Progress
    names a chunk by its number among all chunks of the run."""
    eta = Eta(len(mine_here))
    try:
        for k in mine_here:
            eta.start_chunk()
            where = f"chunk {k + 1}/{len(chunks)}"

            def show(done, total, where=where):
                console.progress(f"mining {where}: step {done}/{total}, {eta.left(done, total)}")

            result, skipped = mine_chunk(k, chunks[k], files, config, encoder, show)
            try:
                write_atomic(chunk_file(parts, k), chunk_bytes(result, skipped))
            except OSError as exc:
                raise disk_error(exc, chunk_file(parts, k)) from None
            eta.finish_chunk()
            styles = len(result["mean"])
            console.progress(f"mining {where} done ({styles} style{'s' * (styles != 1)}), {eta.left()}", final=True)
            for line in skipped:
                console.say(f"skipped: {line}", err=True)
    finally:
        console.end_line()
