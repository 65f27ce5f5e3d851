"""The harness itself (plain tests, skipped under --benchmark-only): noise flags, the table, the family registry."""

import importlib

import torch

from styleda_fast.bench import FAMILIES, harness
from styleda_fast.bench.harness import Case, Timing, case_rows, format_table, looks_quantized, measure, noise_reason


def test_scheduler_ticks_are_flagged():
    assert looks_quantized([16.0, 15.99, 16.01, 16.0, 17.3])
    assert looks_quantized([8.0, 8.0, 7.98])
    assert looks_quantized([31.99, 28.03, 26.92, 37.04, 28.02, 31.55, 32.40])  # a different tick per call
    assert not looks_quantized([15.7, 16.3, 15.2, 16.8, 16.4])
    assert not looks_quantized([16.0, 17.3, 17.1, 16.9, 17.4])  # one call on a tick: chance
    assert not looks_quantized([0.012, 0.013, 0.012])
    assert noise_reason(Timing([10.0, 10.2, 10.1, 10.3, 10.1], 12.0)) is None
    assert noise_reason(Timing([10.0, 14.0, 10.1, 19.0, 10.1], 12.0)) == "spread"
    assert noise_reason(Timing([24.0, 24.0, 23.99, 24.01, 24.0], 30.0)) == "quantum"


def test_noisy_provider_is_rerun_once_then_flagged():
    calls = []

    def fn():
        calls.append(1)
        harness.time.sleep(0.001 if len(calls) % 2 else 0.006)  # alternating: spread far above 20%

    t = measure(fn, torch.device("cpu"), budget_s=0.0)
    assert t.reruns == 1 and t.noise in ("spread", "quantum")  # "quantum" when the sleeps land on a busy tick


def test_table_shows_shapes_ratios_and_marks():
    providers = {"copy": None, "ours": None, "compile": None, "public": None}
    case = Case("fam", "a case", "(8, 256, 192, 192)", providers, replaces="public", bytes_moved=10**9)
    timings = {
        "copy": Timing([10.0] * 5, 10.0),
        "ours": Timing([12.0, 12.1, 12.2, 12.1, 12.0], 20.0),
        "compile": Timing([60.0] * 5, 9000.0),
        "public": Timing([1200.0, 1300.0], 1500.0, noise="spread"),
    }
    rows = case_rows(case, timings)
    ours = next(r for r in rows if r["provider"] == "ours")
    assert abs(ours["speedup_vs_replaced"] - 1250 / 12.1) < 1e-9 and abs(ours["speedup_vs_compile"] - 60 / 12.1) < 1e-9
    table = format_table(rows)
    assert "(8, 256, 192, 192)" in table and "~1250.0" in table and "replaced" in table
    mining = Case(
        "mining", "mine", "(48, 256, 64, 64)", {"ours": None}, replaces="ours", floor=None, items=(48, "styles")
    )
    row = case_rows(mining, {"ours": Timing([2000.0, 2000.0], 2000.0)})[0]
    assert row["x_copy"] is None and row["throughput_unit"] == "styles/s" and row["throughput"] == 24.0


def test_every_registered_family_defines_cases():
    for name, path in FAMILIES.items():
        try:
            module = importlib.import_module(path)
        except ImportError as exc:  # an optional dependency (open_clip for mining)
            assert not (exc.name or "").startswith("styleda_fast"), (name, exc)
            continue
        assert callable(module.cases), name


# ---------------------------------------------------------------- rows measured while busy (issue 23.2)


def _case_and_timings(others_ours: float | None, noise: str | None = None):
    providers = {"copy": None, "ours": None, "public": None}
    case = Case("fam", "a case", "(2, 3)", providers, replaces="public", bytes_moved=10**6)
    timings = {
        "copy": Timing([1.0] * 7, 1.0, others=0.0),
        "ours": Timing([2.0] * 7, 2.0, others=others_ours, noise=noise),
        "public": Timing([100.0] * 7, 100.0, others=0.0),
    }
    return case, timings


def test_rows_measured_while_busy_are_not_results():
    case, timings = _case_and_timings(others_ours=1.5)
    rows = case_rows(case, timings)
    assert [r["result"] for r in rows] == [False, False, False]  # one busy provider spoils the case's ratios
    assert {r["not_a_result"] for r in rows} == {"busy"}
    table = format_table(rows)
    assert table.count("busy: not a result") == 3
    assert "50.0x" not in table  # the ratio public / ours is not shown
    notes = harness.footnotes(rows)
    assert "results: 0 of 3 rows." in notes and "not a result (3 of 3 rows)" in notes

    quiet = case_rows(*_case_and_timings(others_ours=0.1))
    assert all(r["result"] for r in quiet) and "results: 3 of 3 rows." in harness.footnotes(quiet)
    assert "50.0x" in format_table(quiet) and "not a result" not in format_table(quiet)

    tick = case_rows(*_case_and_timings(others_ours=None, noise="quantum"))
    assert {r["not_a_result"] for r in tick} == {"quantum"} and "tick: not a result" in format_table(tick)

    rough = case_rows(*_case_and_timings(others_ours=0.0, noise="spread"))  # rough, but a result
    assert all(r["result"] for r in rough) and "~2.00" in format_table(rough)


def test_plot_greys_out_rows_that_are_not_results(tmp_path):
    matplotlib = __import__("pytest").importorskip("matplotlib")
    matplotlib.use("Agg")
    texts, hatches = [], []
    import matplotlib.axes

    original_text, original_barh = matplotlib.axes.Axes.text, matplotlib.axes.Axes.barh

    def text(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original_text(self, x, y, s, *args, **kwargs)

    def barh(self, *args, **kwargs):
        hatches.append(kwargs.get("hatch"))
        return original_barh(self, *args, **kwargs)

    rows = case_rows(*_case_and_timings(others_ours=1.5)) + [
        {**r, "case": "quiet case"} for r in case_rows(*_case_and_timings(others_ours=0.0))
    ]
    matplotlib.axes.Axes.text, matplotlib.axes.Axes.barh = text, barh
    try:
        harness.plot(rows, tmp_path / "bench.png", "title")
    finally:
        matplotlib.axes.Axes.text, matplotlib.axes.Axes.barh = original_text, original_barh
    assert (tmp_path / "bench.png").stat().st_size > 0
    busy_labels = [s for s in texts if "busy: not a result" in s]
    assert len(busy_labels) == 3 and not any("faster" in s for s in busy_labels)
    assert any("50.0x faster" in s for s in texts)  # the quiet case keeps its ratio
    assert hatches.count("///") == 3 and hatches.count(None) == 3


def test_other_load_reads_proc_stat():
    """The busy measure reads real CPU time: a spinning child process's CPU seconds grow, and time spent spinning
    in this process shows in the system's busy time (which OtherLoad then subtracts as our own)."""
    import time

    from styleda_fast.bench import machine

    with machine.BusyNeighbour() as neighbour:
        time.sleep(0.5)
        assert machine._process_cpu_s(neighbour.pid) > 0
    system0, own0 = machine._system_busy_s(), machine._process_cpu_s()
    deadline = time.perf_counter() + 60
    while machine._process_cpu_s() - own0 < 0.2 and time.perf_counter() < deadline:  # 0.2 s of our CPU time
        pass
    system1, own1 = machine._system_busy_s(), machine._process_cpu_s()
    assert own1 - own0 >= 0.2
    assert system1 - system0 >= (own1 - own0) - 0.05  # the system's busy time includes ours (2 ticks of slack)
    with machine.OtherLoad() as load:
        time.sleep(0.2)
    assert load.cores is not None and load.cores >= 0


def test_a_spinning_neighbour_reads_as_busy_after_the_rounding_allowance():
    """OtherLoad takes one clock tick per core off (rounding of the counters), which must not hide a real
    neighbour: a process spinning on a core through a 0.5 s block reads as more than BUSY_LIMIT cores."""
    import time

    from styleda_fast.bench import machine

    with machine.BusyNeighbour():
        time.sleep(0.2)  # the child is running
        with machine.OtherLoad() as load:
            time.sleep(0.5)
    assert load.cores is not None and load.cores > 0.5 > machine.BUSY_LIMIT


# ---------------------------------------------------------------- the CPU and bfloat16 (issue 21.4)

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
SPR = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n"


def test_cpu_info_names_the_isa_and_native_bf16():
    from styleda_fast.bench.machine import cpu_info

    avx2 = cpu_info(AVX2_ONLY)
    assert avx2["cpu"] == "AMD EPYC 7B12" and avx2["isa"] == ["AVX2"] and avx2["native_bf16"] is False
    spr = cpu_info(SPR)
    assert spr["isa"] == ["AVX2", "AVX-512", "AVX-512-BF16", "AMX"] and spr["native_bf16"] is True
    zen4 = cpu_info("model name : AMD EPYC 9654\nflags : avx2 fma avx512f avx512_bf16\n")
    assert zen4["isa"] == ["AVX2", "AVX-512", "AVX-512-BF16"] and zen4["native_bf16"] is True
    assert cpu_info("")["isa"] == []


def test_bf16_rows_run_only_where_bf16_is_native():
    from styleda_fast.bench.machine import cpu_info

    def cases():
        return [Case("mining", "mine", "(4,)", {"ours": 1, "ours bf16": 2, "public": 3}, "public", bf16=("ours bf16",))]

    cpu = torch.device("cpu")
    avx2 = {**cpu_info(AVX2_ONLY), "threads": 2}
    kept = cases()
    dropped = harness.drop_bf16(kept, cpu, avx2)
    assert dropped == ["mining/mine: ours bf16"] and list(kept[0].providers) == ["ours", "public"]
    line = harness.bf16_skip_line(avx2, dropped)
    assert "AMD EPYC 7B12" in line and "no native bfloat16" in line and "1 bfloat16 row" in line
    spr_cases = cases()
    assert harness.drop_bf16(spr_cases, cpu, cpu_info(SPR)) == [] and "ours bf16" in spr_cases[0].providers


def test_machine_line_names_cpu_cores_and_isa():
    from styleda_fast.bench.machine import cpu_info, describe

    line = describe({**cpu_info(AVX2_ONLY), "cores": 2, "threads": 2})
    assert line == "AMD EPYC 7B12, 2 cores, AVX2, 2 threads"


# ---------------------------------------------------------------- output (issue 23.5)


def test_table_columns_stay_aligned_for_long_names():
    long_case = Case("jobs", "famix mine, 1 step, 4 templates and more", "16 img 192px, 8 cls", {}, "public")
    timings = {
        "public": Timing([2000.0] * 3, 2000.0, others=0.0),
        "ours in-place+ckpt+bf16": Timing([1000.0] * 3, 1000.0, others=0.0),
        "ours": Timing([1500.0] * 3, 1500.0, others=0.0),
    }
    lines = format_table(case_rows(long_case, timings)).splitlines()
    head = next(ln for ln in lines if ln.startswith("case"))
    end = head.index("median ms") + len("median ms")
    data = [ln for ln in lines[lines.index(head) + 1 :] if ln]
    assert len(data) == 3
    for ln in data:  # every median ends under the header's "median ms"
        assert ln[end - 1] != " " and ln[end] == " ", (head, ln)


def test_bench_help_lists_every_family(capsys):
    import pytest

    from styleda_fast.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in FAMILIES:
        assert name in out, name
    assert "..." not in out and "--busy-neighbour" in out


def test_quick_run_prints_clean_progress_and_states_the_machine(tmp_path, capsys):
    """A quick run of one family: the machine line, no heartbeat dots, no CUDA-runtime warning, the CPU and the
    count of results in the JSON."""
    import json
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.NOTSET)
    lines = []

    def log(*args, end="\n", flush=False):
        lines.append(" ".join(map(str, args)) + end)

    rows = harness.run({"famix_step": FAMILIES["famix_step"]}, "cpu", str(tmp_path), quick=True, log=log)
    text = "".join(lines)
    assert text.startswith("styleda-fast bench on ") and " cores, " in text.splitlines()[0]
    table_head = next(ln for ln in text.splitlines() if ln.startswith("styleda-fast bench, "))  # above the table
    assert harness.describe(harness.machine_info(torch.device("cpu"))) in table_head
    assert "No CUDA runtime" not in text + capsys.readouterr().err
    progress = [ln for ln in text.splitlines() if ln.startswith("  [")]
    assert progress and not any(".." in ln for ln in progress)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["machine"]["isa"] == harness.machine_info(torch.device("cpu"))["isa"]
    assert "native_bf16" in data["machine"] and data["settings"]["quick"] is True
    assert data["settings"]["compile"] is False  # --quick skips torch.compile
    assert len(rows) == len(data["results"]) and all("result" in r for r in data["results"])
    assert f"results: {sum(r['result'] for r in rows)} of {len(rows)} rows." in text


def test_no_cuda_runtime_warning_on_a_cpu_run():
    """torch.compile's import of torch.utils.cpp_extension warns "No CUDA runtime is found" on a CPU machine with a
    CUDA toolkit; the harness imports it with that logger quieted (checked in a fresh process)."""
    import os
    import subprocess
    import sys

    def stderr_of(code: str) -> str:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr

    quieted = stderr_of(
        "import torch\nfrom styleda_fast.bench.harness import _quiet_cpp_extension\n"
        "with _quiet_cpp_extension(torch.device('cpu')):\n    import torch.utils.cpp_extension"
    )
    assert "No CUDA runtime" not in quieted
    if torch.cuda.is_available():
        return
    plain = stderr_of("import torch.utils.cpp_extension")
    if "No CUDA runtime" not in plain:
        __import__("pytest").skip("no CUDA toolkit here: torch does not warn, nothing to quiet")
