"""Ahead-of-time GPU report of the Triton kernels: compile each launch plan for sm_80 / sm_90 without a GPU and read
registers, spills, shared memory, occupancy, vector width of global accesses and a bandwidth bound.

``styleda-fast gpu-report`` (or ``python -m styleda_fast.devtools.gpu_report``) prints one table row per kernel variant;
``tests/devtools/test_triton_compile.py`` asserts on the same numbers.

What a row means (per target, i.e. per GPU model below):

* Variants are the launch plans (``plan_*`` of each family's ``_triton.py``) at the test and benchmark shapes, built
  from ``meta`` tensors: the plan's signature, constexprs and specialization (16-byte aligned pointers, integers
  equal to 1 or divisible by 16) come from Triton's own launch binder, so the compiled kernel is the one a launch
  at that shape runs.
* ``regs``/``smem``: from the cubin (``cuobjdump --dump-resource-usage``); ``spill``: bytes of spill stores + loads
  from ``ptxas -v`` on the same PTX with Triton's flags (a stack frame alone is not a spill: ``sin``/``cos`` keep a
  small local array for huge arguments). More than ``SPILL_ALLOWANCE`` (16) bytes fails: ptxas spills a few bytes
  on its own to stay on an occupancy step (80 registers and 24 warps/SM rather than 88 and 16).
* ``warps/SM``: resident warps per SM, the CUDA occupancy rule: registers are allocated per warp in units of 256
  (``ceil(regs * 32 / 256) * 256``) out of 65,536 per SM; shared memory per block is the kernel's plus 1 KB
  reserved; at most 64 warps and 32 blocks per SM. ``blocks/SM = min(32, 64 // W, 65536 // (W * regs_per_warp),
  smem_per_SM // (smem + 1024))`` for ``W = num_warps``; occupancy = warps/SM / 64.
* ``ld``/``st``: the narrowest width, in bits, of the PTX's global loads (stores) of streamed tensors. Each access
  is traced from its address register back to the kernel argument it points into; streamed tensors are the
  arguments of at least 1 MiB with at least 64 elements per program (x, out, gradients; not per-channel
  parameters or scratch). 128 means every access to them is a 128-bit vector; ``-``: the kernel has none.
* ``B/prog``: bytes the launch moves (reads + writes, every pass over an input counted) / programs; ``x min``: the
  same bytes / the least a kernel must move (each tensor argument read or written once).
* ``bound``: Little's law. Sustaining a bandwidth ``BW`` at a loaded DRAM latency ``L`` needs ``BW * L`` bytes of
  loads in flight. A program keeps ``bytes_per_step`` in flight (one tile of each input it streams, issued before
  the first is used); ``min(programs, SMs * blocks/SM)`` programs are resident. bound = ``min(1, resident *
  bytes_per_step / (BW * L))``: the fraction of peak bandwidth the loads can reach at best (a model: it ignores
  stores, L2 hits of a second pass and instruction limits).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from styleda_fast.core.checks import acc_dtype


@dataclasses.dataclass(frozen=True)
class GPUModel:
    """What the occupancy and bandwidth model needs to know of a GPU."""

    name: str
    capability: int
    sms: int
    bandwidth: float  # bytes/s, DRAM peak
    latency: float  # s, loaded DRAM latency (an assumption of the model)
    smem_per_sm: int  # bytes usable by blocks (the 1 KB per block reserve comes off this)
    regs_per_sm: int = 65536
    max_warps: int = 64
    max_blocks: int = 32


# sm_80: A100 SXM 80 GB; sm_90: H100 SXM (HBM3). The H200 (4.8 TB/s) needs 1.43x the H100's bytes in flight.
GPUS = {
    "sm_80": GPUModel("A100", 80, 108, 2.04e12, 700e-9, 164 * 1024),
    "sm_90": GPUModel("H100", 90, 132, 3.35e12, 700e-9, 228 * 1024),
}
MIN_WARPS_PER_SM = 16  # 25% occupancy
# ptxas itself spills a few bytes to stay on an occupancy step (e.g. 80 registers, 24 warps/SM, rather than 88 and
# 16 warps/SM); those few bytes stay in L1. Up to this many bytes of spill stores (and loads) per thread pass.
SPILL_ALLOWANCE = 16


# ---------------------------------------------------------------- variants


@dataclasses.dataclass(frozen=True)
class Variant:
    """A launch at a given shape: ``build(module)`` returns its plans from the family's compile-mode module."""

    family: str
    name: str
    build: Callable
    core: bool = True  # in the default set (the test and the default report); else only with --all
    vector: bool = True  # rows are contiguous and aligned at this shape: streamed accesses must reach 128 bits
    known: str = ""  # a known shortfall (the test expects it to fail, strictly, with this reason)


FAMIX = (8, 256, 192, 192)


def _meta(shape, dtype=torch.float32, channels_last=False):
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _style_mix(op: str, shape, grid: int, dtype, channels_last: bool, mix: bool):
    def build(m):
        x = _meta(shape, dtype, channels_last)
        B, C = shape[:2]

        def param():
            return torch.empty((B, C, grid, grid), dtype=acc_dtype(dtype), device="meta")

        like = torch.empty_like(x)
        w = param() if mix else None
        if op == "forward":
            return m.plan_forward(x, like, param(), param(), param(), param(), w, grid, grid, True, 1e-5)
        if op == "stats":
            return m.plan_forward(x, None, param(), param(), None, None, None, grid, grid, False, 1e-5)
        if op == "backward":
            grad_out = torch.empty_like(x)
            return m.plan_backward(grad_out, x, like, param(), param(), param(), param(), w, param(), param(), True)
        if op == "grad_x":  # local_style_mix_grad_x (DSU's second backward pass): sums given
            grad_out = torch.empty_like(x)
            own = (param(), param())
            return m.plan_backward(
                grad_out, x, like, param(), param(), param(), param(), w, param(), param(), False, own_grads=own
            )
        return m.plan_backward(None, x, like, param(), param(), None, None, None, param(), param(), False)

    return build


def _style_mix_variants() -> list[Variant]:
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    core = {
        ("forward", 3, torch.float32, False, True),
        ("forward", 1, torch.float32, False, True),
        ("forward", 3, torch.float32, True, True),
        ("forward", 1, torch.float32, True, True),
        ("forward", 3, torch.float16, False, False),
        ("forward", 1, torch.bfloat16, False, True),
        ("forward", 3, torch.float16, True, True),
        ("stats", 3, torch.float32, False, False),
        ("backward", 3, torch.float32, False, True),
        ("backward", 1, torch.float32, False, True),
        ("backward", 3, torch.float32, True, True),
        ("backward", 1, torch.float32, True, True),
        ("backward", 3, torch.bfloat16, False, False),
        ("stats_backward", 1, torch.float32, False, False),
        ("grad_x", 1, torch.float32, False, False),
    }
    variants = []
    for op in ("forward", "stats", "backward", "stats_backward", "grad_x"):
        for grid in (3, 1):
            for dtype in names:
                for channels_last in (False, True):
                    for mix in (True, False) if op in ("forward", "backward") else (False,):
                        if op == "grad_x" and grid == 3:
                            continue  # DSU: global statistics only
                        suffix = "" if mix or op in ("stats", "stats_backward", "grad_x") else " nomix"
                        name = (
                            f"{op} {'famix g3' if grid == 3 else 'poda g1'} {names[dtype]} "
                            f"{'cl' if channels_last else 'nchw'}{suffix}"
                        )
                        key = (op, grid, dtype, channels_last, mix)
                        build = _style_mix(op, FAMIX, grid, dtype, channels_last, mix)
                        variants.append(Variant("style_mix", name, build, core=key in core))
    # a test shape: odd sizes, nothing aligned (scalar accesses are all that is possible)
    variants.append(
        Variant(
            "style_mix",
            "forward test (2,3,13,17) g3 fp32 nchw",
            _style_mix("forward", (2, 3, 13, 17), 3, torch.float32, False, True),
            vector=False,
        )
    )
    return variants


def _class_stats_variants() -> list[Variant]:
    def dominant(m):
        labels = _meta((8, 768, 768), torch.int64)
        out = torch.empty((8, 3, 3), dtype=torch.int64, device="meta")
        return m.plan_patch_dominant_class(labels, out, 3, 3, 19, 255, True)

    one_hot = (
        "class_mean_std compares each pixel with all KP class slots in registers ([KP, BLOCK]): 2 pixels per thread "
        "(64-bit fp32 loads) cost 117-128 registers; 4 pixels per thread compared a quarter at a time gave 128-bit "
        "loads at 121-126 registers with triton 3.8 but 191-199 with triton 3.6 (8 warps/SM), so not adopted; "
        "the fix is a tl.dot over blocks of 16 channels sharing the labels (to be timed on a GPU)"
    )

    one_hot_nhwc = (
        "the channels-last class_mean_std kernel sums [BLOCK_P=8, BLOCK_C=32] tiles through a [KP, BLOCK_P, BLOCK_C] "
        "one-hot product: 143-145 registers at 4 warps (12 warps/SM), 64-bit x loads (2 fp32 per thread) and, at "
        "8x256x192x192, only 64 programs (image x channel block; bound 3%); the fix is a tl.dot of the (KP, BLOCK_P) "
        "one-hot with the tile and a split of the pixels with a merge of partial sums (to be timed on a GPU)"
    )

    def stats(dtype, layout="nchw"):
        def build(m):
            if layout == "tokens":  # a ViT-B/16 at 768 px: 48x48 patch tokens after the class token
                from styleda_fast.nn.tokens import tokens_as_grid

                x = tokens_as_grid(_meta((8, 1 + 48 * 48, 768), dtype), 48, 48, 1)
            else:
                x = _meta(FAMIX, dtype, channels_last=layout == "cl")
            B, C, H, W = x.shape
            labels = _meta((B, H, W), torch.int64)
            mean = torch.empty((B, 19, C), dtype=acc_dtype(dtype), device="meta")
            count = torch.empty((B, 19), dtype=torch.int64, device="meta")
            return m.plan_class_mean_std(x, labels, mean, torch.empty_like(mean), count, 19, 1e-5)

        return build

    return [
        Variant("class_stats", "dominant class 8x768x768 g3 int64", dominant),
        Variant("class_stats", "class_mean_std fp32 K=19", stats(torch.float32), known=one_hot),
        Variant("class_stats", "class_mean_std fp16 K=19", stats(torch.float16), core=False, known=one_hot),
        Variant("class_stats", "class_mean_std bf16 K=19", stats(torch.bfloat16), core=False, known=one_hot),
        Variant("class_stats", "class_mean_std fp32 K=19 cl", stats(torch.float32, "cl"), known=one_hot_nhwc),
        Variant(
            "class_stats", "class_mean_std fp32 K=19 vit tokens", stats(torch.float32, "tokens"), known=one_hot_nhwc
        ),
    ]


def _text_variants() -> list[Variant]:
    D = 1024

    def noisy(K, dtype=torch.float32):
        def build(m):
            text = _meta((K, D), dtype)
            out = _meta((K, 1, D), dtype)
            norm = torch.empty((K, 1), dtype=acc_dtype(dtype), device="meta")
            return m.plan_noisy_text_projection(text, out, norm, 0.03, 2**40 + 7, 0)

        return build

    def noisy_backward(K, S=1):
        def build(m):
            text, out = _meta((K, D)), _meta((K, S, D))
            return m.plan_noisy_text_projection_backward(
                torch.empty_like(out), text, out, _meta((K, S)), torch.empty_like(text)
            )

        return build

    def loss(K):
        def build(m):
            return m.plan_clip_cosine_loss(_meta((K, D)), _meta((K, D)), _meta(()))

        return build

    def loss_backward(K, grad_text):
        def build(m):
            image, text = _meta((K, D)), _meta((K, D))
            return m.plan_clip_cosine_loss_backward(
                _meta(()), image, text, torch.empty_like(image), torch.empty_like(text) if grad_text else None
            )

        return build

    shape = (16, 256, 64, 64)

    def features(noise):
        def build(m):
            xn = _meta(shape)
            return m.plan_noisy_style_features(
                xn, torch.empty_like(xn), _meta((16, 256)), _meta((16, 256)), 0.1 if noise else 0.0, 5, 9
            )

        return build

    def features_backward(m):
        xn, p = _meta(shape), _meta((16, 256))
        grad_out, grad_xn = torch.empty_like(xn), torch.empty_like(xn)
        return m.plan_noisy_style_features_backward(
            grad_out, xn, p, p, grad_xn, torch.empty_like(p), torch.empty_like(p)
        )

    return [
        Variant("text", "noisy text K=10000 D=1024 fp32", noisy(10000)),
        Variant("text", "noisy text K=19 D=1024 fp16", noisy(19, torch.float16), core=False),
        Variant("text", "noisy text backward K=10000", noisy_backward(10000)),
        Variant("text", "cosine loss K=10000", loss(10000)),
        Variant("text", "cosine loss K=19 (one program)", loss(19), core=False),
        Variant("text", "cosine loss backward K=10000", loss_backward(10000, True)),
        Variant("text", "noisy features (16,256,64,64)", features(True)),
        Variant("text", "noisy features no noise", features(False), core=False),
        Variant("text", "noisy features backward", features_backward),
    ]


def variants(everything: bool = False, families: list[str] | None = None) -> list[Variant]:
    """The variants of the default set (every kernel, each axis of the matrix at least once), or all of them."""
    found = _style_mix_variants() + _class_stats_variants() + _text_variants()
    return [v for v in found if (everything or v.core) and (not families or v.family in families)]


# ---------------------------------------------------------------- compiling


def nvidia_backend_available() -> bool:
    """Whether this Triton can compile for NVIDIA GPUs (its backend and ptxas/cuobjdump are installed)."""
    try:
        import triton.backends
    except ImportError:
        return False
    return "nvidia" in getattr(triton.backends, "backends", {}) and _tool("cuobjdump").exists()


def _tool(name: str) -> Path:
    import triton.backends.nvidia

    return Path(triton.backends.nvidia.__file__).parent / "bin" / name


def interpreting() -> bool:
    """Whether TRITON_INTERPRET is on: Triton's own helpers (reductions) are then interpreter functions, so this
    process cannot compile; :func:`main` reruns itself in a subprocess without it."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off")


def family_module(family: str):
    """The family's ``_triton`` module (its ``plan_*`` functions)."""
    if interpreting():
        raise RuntimeError("compiling needs a process without TRITON_INTERPRET (see devtools.gpu_report.main)")
    return importlib.import_module(f"styleda_fast.ops.{family}._triton")


def specialize(plan, target):
    """``(signature, constexprs, attrs, options)`` of ``plan`` as Triton's launcher would derive them for ``target``."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = plan.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(plan.constexprs, num_warps=plan.num_warps, debug=False)
    bound_args, specialization, options = binder(*plan.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def _cache_dir() -> Path:
    base = os.environ.get("STYLEDA_FAST_GPU_CACHE") or Path.home() / ".cache" / "styleda_fast" / "gpu-compile"
    return Path(base)


_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+")
_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')
_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)+)")
_PARAM = re.compile(r"ld\.param\.\w+\s+(%\w+),\s*\[\w+_param_(\d+)\]")
_REG = re.compile(r"%[a-z]+\d+")


def access_sites(ptx: str, params: list[str]) -> list[dict]:
    """Global load/store sites of the PTX, one per (kind, tensor, source line).

    The tensor of an access is the kernel argument its address comes from: the address register is traced back
    through the instructions that define it to the ``ld.param`` of a pointer argument (``params`` names the PTX
    parameters in order). ``bits`` are the access widths at the site, ``bytes`` what one thread moves there.
    """
    files, line_no, sources, origin, accesses = {}, 0, {}, {}, []
    for line in ptx.splitlines():
        text = line.split("//")[0].strip()
        if m := _FILE.match(text):
            files[m.group(1)] = m.group(2)
            continue
        if m := _LOC.match(text):
            line_no = int(m.group(2))
            continue
        if not text or text[0] in ".${}":
            continue
        text = re.sub(r"^@!?%\w+\s+", "", text)
        if m := _PARAM.match(text):
            origin[m.group(1)] = int(m.group(2))
            continue
        if m := _ACCESS.match(text):
            mods = m.group(2).split(".")
            vec = next((int(x[1:]) for x in mods if re.fullmatch(r"v\d", x)), 1)
            bits = next((int(x[1:]) for x in mods if re.fullmatch(r"[bsuf]\d+", x)), 32)
            address = _REG.findall(text[text.index("[") : text.index("]")])
            accesses.append((m.group(1), line_no, vec * bits, address))
            continue
        operands = text.split(None, 1)[1] if " " in text or "\t" in text else ""
        regs = _REG.findall(operands)
        if regs and not text.startswith(("st.", "red.", "bar", "@")):
            sources.setdefault(regs[0], set()).update(regs[1:])

    memo: dict[str, frozenset] = {}

    def reached(reg: str) -> frozenset:
        if reg in memo:
            return memo[reg]
        memo[reg] = frozenset()  # cycles (loop-carried registers)
        found, stack, seen = set(), [reg], {reg}
        while stack:
            r = stack.pop()
            if r in origin:
                found.add(origin[r])
            for src in sources.get(r, ()):
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
        memo[reg] = frozenset(found)
        return memo[reg]

    sites: dict[tuple, dict] = {}
    for kind, line_no, bits, address in accesses:
        indices = set().union(*(reached(r) for r in address)) if address else set()
        names = sorted(params[i] for i in indices if i < len(params) and params[i].endswith("*"))
        tensor = ",".join(n.rstrip("*") for n in names) or "?"
        entry = sites.setdefault((kind, tensor, line_no), {"bits": [], "bytes": 0})
        entry["bits"].append(bits)
        entry["bytes"] += bits // 8
    return [
        {"kind": k, "tensor": t, "line": ln, "bits": sorted(set(e["bits"])), "bytes": e["bytes"]}
        for (k, t, ln), e in sorted(sites.items())
    ]


def streamed(plan) -> set[str]:
    """Names of the kernel arguments a launch streams: tensors of at least 1 MiB with at least 64 elements per
    program (per-channel parameters and scratch are not)."""
    import torch as _torch

    names = [p.name for p in plan.kernel.params if not p.is_constexpr]
    found = set()
    for name, arg in zip(names, plan.args):
        if isinstance(arg, _torch.Tensor):
            if arg.numel() * arg.element_size() >= 1 << 20 and arg.numel() >= 64 * plan.programs:
                found.add(name)
    return found


def narrowest(plan, result: dict, kind: str) -> int | None:
    """The narrowest access width (bits) of ``kind`` ("ld"/"st") to a streamed tensor; None: no such access."""
    names = streamed(plan)
    widths = [min(s["bits"]) for s in result["sites"] if s["kind"] == kind and set(s["tensor"].split(",")) & names]
    return min(widths) if widths else None


def _resources(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the cubin's kernel (cuobjdump)."""
    path = Path(_cache_dir()) / f"tmp-{os.getpid()}.cubin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cubin)
    try:
        text = subprocess.run(
            [str(_tool("cuobjdump")), "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        path.unlink(missing_ok=True)
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    return {k.lower(): int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}


def _ptxas_flags() -> list[str]:
    """The flags Triton's own ptxas call uses besides -v and --gpu-name (so the figures are those of its cubin)."""
    import inspect

    from triton.backends.nvidia.compiler import CUDABackend

    source = inspect.getsource(CUDABackend.make_cubin)
    return ["-lineinfo"] + (["--regAllocOptLevel=2"] if "regAllocOptLevel=2" in source else [])


def _ptxas_report(ptx: str, capability: int) -> dict:
    """Registers, stack frame and spill bytes from ``ptxas -v`` on the PTX."""
    path = Path(_cache_dir()) / f"tmp-{os.getpid()}.ptx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ptx)
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    try:
        run = subprocess.run(
            [str(_tool("ptxas")), *_ptxas_flags(), "-v", f"--gpu-name={arch}", str(path), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        path.unlink(missing_ok=True)

    def number(pattern: str) -> int:
        m = re.search(pattern, run.stderr)
        return int(m.group(1)) if m else 0

    return {
        "regs": number(r"Used (\d+) registers"),
        "stack_frame": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


def compile_plan(plan, gpu: str, use_cache: bool = True) -> dict:
    """Compile ``plan`` for ``gpu`` (a key of GPUS) and return its figures (cached on disk by source and plan)."""
    import triton
    from triton.backends.compiler import GPUTarget

    model = GPUS[gpu]
    target = GPUTarget("cuda", model.capability, 32)
    signature, constexprs, attrs, options = specialize(plan, target)
    key_text = json.dumps(
        [
            triton.__version__,
            hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),  # this analysis
            plan.kernel.cache_key,  # the kernel's source and the functions it calls
            signature,
            sorted((str(k), str(v)) for k, v in constexprs.items()),
            sorted((str(k), str(v)) for k, v in attrs.items()),
            plan.num_warps,
            model.capability,
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    cached = _cache_dir() / f"{key}.json"
    if use_cache and cached.exists():
        return json.loads(cached.read_text())
    from triton.compiler import ASTSource

    start = time.perf_counter()
    source = ASTSource(fn=plan.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=target, options=options.__dict__)
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    resources = _resources(cubin)
    params = [
        f"{name}*" if str(kind).startswith("*") else name for name, kind in signature.items() if kind != "constexpr"
    ]
    sites = access_sites(ptx, params)
    result = {
        "kernel": plan.kernel.__name__,
        "signature": signature,
        "divisible_by_16": sorted(list(signature)[k[0]] for k, v in attrs.items() if v),
        "constexprs": {str(k): str(v) for k, v in constexprs.items()},
        "num_warps": plan.num_warps,
        "regs": resources["reg"],
        "stack": resources["stack"],
        "local": resources.get("local", 0),
        "smem": compiled.metadata.shared,
        "sites": sites,
        **{k: v for k, v in _ptxas_report(ptx, model.capability).items() if k != "regs"},
        "compile_s": round(time.perf_counter() - start, 2),
    }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------- the model


def blocks_per_sm(regs: int, num_warps: int, smem: int, model: GPUModel) -> int:
    """Resident blocks per SM (the CUDA occupancy rule described in the module docstring)."""
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    limits = [model.max_blocks, model.max_warps // num_warps, model.regs_per_sm // (num_warps * regs_per_warp)]
    if smem:
        limits.append(model.smem_per_sm // (smem + 1024))
    return max(0, min(limits))


def figures(plan, result: dict, gpu: str) -> dict:
    """The row of one compiled plan: occupancy, traffic per program and the bandwidth bound."""
    model = GPUS[gpu]
    blocks = blocks_per_sm(result["regs"], plan.num_warps, result["smem"], model)
    resident = min(plan.programs, model.sms * blocks)
    in_flight = resident * plan.bytes_per_step
    seen, least = set(), 0
    for arg in plan.args:
        if isinstance(arg, torch.Tensor) and id(arg) not in seen:
            seen.add(id(arg))
            least += arg.numel() * arg.element_size()
    return {
        "traffic_ratio": plan.bytes_moved / max(least, 1),
        "warps_per_sm": blocks * plan.num_warps,
        "occupancy": blocks * plan.num_warps / model.max_warps,
        "programs": plan.programs,
        "bytes_per_program": plan.bytes_moved / max(plan.programs, 1),
        "in_flight_per_sm": in_flight / model.sms,
        "bound": min(1.0, in_flight / (model.bandwidth * model.latency)),
    }


def problems(plan, result: dict, fig: dict, vector: bool) -> list[str]:
    """What the compile test asserts, as messages (empty: the variant is good)."""
    found = []
    if result["spill_stores"] > SPILL_ALLOWANCE or result["spill_loads"] > SPILL_ALLOWANCE:
        found.append(
            f"spills: {result['spill_stores']} B stores, {result['spill_loads']} B loads ({result['regs']} registers)"
        )
    if fig["warps_per_sm"] < MIN_WARPS_PER_SM:
        found.append(
            f"{fig['warps_per_sm']} warps/SM < {MIN_WARPS_PER_SM} (25% occupancy): {result['regs']} registers, "
            f"num_warps {plan.num_warps}, shared {result['smem']} B"
        )
    if vector:
        names = streamed(plan)
        for kind in ("ld", "st"):
            narrow = [
                f"{s['tensor']} line {s['line']}: {s['bits']} bits, {s['bytes']} B/thread"
                for s in result["sites"]
                if s["kind"] == kind and set(s["tensor"].split(",")) & names and min(s["bits"]) < 128
            ]
            if narrow:
                found.append(f"{kind}.global of streamed tensors narrower than 128 bits: {'; '.join(narrow)}")
    return found


# ---------------------------------------------------------------- report


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def report_rows(selected: list[Variant], gpus: list[str], log=None) -> list[dict]:
    rows = []
    for variant in selected:
        plans = variant.build(family_module(variant.family))
        for i, plan in enumerate(plans):
            for gpu in gpus:
                result = compile_plan(plan, gpu)
                fig = figures(plan, result, gpu)
                row = {
                    "family": variant.family,
                    "variant": variant.name + (f" [{i + 1}/{len(plans)}]" if len(plans) > 1 else ""),
                    "gpu": gpu,
                    "kernel": result["kernel"],
                    "constexprs": result["constexprs"],
                    "num_warps": plan.num_warps,
                    **{k: result[k] for k in ("regs", "smem", "sites")},
                    "spill": result["spill_stores"] + result["spill_loads"],
                    "ld_bits": narrowest(plan, result, "ld"),
                    "st_bits": narrowest(plan, result, "st"),
                    "streamed": sorted(streamed(plan)),
                    "signature": result["signature"],
                    "divisible_by_16": result["divisible_by_16"],
                    **fig,
                    "problems": problems(plan, result, fig, variant.vector),
                    "known": variant.known,
                }
                rows.append(row)
                if log:
                    log(row)
    return rows


HEADER = (
    "| variant | kernel | sm | warps | regs | spill | smem | warps/SM | ld | st | B/prog | x min | in flight/SM "
    "| bound |\n" + "|---" * 14 + "|"
)


def format_row(r: dict) -> str:
    return (
        f"| {r['variant']} | {r['kernel'].lstrip('_').removesuffix('_kernel')} | {r['gpu'][3:]} | {r['num_warps']} "
        f"| {r['regs']} | {r['spill']} | {_fmt_bytes(r['smem'])} | {r['warps_per_sm']} "
        f"| {r['ld_bits'] or '-'} | {r['st_bits'] or '-'} | {_fmt_bytes(r['bytes_per_program'])} "
        f"| {r['traffic_ratio']:.2f} "
        f"| {_fmt_bytes(r['in_flight_per_sm'])} | {r['bound']:.0%} |"
        + ((" (known)" if r["known"] else " **!**") if r["problems"] else "")
    )


def check_bench(path: str) -> int:
    """Achieved bandwidth against a device copy of x and the targets of benchmarks/gpu_targets.md, from the
    ``bench.json`` of ``styleda-fast bench --family style_mix``.

    A case's bytes are the least its kernels must move: forward 2 x (read x, write out), forward+backward 5 x (also
    read x and grad_out, write grad_x); the copy moves 2 x. So % of copy = (bytes / t) / (2 x / t_copy).
    """
    rows = json.loads(Path(path).read_text())["results"]
    by_case: dict[tuple, dict] = {}
    for r in rows:
        by_case.setdefault((r["family"], r["case"]), {})[r["provider"]] = r
    failed = checked = 0
    print("| case | provider | ms | GB/s | copy GB/s | % of copy | vs compile | target | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (family, case), providers in by_case.items():
        if family != "style_mix" or "copy" not in providers:
            continue
        backward = "forward+backward" in case
        name = "ours" if backward else "ours (out=)"
        if name not in providers:
            continue
        x_bytes_ratio = 5.0 if backward else 2.0  # the case's bytes / x's bytes
        copy_ms, ms = providers["copy"]["ms"], providers[name]["ms"]
        share = (x_bytes_ratio / ms) / (2.0 / copy_ms)
        copy_gbs = _gbs(providers["copy"]) * 2.0 / x_bytes_ratio  # the harness counts the case's bytes for the copy
        vs_compile = providers[name].get("speedup_vs_compile")
        need = 0.55 if backward else 0.85
        ok = share >= need and (vs_compile is None or vs_compile >= 1.5)
        checked += 1
        failed += not ok
        print(
            f"| {case} | {name} | {ms:.3f} | {_gbs(providers[name]):.0f} | {copy_gbs:.0f} | {share:.0%} "
            f"| {'-' if vs_compile is None else f'{vs_compile:.2f}x'} | >= {need:.0%} of copy, >= 1.5x compile "
            f"| {'yes' if ok else 'NO'} |"
        )
    print(f"{checked - failed} passed, {failed} failed")
    return 1 if failed or not checked else 0


def _gbs(row: dict) -> float:
    return row.get("GB/s") or (row.get("throughput") if row.get("throughput_unit") == "GB/s" else 0.0) or 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="styleda-fast gpu-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every variant (default: the representative set)")
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--gpu", action="append", choices=sorted(GPUS), help="targets (default: sm_80 and sm_90)")
    parser.add_argument("--sites", action="store_true", help="also list each global access site")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--check-bench", metavar="BENCH_JSON", help="check a bench.json against the GB/s targets")
    args = parser.parse_args(argv)
    if interpreting() and not args.check_bench:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run([sys.executable, "-m", "styleda_fast.devtools.gpu_report", *argv], env=env).returncode
    if args.check_bench:
        return check_bench(args.check_bench)
    if not nvidia_backend_available():
        print("styleda-fast gpu-report: this Triton has no NVIDIA backend (or no cuobjdump)", file=sys.stderr)
        return 2
    import triton

    gpus = args.gpu or ["sm_80", "sm_90"]
    today = datetime.datetime.now(datetime.timezone.utc)
    print(f"triton {triton.__version__}, torch {torch.__version__}, {today:%Y-%m-%d %H:%M} UTC")
    print(
        ", ".join(
            f"{g}: {m.name} {m.sms} SMs {m.bandwidth / 1e12:.2f} TB/s, {m.latency * 1e9:.0f} ns"
            for g, m in GPUS.items()
            if g in gpus
        )
    )
    print(HEADER)
    rows = report_rows(variants(args.all, args.family), gpus, log=lambda r: print(format_row(r), flush=True))
    bad = [r for r in rows if r["problems"] and not r["known"]]
    for r in rows:
        if r["problems"]:
            print(f"{'known' if r['known'] else '!'}  {r['variant']} ({r['gpu']}): " + "; ".join(r["problems"]))
    for reason in sorted({r["known"] for r in rows if r["problems"] and r["known"]}):
        print(f"known shortfall: {reason}")
    if args.sites:
        for r in rows:
            print(f"\n{r['variant']} ({r['gpu']}, {r['kernel']}):")
            for s in r["sites"]:
                print(f"  {s['kind']} {s['tensor']:14} line {s['line']:4} bits {s['bits']} {s['bytes']} B/thread")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    known = sum(bool(r["problems"] and r["known"]) for r in rows)
    print(f"{len(rows) - len(bad) - known} good, {known} known shortfalls, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
