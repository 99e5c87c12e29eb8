"""Fits recover known power laws; ratios and throughput match hand-computed values."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gmabench.report.analysis import (add_throughput, fit_scaling, records_frame, series_label,
                                      speedup_table, steepest_steps)

REPO = Path(__file__).resolve().parents[2]


def _rows(fits, mixer):
    return fits[fits["mixer"] == mixer]


def test_records_frame_keeps_every_status_with_typed_columns(records):
    df = records_frame(records)
    assert len(df) == len(records)
    assert set(df["status"]) == {"ok", "oom", "timeout", "skipped"}
    assert str(df["N"].dtype) == "Int64" and str(df["median_ms"].dtype) == "float64"
    assert df["causal"].dtype == bool and df["k_applies"].dtype == bool
    assert set(df["series"]) == {"linear causal fwd bf16", "quadratic causal fwd bf16",
                                 "overhead causal fwd bf16", "tiny causal fwd bf16"}


def test_series_label_names_non_default_scope_and_device():
    assert series_label("gma", False, "fwd_bwd", "float16", "layer", "cpu") == \
        "gma bidir fwd+bwd fp16 layer cpu"
    assert series_label("gma", True, "fwd", "float32") == "gma causal fwd fp32"


def test_fit_recovers_linear_and_quadratic_slopes(records):
    fits = fit_scaling(records_frame(records), x="N", y="median_ms")
    linear = _rows(fits, "linear")
    assert sorted(linear["K"]) == [16, 32, 64]  # one fit per fixed K
    assert linear["slope"].sub(1.0).abs().max() < 0.01
    assert linear["slope_large"].sub(1.0).abs().max() < 0.01
    quad = _rows(fits, "quadratic")
    # K does not apply, so its cells at every K form one line.
    assert len(quad) == 1 and quad["K"].isna().all()
    assert abs(quad["slope"].iloc[0] - 2.0) < 0.01
    assert quad["r2"].iloc[0] == pytest.approx(1.0)


def test_failed_cells_are_excluded_from_the_fit(records):
    quad = _rows(fit_scaling(records_frame(records)), "quadratic").iloc[0]
    # The oom rows carry a bogus median_ms=1e6 at N=8192: counting them would bend the slope.
    assert quad["n_points"] == 5 and quad["x_max"] == 4096
    assert quad["n_cells"] == 18 and quad["n_ok"] == 15
    assert abs(quad["slope"] - 2.0) < 0.01


def test_fewer_than_three_sizes_gives_nan(records):
    tiny = _rows(fit_scaling(records_frame(records)), "tiny").iloc[0]
    assert math.isnan(tiny["slope"]) and math.isnan(tiny["slope_large"])
    assert tiny["n_points"] == 2  # the skipped N=4096 cell is not a point


def test_large_n_slope_sees_past_launch_overhead(records):
    over = _rows(fit_scaling(records_frame(records)), "overhead").iloc[0]
    assert over["slope"] < 0.3
    assert over["n_points_large"] == 3 and over["x_min_large"] == 2048
    assert over["slope_large"] > over["slope"] + 0.15


def test_fit_against_k_skips_k_free_mixers(records):
    fits = fit_scaling(records_frame(records), x="K", y="median_ms")
    assert "quadratic" not in set(fits["mixer"])
    linear = _rows(fits, "linear")
    assert len(linear) == 6 and linear["slope"].sub(1.0).abs().max() < 0.01


def test_memory_slopes(records):
    fits = fit_scaling(records_frame(records), x="N", y="peak_bytes")
    assert _rows(fits, "linear")["slope"].sub(1.0).abs().max() < 0.01
    assert abs(_rows(fits, "quadratic")["slope"].iloc[0] - 2.0) < 0.01


def test_steepest_step_tells_linear_quadratic_and_a_cliff_apart(records, make_record):
    steps = steepest_steps(records_frame(records))
    lin = _rows(steps, "linear")
    assert set(lin["verdict"]) == {"linear or better"}
    assert lin["exponent"].to_list() == pytest.approx([1.0] * 3)
    quad = _rows(steps, "quadratic").iloc[0]
    assert quad["verdict"] == "super-linear, at most quadratic"
    assert quad["exponent"] == pytest.approx(2.0) and quad["n_sizes"] == 5   # the oom cell is out
    # flat along K, then 8x for twice the components: a fit over all four sizes says 0.75, the
    # step from 128 to 256 says 3 (gma's causal forward in results/2026-11-29-h200-components)
    cliff = [make_record("cliff", 16384, K=K, median_ms=ms)
             for K, ms in [(16, 0.1), (32, 0.1), (64, 0.1), (128, 0.1), (256, 0.8)]]
    assert fit_scaling(records_frame(cliff), x="K")["slope"].iloc[0] < 1.0
    row = steepest_steps(records_frame(cliff), x="K").iloc[0]
    assert (row["verdict"], row["x_from"], row["x_to"]) == ("steeper than quadratic", 128, 256)
    assert row["exponent"] == pytest.approx(3.0)


def test_steepest_step_leaves_out_host_bound_and_noisy_cells(make_record):
    # "plain" jumps 8x from 1024 to 2048; in "hosted" the two flat sizes are the host's pace
    # (host-bound cells), and "noisy" spikes at 2048 in a cell marked noisy: without those
    # cells both are linear
    times = {512: 0.05, 1024: 0.05, 2048: 0.4, 4096: 0.8}
    recs = [make_record("plain", N, median_ms=ms, host_ms=0.01) for N, ms in times.items()]
    recs += [make_record("hosted", N, median_ms=ms, host_ms=0.049 if N <= 1024 else 0.01)
             for N, ms in times.items()]
    recs += [make_record("noisy", N, median_ms=ms, host_ms=0.01, noisy=(N == 2048))
             for N, ms in {512: 0.1, 1024: 0.2, 2048: 1.6, 4096: 0.8}.items()]
    steps = steepest_steps(records_frame(recs)).set_index("mixer")
    assert steps.loc["plain", ["verdict", "x_from", "x_to"]].to_list() == [
        "steeper than quadratic", 1024, 2048]
    assert steps.loc["hosted", ["verdict", "n_sizes"]].to_list() == ["linear or better", 2]
    assert steps.loc["noisy", ["verdict", "n_sizes"]].to_list() == ["linear or better", 3]
    assert steps.loc["noisy", "exponent"] == pytest.approx(1.0)
    # one usable size left: no verdict
    alone = [make_record("alone", N, median_ms=ms, host_ms=0.9 * ms if N < 4096 else 0.01)
             for N, ms in times.items()]
    assert steepest_steps(records_frame(alone))["verdict"].to_list() == ["too few sizes"]


def test_speedup_table_ratios_at_matching_cells(make_record):
    recs = []
    for K, gma_ms in [(16, 2.0), (32, 4.0)]:
        recs.append(make_record("gma", 1024, K, median_ms=gma_ms))
        # sdpa ignores K but is measured once per K: each comparison must appear once.
        recs.append(make_record("sdpa", 1024, K, median_ms=8.0, k_applies=False))
    recs.append(make_record("gma", 2048, 16, median_ms=5.0))
    recs.append(make_record("sdpa", 2048, 16, status="oom", k_applies=False))
    recs.append(make_record("gma", 1024, 16, median_ms=1.0, dtype="float32"))  # no fp32 sdpa
    sp = speedup_table(records_frame(recs), baseline="sdpa")
    assert list(zip(sp["N"], sp["K"], sp["speedup"], sp["ratio"])) == [
        (1024, 16, 4.0, 0.25), (1024, 32, 2.0, 0.5)]
    assert set(sp["baseline"]) == {"sdpa"} and set(sp["baseline_ms"]) == {8.0}


def test_throughput_columns_and_fractions_of_ceilings(make_record):
    recs = [make_record("gma", 1024, median_ms=10.0, flops=5e10, min_bytes=2e10),
            make_record("gma", 2048, status="oom", flops=5e10)]
    env = {"ceilings": {"matmul_flops_per_s": 1e15, "copy_bytes_per_s": 4e12}}
    df = records_frame(recs, env)
    ok = df.iloc[0]
    assert ok["tflops_per_s"] == pytest.approx(5.0) and ok["tb_per_s"] == pytest.approx(2.0)
    assert ok["frac_matmul_ceiling"] == pytest.approx(0.005)
    assert ok["frac_copy_ceiling"] == pytest.approx(0.5)
    assert math.isnan(df.iloc[1]["tflops_per_s"])  # no time, no throughput
    plain = add_throughput(records_frame(recs))
    assert "frac_matmul_ceiling" not in plain and plain.iloc[0]["tflops_per_s"] == pytest.approx(5)


def test_report_package_never_imports_torch():
    code = "import sys, gmabench.report; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


def test_worst_errors_per_series_and_per_input_over_ok_cells_only(make_record):
    from gmabench.report.analysis import worst_errors
    recs = [make_record("m", 1024, mode="fwd_bwd", median_ms=1.0, rel_error=2e-3, grad_rel_error=3e-3,
                        grad_rel_errors={"q": 3e-3, "mu": 1e-5}),
            make_record("m", 2048, mode="fwd_bwd", median_ms=2.0, rel_error=1e-3, grad_rel_error=2e-3,
                        grad_rel_errors={"q": 2e-3, "mu": 4e-5}),
            make_record("m", 4096, mode="fwd_bwd", status="error", rel_error=9.0, grad_rel_error=9.0,
                        grad_rel_errors={"q": 9.0, "mu": 9.0}),
            make_record("s", 1024, mode="fwd_bwd", median_ms=1.0, rel_error=5e-3, grad_rel_error=6e-3,
                        grad_rel_errors={"q": 6e-3, "dt_raw": 1e-3}),
            make_record("f", 1024, median_ms=1.0, rel_error=4e-4)]
    w = worst_errors(records_frame(recs)).set_index("series")
    assert list(w.columns) == ["cells", "output", "gradients", "grad q", "grad mu", "grad dt_raw"]
    m = w.loc["m causal fwd+bwd bf16"]
    assert (m["cells"], m["output"], m["gradients"], m["grad q"], m["grad mu"]) == (2, 2e-3, 3e-3, 3e-3, 4e-5)
    assert math.isnan(m["grad dt_raw"])
    f = w.loc["f causal fwd bf16"]
    assert f["output"] == 4e-4 and math.isnan(f["gradients"]) and math.isnan(f["grad q"])
