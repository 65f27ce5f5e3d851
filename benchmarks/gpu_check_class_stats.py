"""GPU truth check of the class-statistics Triton kernels, without pytest: dominant class and class_mean_std on
CUDA tensors against the references, at small odd shapes and at the FAMix shapes, in every dtype (bfloat16 included,
which the interpreter cannot run), run-to-run determinism (bitwise), and under CUDA graph capture (kernels must use
the current stream). Writes gpu_check_class_stats.json to --out. Exit status 1 if any check failed.

    python benchmarks/gpu_check_class_stats.py --out OUT_DIR
    TRITON_INTERPRET=1 python benchmarks/gpu_check_class_stats.py --device cpu --small --out OUT_DIR   (dry run)
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch


def labels_like(shape, K, block, seed):
    from styleda_fast.devtools.testing import random_labels

    return random_labels(shape, K, block=block, seed=seed, ignore_frac=0.2)


def checks(device: torch.device, small: bool):
    import styleda_fast
    from styleda_fast.ops.class_stats import reference as ref

    label_cases = [((2, 17, 23), (3, 3), 4, 1), ((1, 5, 7), (5, 7), 3, 1), ((2, 64, 48), (3, 2), 19, 4)]
    stat_cases = [((2, 5, 17, 23), 7, 1), ((1, 3, 1, 1), 4, 1), ((2, 8, 40, 33), 19, 4)]
    if not small:
        label_cases += [((8, 768, 768), (3, 3), 19, 32), ((2, 1023, 2049), (5, 7), 19, 17)]
        stat_cases += [((8, 256, 192, 192), 19, 8), ((2, 64, 97, 301), 40, 5)]
    with styleda_fast.use_backend("triton"):
        for shape, grid, K, block in label_cases:
            labels = labels_like(shape, K, block, seed=sum(shape))
            for count_ignore in (True, False):
                expected = ref.patch_dominant_class_bincount(labels, grid, K, 255, count_ignore)
                for dtype in (torch.int64, torch.int32, torch.uint8):
                    got = styleda_fast.patch_dominant_class(
                        labels.to(device, dtype), grid, num_classes=K, count_ignore=count_ignore
                    )
                    ok = torch.equal(got.cpu(), expected)
                    yield {"op": "patch_dominant_class", "shape": shape, "grid": grid, "dtype": str(dtype), "ok": ok}
        for shape, K, block in stat_cases:
            B, C, H, W = shape
            gen = torch.Generator().manual_seed(sum(shape))
            x64 = torch.randn(shape, generator=gen, dtype=torch.float64) + 100.0
            labels = labels_like((B, H, W), K, block, seed=sum(shape))
            e_mean, e_std, e_count = ref.class_mean_std(x64, labels, K)
            dtypes = [torch.float32, torch.float64, torch.float16] + ([torch.bfloat16] if device.type == "cuda" else [])
            for dtype in dtypes:
                x = x64.to(device, dtype)
                lab = labels.to(device)
                e_mean_d, e_std_d, _ = ref.class_mean_std(x.double().cpu(), labels, K)  # reference of the rounded x
                mean, std, count = styleda_fast.class_mean_std(x, lab, K)
                mean2, std2, _ = styleda_fast.class_mean_std(x, lab, K)
                err_mean = (mean.double().cpu() - e_mean_d).abs().max().item()
                err_std = (std.double().cpu() - e_std_d).abs().max().item()
                tol = 1e-9 if dtype == torch.float64 else 1e-4
                ok = (
                    torch.equal(count.cpu(), e_count)
                    and err_mean <= tol * 100
                    and err_std <= tol * 10
                    and torch.equal(mean, mean2)
                    and torch.equal(std, std2)
                )
                yield {
                    "op": "class_mean_std",
                    "shape": shape,
                    "dtype": str(dtype),
                    "err_mean": err_mean,
                    "err_std": err_std,
                    "deterministic": torch.equal(mean, mean2) and torch.equal(std, std2),
                    "ok": ok,
                }
        if device.type == "cuda":  # CUDA graph capture: the kernels must run on the current stream
            x = (torch.randn(2, 16, 40, 40) + 10).to(device)
            lab = labels_like((2, 40, 40), 19, 4, seed=1).to(device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                from styleda_fast.ops.class_stats import _triton as tk

                tk.class_mean_std(x, lab, 19, 1e-5)
                tk.patch_dominant_class(lab, 3, 3, 19, 255, True)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                g_mean, _, _ = tk.class_mean_std(x, lab, 19, 1e-5)
                g_dom = tk.patch_dominant_class(lab, 3, 3, 19, 255, True)
            x.add_(1.0)
            graph.replay()
            torch.cuda.synchronize()
            e_mean, _, _ = ref.class_mean_std(x.double().cpu(), lab.cpu(), 19)
            ok = (g_mean.double().cpu() - e_mean).abs().max().item() < 1e-3 and torch.equal(
                g_dom.cpu(), ref.patch_dominant_class_bincount(lab.cpu(), (3, 3), 19)
            )
            yield {"op": "cuda graph capture", "ok": ok}


def timings(device: torch.device):
    import styleda_fast
    from styleda_fast.ops.class_stats import reference as ref

    def t(fn, reps=20):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps * 1e3

    labels = labels_like((8, 768, 768), 19, 32, seed=0).to(device)
    x = (torch.randn(8, 256, 192, 192) + 100).to(device)
    y = torch.empty_like(x)
    flab = labels[:, ::4, ::4].contiguous()
    return {
        "dominant ours ms": t(lambda: styleda_fast.patch_dominant_class(labels, 3)),
        "dominant torch.mode loop ms": t(lambda: ref.patch_dominant_class_loop(labels, (3, 3)), 3),
        "class_mean_std ours ms": t(lambda: styleda_fast.class_mean_std(x, flab, 19)),
        "copy ms": t(lambda: y.copy_(x)),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    device = torch.device(args.device)
    results, failed = [], 0
    try:
        for r in checks(device, args.small):
            results.append(r)
            failed += not r["ok"]
            print(("ok   " if r["ok"] else "FAIL ") + json.dumps(r, default=str))
        if device.type == "cuda" and not args.small:
            results.append({"timings": timings(device)})
            print(results[-1])
    except Exception:
        failed += 1
        results.append({"error": traceback.format_exc()})
        print(traceback.format_exc())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check_class_stats.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"{len(results)} results, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
