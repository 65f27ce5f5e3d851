"""GPU truth check of the Triton kernels, without pytest: compares every operation on CUDA tensors with the
float64 reference at small odd shapes and at the FAMix shape, in all dtypes (bfloat16 included, which the
interpreter cannot run), both layouts, in place, under CUDA graph capture (kernels must use the current stream)
and for run-to-run determinism. Writes gpu_check.json to --out. Exit status 1 if any check failed.

    python benchmarks/gpu_check.py --out OUT_DIR            (on a CUDA machine)
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --small --out OUT_DIR   (a dry run on CPU)
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path

import torch

from styleda_fast.devtools.testing import STYLE_MIX_CASES, TOLERANCE, relative_error  # noqa: E402

TOL = TOLERANCE
rel_error = relative_error


def checks(device: torch.device, small: bool):
    import styleda_fast
    from styleda_fast import local_style_mix, patch_mean_std, use_backend
    from styleda_fast.ops.style_mix import reference

    shapes = list(STYLE_MIX_CASES)
    if not small:
        shapes += [((2, 256, 192, 192), (3, 3)), ((2, 256, 192, 192), (1, 1)), ((1, 64, 97, 301), (3, 5))]
    dtypes = [torch.float32, torch.float64, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
    gen = torch.Generator().manual_seed(0)
    for shape, grid in shapes:
        B, C = shape[:2]
        x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5
        sm = torch.randn(B, C, *grid, generator=gen, dtype=torch.float64)
        ss = torch.rand(B, C, *grid, generator=gen, dtype=torch.float64) + 0.5
        mix = torch.rand(B, C, generator=gen, dtype=torch.float64)
        ref = reference.local_style_mix(x64, sm, ss, grid, mix[:, :, None, None].expand_as(sm))
        ref_mean, ref_std = reference.patch_mean_std(x64, grid)
        for dtype in dtypes:
            for layout in ("nchw", "channels_last"):
                x = x64.to(device=device, dtype=dtype)
                if layout == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                name = f"{shape} grid {grid} {dtype} {layout}"
                with use_backend("triton"):
                    y = local_style_mix(x, sm.to(device), ss.to(device), grid=grid, mix=mix.to(device))
                    yield f"forward {name}", rel_error(y, ref), TOL[dtype]
                    mean, std = patch_mean_std(x, grid)
                    yield f"mean {name}", rel_error(mean, ref_mean), TOL[dtype]
                    yield f"std {name}", rel_error(std, ref_std), TOL[dtype]
                    out = x.clone()
                    local_style_mix(out, sm.to(device), ss.to(device), grid=grid, mix=mix.to(device), out=out)
                    yield f"in place {name}", rel_error(out, ref), TOL[dtype]
                    y2 = local_style_mix(x, sm.to(device), ss.to(device), grid=grid, mix=mix.to(device))
                    yield f"deterministic {name}", 0.0 if torch.equal(y, y2) else float("inf"), 0.0
        # gradients in float32 against float64 autograd
        leaves = [t.clone().requires_grad_() for t in (x64, sm, ss, mix)]
        reference.local_style_mix(leaves[0], leaves[1], leaves[2], grid, leaves[3][:, :, None, None]).backward(
            torch.ones_like(x64)
        )
        ours = [t.detach().to(device, torch.float32).requires_grad_() for t in (x64, sm, ss, mix)]
        with use_backend("triton"):
            local_style_mix(ours[0], ours[1], ours[2], grid=grid, mix=ours[3]).backward(
                torch.ones(shape, device=device)
            )
        for label, a, r in zip(("x", "style_mean", "style_std", "mix"), ours, leaves):
            yield f"grad {label} {shape} grid {grid} float32", rel_error(a.grad, r.grad), 1e-4
    yield from token_grid_checks(device, small)
    yield from dsu_checks(device)
    if device.type == "cuda":
        yield from graph_capture_check(device, local_style_mix)
    yield "backends", 0.0 if styleda_fast.backends()["triton"].available else float("inf"), 0.0


def token_grid_checks(device, small: bool):
    """ViT tokens (B, 1 + h*w, C) read and written in place through tokens_as_grid (each tensor its own batch
    stride in the kernels): forward, out= into the patch tokens (the class token untouched), the gradient."""
    from styleda_fast import local_style_mix, tokens_as_grid, use_backend
    from styleda_fast.ops.style_mix import reference

    gen = torch.Generator().manual_seed(1)
    shapes = [(2, 7, 5, 40, (2, 3))] + ([] if small else [(8, 48, 48, 768, (1, 1)), (3, 14, 14, 768, (3, 3))])
    for B, h, w, C, grid in shapes:
        tokens64 = torch.randn(B, 1 + h * w, C, generator=gen, dtype=torch.float64) * 2 + 1
        sm = torch.randn(B, C, *grid, generator=gen, dtype=torch.float64)
        ss = torch.rand(B, C, *grid, generator=gen, dtype=torch.float64) + 0.5
        grid64 = tokens64[:, 1:].transpose(1, 2).reshape(B, C, h, w)
        ref = reference.local_style_mix(grid64, sm, ss, grid, None, None)
        name = f"tokens ({B}, 1+{h}x{w}, {C}) grid {grid}"
        with use_backend("triton"):
            tokens = tokens64.to(device, torch.float32)
            y = local_style_mix(tokens_as_grid(tokens, h, w), sm.to(device), ss.to(device), grid=grid, activation=None)
            yield f"forward {name}", rel_error(y, ref), TOL[torch.float32]
            yield f"forward strides {name}", 0.0 if y.stride() == tokens_as_grid(tokens, h, w).stride() else 1.0, 0.0
            cls = tokens[:, :1].clone()
            view = tokens_as_grid(tokens, h, w)
            local_style_mix(view, sm.to(device), ss.to(device), grid=grid, activation=None, out=view)
            yield f"in place {name}", rel_error(view, ref), TOL[torch.float32]
            yield f"class token untouched {name}", 0.0 if torch.equal(tokens[:, :1], cls) else 1.0, 0.0
            leaf = tokens64.to(device, torch.float32).requires_grad_()
            local_style_mix(tokens_as_grid(leaf, h, w), sm.to(device), ss.to(device), grid=grid).sum().backward()
        leaf64 = tokens64.clone().requires_grad_()
        grid_leaf = leaf64[:, 1:].transpose(1, 2).reshape(B, C, h, w)
        reference.local_style_mix(grid_leaf, sm, ss, grid, None, "relu").sum().backward()
        yield f"grad tokens {name}", rel_error(leaf.grad, leaf64.grad), 1e-4


def dsu_checks(device):
    """DSU's two-pass backward on Triton (local_style_mix_grad_x) against the differentiable composite in float64."""
    from styleda_fast import use_backend
    from styleda_fast.nn.functional import _dsu_composite, dsu

    gen = torch.Generator().manual_seed(2)
    for shape in ((8, 64, 56, 56), (1, 16, 9, 7), (5, 32, 33, 17)):
        B, C = shape[:2]
        x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
        noise = [torch.randn(B, C, generator=gen, dtype=torch.float64) for _ in range(2)]
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        leaf64 = x64.clone().requires_grad_()
        with use_backend("reference"):
            expected = _dsu_composite(leaf64, *noise, 1e-6)
            expected.backward(grad)
        leaf = x64.to(device, torch.float32).requires_grad_()
        with use_backend("triton"):
            y = dsu(leaf, *(n.to(device) for n in noise))
            y.backward(grad.to(device, torch.float32))
        yield f"dsu forward {shape}", rel_error(y, expected), 1e-5
        yield f"dsu grad x {shape}", rel_error(leaf.grad, leaf64.grad), 1e-4


def graph_capture_check(device, local_style_mix):
    """Kernels launched on the current stream replay correctly from a CUDA graph."""
    x = torch.randn(2, 16, 33, 31, device=device) * 2 + 1
    sm, ss = torch.randn(2, 16, 3, 3, device=device), torch.rand(2, 16, 3, 3, device=device) + 0.5
    eager = local_style_mix(x, sm, ss, grid=3)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        local_style_mix(x, sm, ss, grid=3)  # warm-up (compiles) off the default stream
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = local_style_mix(x, sm, ss, grid=3)
    x.mul_(1.5)
    graph.replay()
    torch.cuda.synchronize(device)
    yield "cuda graph replay", rel_error(y, local_style_mix(x, sm, ss, grid=3)), 1e-6
    yield "cuda graph differs from stale", 0.0 if not torch.equal(y, eager) else float("inf"), 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small shapes only")
    args = parser.parse_args()
    device = torch.device(args.device)
    results, failed = [], 0
    try:
        for name, error, tol in checks(device, args.small):
            ok = error <= tol
            failed += not ok
            results.append({"check": name, "rel_error": error, "tolerance": tol, "ok": ok})
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {error:.3g} (tol {tol:g})", flush=True)
    except Exception:
        failed += 1
        results.append({"check": "exception", "ok": False, "traceback": traceback.format_exc()})
        traceback.print_exc()
    info = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
