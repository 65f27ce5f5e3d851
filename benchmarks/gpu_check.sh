#!/usr/bin/env bash
# Usage: benchmarks/gpu_check.sh OUT_DIR
# On a machine with a CUDA GPU and torch + triton already installed (no internet needed): builds the package in
# place, checks the Triton kernels against the float64 reference (gpu_check.py), runs the GPU tests when pytest is
# there, prints the compile report of every kernel (registers, spills, occupancy, vector width: styleda_fast.devtools.gpu_report)
# and runs the benchmark on CUDA, then checks achieved GB/s against a device copy and the targets of
# benchmarks/gpu_targets.md. Logs and JSON go to OUT_DIR. Budget: under 8 minutes.
set -uo pipefail
OUT="$(mkdir -p "${1:?usage: benchmarks/gpu_check.sh OUT_DIR}" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
status=0
step() { echo "== $1 ($(date -u +%T))"; }

step machine
{ date -u; nvidia-smi; python -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name()); print('triton', triton.__version__)"; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" | tail -3

step build
timeout 150 python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "build failed"; tail -20 "$OUT/build.log"; status=1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "compile report (sm_90)"
timeout 60 python -m styleda_fast.devtools.gpu_report --gpu sm_90 --json "$OUT/gpu_report.json" > "$OUT/gpu_report.log" 2>&1 || status=1
tail -2 "$OUT/gpu_report.log"; grep "^!" "$OUT/gpu_report.log" | head -10

step "kernel checks: style mix"
timeout 90 python benchmarks/gpu_check.py --out "$OUT" > "$OUT/check.log" 2>&1 || status=1
tail -3 "$OUT/check.log"; grep FAIL "$OUT/check.log" | head -20

step "kernel checks: class statistics"
timeout 60 python benchmarks/gpu_check_class_stats.py --out "$OUT/class_stats" > "$OUT/check_class_stats.log" 2>&1 || status=1
tail -3 "$OUT/check_class_stats.log"; grep FAIL "$OUT/check_class_stats.log" | head -20

if python -c "import pytest, hypothesis" 2>/dev/null; then
  step "pytest (GPU)"
  timeout 90 python -m pytest tests -q -x -p no:cacheprovider -k "triton" --ignore=tests/devtools/test_triton_compile.py \
    > "$OUT/pytest.log" 2>&1 || status=1
  tail -3 "$OUT/pytest.log"
fi

step benchmark
timeout 120 python -m styleda_fast.cli bench --device cuda --family style_mix --out "$OUT/style_mix" > "$OUT/bench.log" 2>&1 || status=1
timeout 60 python -m styleda_fast.cli bench --device cuda --family famix_step --family class_stats --family text --family mining \
  --no-compile --out "$OUT/others" >> "$OUT/bench.log" 2>&1 || status=1
timeout 150 python -m styleda_fast.cli bench --device cuda --family nn --family vit --family jobs --no-compile \
  --out "$OUT/layers_and_jobs" >> "$OUT/bench.log" 2>&1 || status=1
cat "$OUT/bench.log"

step "bandwidth targets (benchmarks/gpu_targets.md)"
python -m styleda_fast.devtools.gpu_report --check-bench "$OUT/style_mix/bench.json" | tee "$OUT/targets.md" || status=1
step "done (status $status)"
exit $status
