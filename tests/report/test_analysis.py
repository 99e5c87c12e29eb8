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


# The per-line formulation fit_scaling and steepest_steps had before they read numpy columns
# (a DataFrame per line: a report of 636 cells spent 19 s in it): their exact, slow twin.
def _fit_scaling_per_frame(df, x, y):
    import numpy as np
    import pandas as pd
    from scipy import stats

    from gmabench.report.analysis import _lines

    def loglog(xs, ys):
        out = {"slope": math.nan, "stderr": math.nan, "r2": math.nan, "n_points": int(len(xs)),
               "x_min": float(xs.min()) if len(xs) else math.nan,
               "x_max": float(xs.max()) if len(xs) else math.nan}
        if xs.nunique() >= 3:
            fit = stats.linregress(np.log(xs.to_numpy(float)), np.log(ys.to_numpy(float)))
            out.update(slope=float(fit.slope), stderr=float(fit.stderr), r2=float(fit.rvalue) ** 2)
        return out

    by, groups = _lines(df, x, None)
    rows = []
    for key, g in groups:
        ok = g[g["status"] == "ok"]
        pts = pd.DataFrame({"x": ok[x].astype("float64"), "y": ok[y].astype("float64")})
        pts = pts[(pts["x"] > 0) & (pts["y"] > 0) & np.isfinite(pts["y"])]
        pts = pts.groupby("x", as_index=False)["y"].median()
        xs, ys = pts["x"], pts["y"]
        row = dict(zip(by, key))
        row.update(loglog(xs, ys))
        upper = len(xs) - max(3, math.ceil(len(xs) / 2))
        large = loglog(xs.iloc[max(upper, 0):], ys.iloc[max(upper, 0):])
        row.update({f"{k}_large": v for k, v in large.items() if k != "x_max"})
        bound = set(ok.loc[ok["host_bound"], x].astype("float64")) if y.endswith("_ms") else set()
        row["n_host_bound"] = len(bound & set(xs))
        row["n_host_bound_large"] = len(bound & set(xs.iloc[max(upper, 0):]))
        row.update(n_cells=int(len(g)), n_ok=int(len(ok)), n_x_cells=int(g[x].nunique()))
        rows.append(row)
    return pd.DataFrame(rows)


def _steepest_steps_per_frame(df, x, y):
    import numpy as np
    import pandas as pd

    from gmabench.report.analysis import STEP_TOLERANCE, _lines

    by, groups = _lines(df, x, None)
    rows = []
    for key, g in groups:
        ok = g[(g["status"] == "ok") & ~g["host_bound"] & ~g["noisy"].fillna(False).astype(bool)]
        pts = pd.DataFrame({"x": ok[x].astype("float64"), "y": ok[y].astype("float64")})
        pts = pts[(pts["x"] > 0) & (pts["y"] > 0) & np.isfinite(pts["y"])]
        pts = pts.groupby("x", as_index=False)["y"].median()
        row = dict(zip(by, key), n_sizes=len(pts), n_x_cells=int(g[x].nunique()),
                   exponent=math.nan, x_from=math.nan, x_to=math.nan, verdict="too few sizes")
        if len(pts) >= 2:
            local = np.diff(np.log(pts["y"].to_numpy())) / np.diff(np.log(pts["x"].to_numpy()))
            i = int(np.argmax(local))
            e = float(local[i])
            row.update(exponent=e, x_from=float(pts["x"].iloc[i]), x_to=float(pts["x"].iloc[i + 1]),
                       verdict="linear or better" if e <= 1 + STEP_TOLERANCE else
                       "super-linear, at most quadratic" if e <= 2 + STEP_TOLERANCE else
                       "steeper than quadratic")
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_line_fits_match_their_per_frame_twin_on_random_sweeps(seed):
    # random sweeps: K-free and K-dependent mixers, repeated sizes, failures, host-bound and
    # noisy cells, zero and missing times; every column of both analyses equal, in order
    import random

    import pandas as pd

    from gmabench.results.schema import Record
    rng = random.Random(seed)
    recs = []
    for mixer, k_applies in [("a", True), ("b", False), ("c", True), ("d", False)]:
        for causal in (False, True):
            for K in (8, 16, 32, 64, 128):
                for N in rng.sample([64, 128, 256, 512, 1024, 2048], rng.randint(1, 6)):
                    for _ in range(rng.choice([1, 1, 2])):
                        status = rng.choice(["ok"] * 9 + ["oom", "timeout", "skipped"])
                        ms = rng.choice([0.0, None] + [rng.lognormvariate(0, 2)] * 8)
                        recs.append(Record(
                            mixer=mixer, causal=causal, mode="fwd", scope="core", B=1, N=N, H=2,
                            D=16, Dv=16, K=K, dtype="float32", device="cuda", status=status,
                            suite="random", k_applies=k_applies, median_ms=ms,
                            host_ms=rng.choice([None, 0.0, 10.0]), noisy=rng.choice([None, True, False]),
                            peak_bytes=rng.randint(1, 10**9)).to_dict())
    df = records_frame(recs)
    assert df["host_bound"].any() and (df["status"] != "ok").any()
    for x in ("N", "K"):
        for y in ("median_ms", "peak_bytes"):
            fast = fit_scaling(df, x=x, y=y)
            slow = _fit_scaling_per_frame(df, x, y)
            pd.testing.assert_frame_equal(fast, slow[fast.columns], check_exact=True,
                                          check_dtype=False)
            assert fast["slope"].notna().any()
        fast = steepest_steps(df, x=x)
        slow = _steepest_steps_per_frame(df, x, "median_ms")
        pd.testing.assert_frame_equal(fast, slow[fast.columns], check_exact=True, check_dtype=False)
        assert fast["exponent"].notna().any()
