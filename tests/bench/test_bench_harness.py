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
    assert t.reruns == 1 and t.noise == "spread"


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
