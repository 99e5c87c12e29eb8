"""Terminal tables (rich): one scaling summary row per series, the lines that grow faster than
linearly, accuracy, and the cells that did not run ok."""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd
from rich.markup import escape
from rich.table import Table

from gmabench.report.analysis import (NOT_SUPERLINEAR, fit_scaling, records_frame,
                                      steepest_steps)

_STATUS_STYLE = {"skipped": "yellow", "oom": "red", "timeout": "red", "error": "red",
                 "cuda_error": "red", "crashed": "red"}


def _slopes(fits: pd.DataFrame, series: str, col: str) -> str:
    """One slope, or the range of slopes when the series was fitted at several fixed shapes."""
    vals = [v for v in fits.loc[fits["series"] == series, col] if math.isfinite(v)]
    if not vals:
        return "—"
    lo, hi = min(vals), max(vals)
    if round(lo, 2) == round(hi, 2):
        return f"{lo:.2f}"
    a, b = f"{lo:.1f}", f"{hi:.1f}"
    return f"≈{a}" if a == b else f"{a}–{b}"


def _marked(fits: pd.DataFrame, series: str, col: str, host_col: str) -> str:
    """_slopes, starred when one of its fits takes a host-bound size (host_col > 0)."""
    text = _slopes(fits, series, col)
    if text != "—" and (fits.loc[fits["series"] == series, host_col] > 0).any():
        text += "*"
    return text


def _frame(records: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    return records if isinstance(records, pd.DataFrame) else records_frame(records)


def summary_table(records: Iterable[dict[str, Any]] | pd.DataFrame) -> Table:
    """One row per series with measured cells: N range, log-log slopes of latency and memory,
    and cell counts. Series with no ok cell are left to failures_table."""
    df = _frame(records)
    lat_n = fit_scaling(df, x="N", y="median_ms")
    mem_n = fit_scaling(df, x="N", y="peak_bytes")
    lat_k = fit_scaling(df, x="K", y="median_ms")
    # along H only where a run sweeps it (the heads suite), so that other tables keep their width
    lat_h = fit_scaling(df, x="H", y="median_ms") if df["H"].nunique() > 1 else None
    table = Table(title="Scaling summary (log-log slopes: 1 = linear, 2 = quadratic)",
                  caption="ms~N big: fit over the upper half of N; *: the fit takes "
                          "host-bound cells too, which may time the call path; a range means "
                          "several fixed shapes (B, H, D, K) were fitted separately")
    # Numbers never wrap or truncate (a clipped "-0.0…" misleads); long series names fold.
    table.add_column("series", overflow="fold", min_width=24)
    for c in ["N", "ms~N", "ms~N big", "MiB~N", "ms~K"] + (["ms~H"] if lat_h is not None else []) + [
            "ok/bad/skip"]:
        table.add_column(c, justify="right", no_wrap=True)
    for series, g in df.groupby("series", sort=True):
        status = g["status"]
        ok = int((status == "ok").sum())
        if not ok:
            continue
        k_slope = (_marked(lat_k, series, "slope", "n_host_bound") if g["k_applies"].any()
                   else "n/a")
        failed = int(((status != "ok") & (status != "skipped")).sum())
        counts = f"{ok}/{f'[red]{failed}[/red]' if failed else 0}/{int((status == 'skipped').sum())}"
        table.add_row(
            escape(str(series)), f"{g['N'].min()}–{g['N'].max()}",
            _marked(lat_n, series, "slope", "n_host_bound"),
            _marked(lat_n, series, "slope_large", "n_host_bound_large"),
            _slopes(mem_n, series, "slope"), k_slope,
            *([_marked(lat_h, series, "slope", "n_host_bound")] if lat_h is not None else []), counts)
    return table


def accuracy_table(records: Iterable[dict[str, Any]] | pd.DataFrame) -> Table:
    """Per series with ok cells, the largest relative error of the output and of a gradient
    against the float64 reference, over its cells, and whose gradient it was ("—": not checked,
    e.g. no backward ran)."""
    from gmabench.report.analysis import worst_errors

    worst = worst_errors(_frame(records))
    table = Table(title="Accuracy (largest relative error against float64 over the ok cells)")
    table.add_column("series", overflow="fold", min_width=24)
    for c in ["output", "gradients", "worst gradient of"]:
        table.add_column(c, justify="right", no_wrap=True)
    inputs = list(worst.columns[4:])   # "grad q", ...: after series, cells, output, gradients
    for r in worst.to_dict("records"):
        grads = {c.removeprefix("grad "): r[c] for c in inputs if not pd.isna(r[c])}
        table.add_row(escape(str(r["series"])), _sci(r["output"]), _sci(r["gradients"]),
                      escape(max(grads, key=grads.get)) if grads else "—")
    return table


def _sci(v: Any) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.1e}"


def growth_table(records: Iterable[dict[str, Any]] | pd.DataFrame) -> Table | None:
    """The lines whose steepest step between neighbouring sizes grows faster than linearly
    (analysis.steepest_steps), or None when there are none: what refutes a linear-time claim,
    or confirms a quadratic one, in a few rows."""
    df = _frame(records)
    # the other shape columns only where the run varies them
    varying = [c for c in ("B", "H", "D", "Dv") if df[c].nunique() > 1]
    rows = []
    for x, fixed_col in (("N", "K"), ("K", "N")):
        steps = steepest_steps(df, x=x)
        steps = steps[~steps["verdict"].isin(NOT_SUPERLINEAR)]
        for r in steps.itertuples():
            at = " ".join(f"{c}={getattr(r, c)}" for c in [fixed_col, *varying]
                          if getattr(r, c) is not pd.NA)
            rows.append((str(r.series), x, at, f"{r.x_from:g} → {r.x_to:g}",
                         f"{r.exponent:.2f}", str(r.verdict)))
    if not rows:
        return None
    table = Table(title="Faster than linear: the steepest step between neighbouring sizes",
                  caption="over cells neither host-bound nor noisy; the HTML report lists every "
                          "line")
    table.add_column("series", overflow="fold", min_width=24)
    for c in ["along", "at", "step", "exponent", "verdict"]:
        table.add_column(c, justify="right" if c == "exponent" else "left", no_wrap=c != "verdict")
    for row in rows:
        table.add_row(escape(row[0]), *row[1:])
    return table


def failures_table(records: Iterable[dict[str, Any]] | pd.DataFrame) -> Table:
    """Cells that did not run ok, grouped by mixer, status and reason, with the N values hit.

    A sweep can skip hundreds of cells for one reason (a package missing here); one row per
    reason keeps the terminal readable, while the HTML report lists every cell.
    """
    df = _frame(records)
    bad = df[df["status"] != "ok"] if len(df) else df
    table = Table(title=f"Cells not ok ({len(bad)})")
    for c in ["mixer", "status", "cells", "N", "reason"]:
        table.add_column(c, justify="right" if c in {"cells"} else "left",
                         overflow="fold" if c == "reason" else "ellipsis")
    if not len(bad):
        return table
    groups = bad.groupby(["mixer", "status", "reason"], sort=True, dropna=False)
    for (mixer, status, reason), g in groups:
        style = _STATUS_STYLE.get(status, "")
        shown = f"[{style}]{status}[/{style}]" if style else status
        ns = sorted({int(n) for n in g["N"]})
        n_text = ", ".join(map(str, ns)) if len(ns) <= 4 else f"{ns[0]}..{ns[-1]} ({len(ns)} values)"
        # Text from records goes through escape: "[rank 0] ..." is not rich markup.
        table.add_row(escape(str(mixer)), shown, str(len(g)), n_text, escape(str(reason)))
    return table


def group_unrecorded(unrecorded: Iterable[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    """Unrecorded cells grouped by (mixer, causal, mode), groups in the order of their first cell."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in unrecorded:
        groups.setdefault((c["mixer"], bool(c["causal"]), c["mode"]), []).append(c)
    return list(groups.items())


def unrecorded_table(unrecorded: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Not measured: {len(unrecorded)} cells of the suite have no record "
                        "(time budget or interruption; --resume measures them)")
    for c in ["mixer", "kind", "mode", "cells", "N", "K"]:
        table.add_column(c, justify="right" if c == "cells" else "left")
    for (mixer, causal, mode), g in group_unrecorded(unrecorded):
        table.add_row(escape(str(mixer)), "causal" if causal else "bidir", str(mode), str(len(g)),
                      _values(c["N"] for c in g), _values(c["K"] for c in g))
    return table


def _values(vs: Iterable[Any]) -> str:
    v = sorted({int(x) for x in vs})
    return ", ".join(map(str, v)) if len(v) <= 4 else f"{v[0]}..{v[-1]} ({len(v)} values)"


# The sizes a suite sweeps, in the order the speed-up summary looks along them.
_SWEPT = ("N", "H", "K", "B", "D")


def speedup_summary(records: Iterable[dict[str, Any]] | pd.DataFrame, baseline: str) -> Table:
    """Per series, how many times faster than `baseline` it ran (above 1 is faster) at the
    smallest and the largest size both measured, as hyperfine states it: along N, or along the
    first of H, K, B, D that the series sweeps where N stays fixed (the heads suite)."""
    from gmabench.report.analysis import speedup_table

    sp = speedup_table(_frame(records), baseline)
    table = Table(title=f"Speed-up against {escape(baseline)} (baseline time / time; >1 is faster)")
    table.add_column("series", overflow="fold", min_width=24)
    for c in ["along", "from–to", "at smallest", "at largest"]:
        table.add_column(c, justify="right", no_wrap=True)
    for series, g in sp.groupby("series", sort=True):
        axis = next((c for c in _SWEPT if g[c].nunique() > 1), "N")
        g = g.sort_values([axis] + [c for c in _SWEPT if c != axis])
        first, last = g.iloc[0], g.iloc[-1]
        table.add_row(escape(str(series)), axis, f"{first[axis]}–{last[axis]}",
                      f"{first['speedup']:.3g}x", f"{last['speedup']:.3g}x")
    return table
