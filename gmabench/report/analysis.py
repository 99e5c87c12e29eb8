"""Turn records into typed frames, scaling fits, speedup ratios and achieved throughput.

Everything here reads plain record dicts (the fields of `gmabench.results.schema.Record`) and
never needs torch. Failed cells stay in the frame: they are dropped only inside a fit or a ratio.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from gmabench.results.schema import Record

SHAPE_COLS = ["B", "N", "H", "D", "Dv", "K"]
# Columns that, with the shape, identify what a line on a plot means.
# device_name keeps runs from two GPUs apart when their records are read together.
SERIES_COLS = ["series", "mixer", "causal", "mode", "dtype", "scope", "device", "device_name"]
# Cells are comparable across mixers when these agree (K only where it applies to both).
MATCH_COLS = ["causal", "mode", "dtype", "scope", "device", "device_name", "B", "N", "H", "D", "Dv"]

_INT_COLS = SHAPE_COLS + ["seed", "schema_version", "peak_bytes", "fwd_peak_bytes",
                          "bwd_peak_bytes", "saved_bytes", "allocated_bytes", "reserved_bytes",
                          "rel_error_tokens", "worker_pid", "gpu_index"]
_FLOAT_COLS = ["median_ms", "p20_ms", "p80_ms", "iqr_over_median", "tokens_per_s", "flops",
               "min_bytes", "rel_error", "grad_rel_error", "wall_s", "host_ms"]
# A cell whose host took at least this share of its measured time to issue the call is
# "host-bound": it measures launch overhead more than the kernels, unless the call itself waited
# for the GPU (a synchronisation, or a launch queue full of its kernels: the PyTorch mamba2's
# cells are host-bound at every N, its times growing with N), so the flag alone cannot tell.
HOST_BOUND_SHARE = 0.8


def host_bound(host_ms, median_ms):
    """Whether a cell (scalars) or cells (Series) are host-bound, by HOST_BOUND_SHARE."""
    return host_ms >= HOST_BOUND_SHARE * median_ms


_BOOL_COLS = ["causal", "k_applies"]
_OBJECT_COLS = ["samples_ms", "clocks", "grad_rel_errors"]
_DTYPE_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
_MODE_SHORT = {"fwd_bwd": "fwd+bwd"}


def _defaults() -> dict[str, Any]:
    # Fields without a plain default (identity, list/dict) start as None: missing, not shared.
    return {f.name: (f.default if f.default is not MISSING else None) for f in fields(Record)}


def series_label(mixer: str, causal: bool, mode: str, dtype: str, scope: str = "core",
                 device: str = "cuda") -> str:
    """A short human name for one line of a plot, e.g. "gma causal fwd bf16"."""
    parts = [str(mixer), "causal" if causal else "bidir", _MODE_SHORT.get(mode, str(mode)),
             _DTYPE_SHORT.get(dtype, str(dtype))]
    if scope and scope != "core":
        parts.append(str(scope))
    # A CPU run next to GPU runs must not share a line with them.
    if device and device != "cuda":
        parts.append(str(device))
    return " ".join(parts)


def cell_label(r: dict[str, Any]) -> str:
    """One cell in words: its series (series_label, without the device) and its shape, e.g.
    "gma causal fwd bf16 B=1 N=131072 H=16 D=64 K=64"."""
    shape = f"B={r['B']} N={r['N']} H={r['H']} D={r['D']}"
    if r.get("Dv") not in (None, r["D"]):
        shape += f" Dv={r['Dv']}"
    if r.get("k_applies", True):
        shape += f" K={r['K']}"
    return series_label(r["mixer"], r["causal"], r["mode"], r["dtype"], r.get("scope", "core"),
                        "") + " " + shape


def records_frame(records: Iterable[dict[str, Any]], env: dict | None = None) -> pd.DataFrame:
    """All records (every status) as a typed DataFrame with `series` and throughput columns."""
    defaults = _defaults()
    rows = [{**defaults, **dict(r)} for r in records]
    df = pd.DataFrame(rows, columns=list(defaults) if not rows else None)
    if "device_name" not in df:
        df["device_name"] = ""
    for c in [c for c in _INT_COLS if c in df]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in [c for c in _FLOAT_COLS if c in df]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in _BOOL_COLS:
        df[c] = df[c].fillna(c == "k_applies").astype(bool)
    df["noisy"] = df["noisy"].astype("boolean")
    for c in df.columns:
        if c not in _INT_COLS + _FLOAT_COLS + _BOOL_COLS + _OBJECT_COLS + ["noisy"]:
            if df[c].map(lambda v: v is None or isinstance(v, str)).all():
                df[c] = df[c].fillna("").astype(str)
    df["series"] = [series_label(*t) for t in
                    zip(df["mixer"], df["causal"], df["mode"], df["dtype"], df["scope"], df["device"])]
    df["host_bound"] = host_bound(df["host_ms"], df["median_ms"]).fillna(False).astype(bool)
    return add_throughput(df, env)


def add_throughput(df: pd.DataFrame, env: dict | None = None) -> pd.DataFrame:
    """Add achieved tflops_per_s / tb_per_s and, given env["ceilings"], fractions of them."""
    df = df.copy()
    seconds = df["median_ms"].astype("float64").where(lambda s: s > 0) * 1e-3
    flops_per_s = df["flops"].astype("float64") / seconds
    bytes_per_s = df["min_bytes"].astype("float64") / seconds
    df["tflops_per_s"] = flops_per_s / 1e12
    df["tb_per_s"] = bytes_per_s / 1e12
    ceilings = (env or {}).get("ceilings") or {}
    if ceilings.get("matmul_flops_per_s"):
        df["frac_matmul_ceiling"] = flops_per_s / float(ceilings["matmul_flops_per_s"])
    if ceilings.get("copy_bytes_per_s"):
        df["frac_copy_ceiling"] = bytes_per_s / float(ceilings["copy_bytes_per_s"])
    return df


def _as_frame(df) -> pd.DataFrame:
    return df if isinstance(df, pd.DataFrame) else records_frame(df)


def _loglog(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    n_x = len(np.unique(x))
    out = {"slope": math.nan, "stderr": math.nan, "r2": math.nan, "n_points": int(len(x)),
           "x_min": float(x.min()) if len(x) else math.nan,
           "x_max": float(x.max()) if len(x) else math.nan}
    if n_x >= 3:
        fit = stats.linregress(np.log(x), np.log(y))
        out.update(slope=float(fit.slope), stderr=float(fit.stderr), r2=float(fit.rvalue) ** 2)
    return out


def _points(xv: np.ndarray, yv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) points of a line: x > 0 and finite y > 0, repeats of one size (a K-free mixer
    measured at every K) as one point at their median, sorted by x."""
    keep = (xv > 0) & (yv > 0) & np.isfinite(yv)
    xv, yv = xv[keep], yv[keep]
    xs, inverse = np.unique(xv, return_inverse=True)
    if len(xs) == len(xv):
        return xs, yv[np.argsort(xv, kind="stable")]
    return xs, np.array([np.median(yv[inverse == i]) for i in range(len(xs))])


def _columns(work: pd.DataFrame, x: str, y: str) -> dict[str, np.ndarray]:
    """The columns the per-line loops read, as numpy arrays (positions as in `work`): slicing
    them per line instead of making a DataFrame per line took the fits and steps of the 45
    committed runs from 71.5 to 7.1 s on a 2-core machine, the same frames to the last bit
    (their per-frame twin: tests/report/test_analysis.py)."""
    return {"ok": (work["status"] == "ok").to_numpy(bool),
            "x": work[x].astype("float64").to_numpy(),
            "y": work[y].astype("float64").to_numpy(),
            "host_bound": work["host_bound"].to_numpy(bool) if "host_bound" in work
            else np.zeros(len(work), bool),
            "noisy": work["noisy"].fillna(False).astype(bool).to_numpy()
            if "noisy" in work else np.zeros(len(work), bool)}


def _keys(groups, by: list[str]) -> list[tuple[dict, np.ndarray]]:
    """(the by columns' values, row positions in groups.obj) of each line, in the groupby's
    order, the values as the frame holds them (a missing K stays missing, not NaN)."""
    values = groups.obj[by].to_numpy(dtype=object)
    return [(dict(zip(by, values[pos[0]])), pos) for pos in groups.indices.values()]


def _n_sizes(xv: np.ndarray) -> int:
    """Distinct sizes among a line's cells, whatever their status (NaN: no size)."""
    return len(np.unique(xv[~np.isnan(xv)]))


def _lines(df, x: str, by: list[str] | None):
    """(by, groups): the cells of each line along x, a series at one fixed shape. Along K only
    mixers that K changes; along N, a K-free mixer's cells at several K are one line."""
    work = _as_frame(df).copy()
    if by is None:
        by = SERIES_COLS + [c for c in SHAPE_COLS if c != x]
    if x == "K":
        work = work[work["k_applies"]]
    elif "K" in by:
        work["K"] = work["K"].where(work["k_applies"])
    return by, work.groupby(by, dropna=False, sort=True)


def fit_scaling(df, x: str = "N", y: str = "median_ms", by: list[str] | None = None) -> pd.DataFrame:
    """Log-log slope of y against x per group in which only x varies.

    Uses ok rows with x > 0 and y > 0, and needs 3 distinct x (else slope is NaN). The `_large`
    columns refit over the upper half of the x values (at least 3), because launch overhead
    flattens small sizes and the asymptotic slope is what tells O(N) from O(N^2). For a time
    (y ending in "_ms"), `n_host_bound` and `n_host_bound_large` count the sizes of each fit with
    a host-bound cell: a slope over host-bound sizes may still be launch overhead (or a call that
    waited for the GPU: HOST_BOUND_SHARE), and the report marks it.
    """
    by, groups = _lines(df, x, by)
    col = _columns(groups.obj, x, y)
    timed = y.endswith("_ms")
    rows = []
    for key, pos in _keys(groups, by):
        ok = pos[col["ok"][pos]]
        xs, ys = _points(col["x"][ok], col["y"][ok])
        row = dict(key)
        row.update(_loglog(xs, ys))
        upper = max(len(xs) - max(3, math.ceil(len(xs) / 2)), 0)
        large = _loglog(xs[upper:], ys[upper:])
        row.update({f"{k}_large": v for k, v in large.items() if k != "x_max"})
        bound = set(col["x"][ok[col["host_bound"][ok]]]) if timed else set()
        row["n_host_bound"] = len(bound & set(xs))
        row["n_host_bound_large"] = len(bound & set(xs[upper:]))
        row.update(n_cells=int(len(pos)), n_ok=int(len(ok)), n_x_cells=_n_sizes(col["x"][pos]))
        rows.append(row)
    cols = by + ["slope", "stderr", "r2", "n_points", "x_min", "x_max", "slope_large",
                 "stderr_large", "r2_large", "n_points_large", "x_min_large", "n_host_bound",
                 "n_host_bound_large", "n_cells", "n_ok", "n_x_cells"]
    return pd.DataFrame(rows, columns=cols)


# A local exponent above 1 + STEP_TOLERANCE (or 2 + it) counts as faster than linear (quadratic):
# between sizes a factor of 2 apart, a 19% error in one cell's time moves it by 0.25.
STEP_TOLERANCE = 0.25
# steepest_steps' verdicts that claim nothing faster than linear
NOT_SUPERLINEAR = ("linear or better", "too few sizes")


def steepest_steps(df, x: str = "N", y: str = "median_ms") -> pd.DataFrame:
    """Per line along x (as fit_scaling), the steepest growth between neighbouring sizes: the
    local exponent log(y_b / y_a) / log(x_b / x_a) over ok cells that are neither host-bound nor
    noisy, and what it says. A fitted slope averages a cliff away (gma's time flat from K=8 to
    64, then 8x from 128 to 256, fits as 0.85 over all six sizes); a step shows where it is.

    verdict: "linear or better" (no step above 1 + STEP_TOLERANCE), "super-linear, at most
    quadratic" (one above, none above 2 + STEP_TOLERANCE), "steeper than quadratic", or "too
    few sizes" (fewer than two usable ones)."""
    by, groups = _lines(df, x, None)
    col = _columns(groups.obj, x, y)
    usable = col["ok"] & ~col["host_bound"] & ~col["noisy"]
    rows = []
    for key, pos in _keys(groups, by):
        use = pos[usable[pos]]
        xs, ys = _points(col["x"][use], col["y"][use])
        row = dict(key, n_sizes=len(xs),
                   n_x_cells=_n_sizes(col["x"][pos]), exponent=math.nan, x_from=math.nan,
                   x_to=math.nan, verdict="too few sizes")
        if len(xs) >= 2:
            local = np.diff(np.log(ys)) / np.diff(np.log(xs))
            i = int(np.argmax(local))
            e = float(local[i])
            row.update(exponent=e, x_from=float(xs[i]), x_to=float(xs[i + 1]),
                       verdict="linear or better" if e <= 1 + STEP_TOLERANCE else
                       "super-linear, at most quadratic" if e <= 2 + STEP_TOLERANCE else
                       "steeper than quadratic")
        rows.append(row)
    return pd.DataFrame(rows, columns=by + ["n_sizes", "n_x_cells", "exponent", "x_from", "x_to",
                                            "verdict"])


def speedup_table(df, baseline: str) -> pd.DataFrame:
    """median_ms of each mixer against `baseline` at matching cells where both are ok.

    `ratio` = time / baseline time (below 1 is faster); `speedup` = its inverse.
    """
    frame = _as_frame(df)
    ok = frame[frame["status"] == "ok"]
    cols = MATCH_COLS + ["K", "k_applies", "median_ms"]
    base = ok.loc[ok["mixer"] == baseline, cols]
    other = ok.loc[ok["mixer"] != baseline, ["mixer", "series"] + cols]
    m = other.merge(base, on=MATCH_COLS, suffixes=("", "_base"))
    both = m["k_applies"] & m["k_applies_base"]
    m = m[~both | (m["K"] == m["K_base"])].copy()
    m["K"] = m["K"].where(m["k_applies"], m["K_base"].where(m["k_applies_base"]))
    # A K-free mixer measured at several K would otherwise repeat the same comparison.
    m = m.drop_duplicates(subset=["series"] + MATCH_COLS + ["K"], keep="first")
    m = m.rename(columns={"median_ms_base": "baseline_ms"})
    m["baseline"] = baseline
    m["ratio"] = m["median_ms"] / m["baseline_ms"]
    m["speedup"] = m["baseline_ms"] / m["median_ms"]
    out = ["mixer", "series", "baseline"] + MATCH_COLS + ["K", "median_ms", "baseline_ms",
                                                          "ratio", "speedup"]
    return m[out].sort_values(["series"] + MATCH_COLS, kind="stable").reset_index(drop=True)


def worst_errors(df) -> pd.DataFrame:
    """Per series with ok cells, the largest error against float64 over its cells: of the output
    ("output"), of any gradient ("gradients"), and of each differentiated input's gradient
    ("grad q", "grad mu", ... in the order the records name them). NaN where nothing was checked."""
    df = _as_frame(df)
    ok = df[df["status"] == "ok"] if len(df) else df
    rows, inputs = [], []
    for series, g in ok.groupby("series", sort=True):
        row = {"series": series, "cells": len(g),
               "output": pd.to_numeric(g["rel_error"], errors="coerce").max(),
               "gradients": pd.to_numeric(g.get("grad_rel_error"), errors="coerce").max()
               if "grad_rel_error" in g else math.nan}
        for errors in g["grad_rel_errors"] if "grad_rel_errors" in g else []:
            for name, value in (errors or {}).items():
                col = f"grad {name}"
                if col not in inputs:
                    inputs.append(col)
                if value is not None and not value <= row.get(col, -math.inf):
                    row[col] = float(value)
        rows.append(row)
    return pd.DataFrame(rows, columns=["series", "cells", "output", "gradients", *inputs])
