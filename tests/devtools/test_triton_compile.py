"""Every Triton kernel compiled for sm_80 and sm_90 as a launch at the test and benchmark shapes would run it
(``styleda_fast.devtools.gpu_report``), without a GPU: it compiles, does not spill, leaves at least 25% occupancy,
and its loads and stores of streamed tensors are 128-bit vectors where alignment allows.

Compiling happens in one subprocess without ``TRITON_INTERPRET`` (set by conftest.py for the other tests; Triton's
own reduction helpers are interpreter functions in such a process). Results are cached on disk
(``~/.cache/styleda_fast/gpu-compile``, or ``STYLEDA_FAST_GPU_CACHE``) by Triton version, kernel source and launch
specialization. ``STYLEDA_FAST_GPU_COMPILE_ALL=1`` checks every variant instead of the representative set.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from styleda_fast import gpu_report  # noqa: E402

pytestmark = pytest.mark.skipif(
    not gpu_report.nvidia_backend_available(), reason="this Triton has no NVIDIA backend to compile with"
)

EVERYTHING = os.environ.get("STYLEDA_FAST_GPU_COMPILE_ALL") == "1"
VARIANTS = gpu_report.variants(EVERYTHING)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The report's rows for every variant and target (one subprocess)."""
    out = tmp_path_factory.mktemp("gpu") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_root = str(Path(gpu_report.__file__).resolve().parents[2])  # this checkout, not another install
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "styleda_fast.devtools.gpu_report", "--json", str(out)]
    args += ["--all"] if EVERYTHING else []
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if not out.exists():
        pytest.fail(f"gpu_report did not finish (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return json.loads(out.read_text())


def _variant_param(v):
    marks = [pytest.mark.xfail(reason=v.known, strict=True)] if v.known else []
    return pytest.param(v.name, marks=marks, id=v.name)


@pytest.mark.parametrize("gpu", sorted(gpu_report.GPUS))
@pytest.mark.parametrize("variant", [_variant_param(v) for v in VARIANTS])
def test_kernel_compiles_without_spills_at_occupancy_with_vector_accesses(rows, variant, gpu):
    mine = [r for r in rows if r["gpu"] == gpu and r["variant"].split(" [")[0] == variant]
    assert mine, f"{variant} was not compiled for {gpu}"
    problems = [f"{r['variant']} ({r['kernel']}): {p}" for r in mine for p in r["problems"]]
    assert not problems, "\n".join(problems)


def test_plans_carry_the_launch_specialization(rows):
    """Aligned tensors and integers divisible by 16 are specialized as a launch would; odd sizes are not."""
    famix = next(r for r in rows if r["variant"] == "forward famix g3 fp32 nchw" and r["gpu"] == "sm_90")
    assert {"x_ptr", "out_ptr", "width", "stride_c", "stride_h"} <= set(famix["divisible_by_16"])
    assert famix["signature"]["stride_w"] == "constexpr"  # == 1: Triton makes it a constant
    odd = next(r for r in rows if r["variant"].startswith("forward test (2,3,13,17)") and r["gpu"] == "sm_90")
    assert "width" not in odd["divisible_by_16"] and "stride_h" not in odd["divisible_by_16"]


def test_streamed_tensors_are_found_in_the_ptx(rows):
    """The access tracing names x and out for the style-mix forward (the check above would be vacuous without)."""
    famix = next(r for r in rows if r["variant"] == "forward famix g3 fp32 nchw" and r["gpu"] == "sm_90")
    tensors = {(s["kind"], s["tensor"]) for s in famix["sites"]}
    assert {("ld", "x_ptr"), ("st", "out_ptr")} <= tensors
    assert famix["streamed"] == ["out_ptr", "x_ptr"]


def test_occupancy_rule():
    h100 = gpu_report.GPUS["sm_90"]
    assert gpu_report.blocks_per_sm(32, 8, 0, h100) == 8  # 64 warps: the warp limit
    assert gpu_report.blocks_per_sm(128, 8, 0, h100) == 2  # 128 regs * 256 threads = 32768 per block
    assert gpu_report.blocks_per_sm(130, 4, 0, h100) == 3  # 136 regs allocated (granularity 8 per thread)
    assert gpu_report.blocks_per_sm(32, 4, 100 * 1024, h100) == 2  # shared memory (+1 KB per block)
