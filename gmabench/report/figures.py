"""Plotly figures of a sweep: latency, memory and throughput against N or K, on log-log axes.

Each function returns one figure per combination of the parameters held fixed (B, H, D, K, ...),
so a line never mixes cells of different shapes. Cells that did not run ok stay visible as
labelled markers along the top of the plot.
"""

from __future__ import annotations

import functools
import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from gmabench.report.analysis import _as_frame, fit_scaling

MIB = 2**20
# One figure per fixed value of each of these that varies: lines never mix causal with
# bidirectional, forward with forward+backward, or different shapes.
FACET_COLS = ["device_name", "device", "causal", "mode", "dtype", "scope", "B", "N", "H", "D", "Dv", "K"]
PALETTE = qualitative.Plotly + qualitative.D3
_X_TITLES = {"N": "N (tokens)", "K": "K (mixture components / state size)", "H": "H (heads)"}


def _varies(df: pd.DataFrame, col: str) -> bool:
    vals = df.loc[df["k_applies"], col] if col == "K" else df[col]
    return vals.nunique(dropna=True) > 1


def _facets(df: pd.DataFrame, x: str) -> list[tuple[dict, pd.DataFrame]]:
    """Split into groups where only x and the series change; K-free mixers join every K."""
    fixed = [c for c in FACET_COLS if c != x and _varies(df, c)]
    if not fixed:
        groups = [({}, df)]
    elif "K" not in fixed:
        groups = [(dict(zip(fixed, k)), g) for k, g in df.groupby(fixed, sort=True)]
    else:
        dep, free = df[df["k_applies"]], df[~df["k_applies"]]
        rest = [c for c in fixed if c != "K"]
        groups, covered = [], set()
        for key, g in dep.groupby(fixed, sort=True):
            labels = dict(zip(fixed, key))
            mask = np.ones(len(free), dtype=bool)
            for c in rest:
                mask &= (free[c] == labels[c]).to_numpy()
            groups.append((labels, pd.concat([g, free[mask]])))
            covered.add(tuple(labels[c] for c in rest))
        # K-free cells whose other parameters meet no K-dependent cell still get a figure.
        for key, g in (free.groupby(rest, sort=True) if rest else [((), free)]):
            if len(g) and tuple(key) not in covered:
                groups.append((dict(zip(rest, key)), g))
    out = []
    for labels, g in groups:
        # Prefer an ok cell when a K-free mixer was measured once per K at the same size.
        g = g.assign(_ok=g["status"] == "ok").sort_values(["_ok", x], kind="stable")
        g = g.drop_duplicates(subset=["series", x], keep="last")
        if g[x].nunique() >= 2:
            out.append((labels, g))
    return out


def _facet_title(g: pd.DataFrame, x: str) -> str:
    parts = []
    for c in FACET_COLS:
        vals = (g.loc[g["k_applies"], c] if c == "K" else g[c]).dropna().unique()
        # A GPU's name says more than "cuda"; "cpu" is worth saying.
        if c == x or len(vals) != 1 or vals[0] in ("", "cuda", "core"):
            continue
        if c == "causal":
            parts.append("causal" if vals[0] else "bidirectional")
        elif c == "mode":
            parts.append("forward+backward" if vals[0] == "fwd_bwd" else "forward")
        elif c in ("device_name", "device", "dtype", "scope"):
            parts.append(str(vals[0]))
        else:
            parts.append(f"{c}={vals[0]}")
    return " ".join(parts)


def _slope_text(fit: pd.Series | None, x: str) -> str:
    if fit is None or not math.isfinite(fit["slope"]):
        return ""
    text = f"slope {fit['slope']:.2f}"
    # Name the large-x slope only where overhead bends the line enough to matter.
    if math.isfinite(fit["slope_large"]) and abs(fit["slope_large"] - fit["slope"]) >= 0.05:
        text += f", large-{x} {fit['slope_large']:.2f}"
    return f" ({text})"


def _floats(col) -> np.ndarray:
    return np.asarray(col, dtype="float64")


def _sweep_figure(df, x: str, y: str, *, title: str, y_title: str, scale: float = 1.0,
                  errors: bool = False, guides: tuple[int, ...] = (), slopes: bool = True,
                  extra_y: str | None = None, ceiling: tuple[str, float] | None = None) -> list[go.Figure]:
    frame = _as_frame(df)
    # the columns read below, alone: per-line row selections then copy a few numbers per cell
    # instead of its samples and clocks too (with the analysis below, a 636-cell report 35.5 -> 16.4 s)
    used = FACET_COLS + ["series", "status", "reason", "k_applies", "host_bound", "noisy", x, y,
                         "p20_ms", "p80_ms"] + ([extra_y] if extra_y else [])
    frame = frame[[c for c in dict.fromkeys(used) if c in frame]]
    if x == "K":
        frame = frame[frame["k_applies"]]
    figs = []
    for _, g in _facets(frame, x):
        fits = fit_scaling(g, x=x, y=y, by=["series"]).set_index("series") if slopes else None
        colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(g["series"].unique()))}
        ok = g[g["status"] == "ok"]
        lines = dict(list(ok.groupby("series", sort=False)))
        traces, tops = [], []
        for series, color in colors.items():
            rows = lines.get(series)
            if rows is not None:
                fit = fits.loc[series] if fits is not None else None
                _add_line(traces, tops, rows.sort_values(x), series, color, fit, x, y, scale,
                          errors, extra_y)
        traces += _guides(ok, x, y, scale, guides)
        layout = dict(
            xaxis=dict(type="log", title=dict(text=_X_TITLES.get(x, x))),
            yaxis=dict(type="log", title=dict(text=y_title)),
            legend=dict(font=dict(size=11)), template=_template(), height=480)
        if ceiling is not None:
            label, value = ceiling
            _add_ceiling(layout, label, value * scale)
            tops.append(value * scale)
        traces += _failures(g, x, colors, top=max(tops) * 1.8 if tops else 1.0)
        layout["title"] = dict(text=html.escape(f"{title} · {_facet_title(g, x)}".strip(" ·")))
        # plain dicts, built here and not checked again property by property: plotly's
        # validation took most of a large report's time (results/2026-11-29-h200-paper-3, 636
        # cells: `gmabench report` 17.4 -> 10.1 s on a 2-core CPU, the better of two runs each,
        # old and new alternating)
        figs.append(go.Figure(data=traces, layout=layout, _validate=False))
    return figs


def _add_line(traces: list, tops: list, rows: pd.DataFrame, series: str, color: str, fit,
              x: str, y: str, scale: float, errors: bool, extra_y: str | None) -> None:
    """One series' line (ok cells with y > 0, sorted by x), its p20/p80 error bars and its
    extra_y line; the heights it reaches go to tops."""
    rows = rows[_floats(rows[y]) > 0]
    if rows.empty:
        return
    yv = _floats(rows[y]) * scale
    trace = dict(type="scatter", x=_floats(rows[x]), y=yv, mode="lines+markers",
                 name=html.escape(series) + _slope_text(fit, x), legendgroup=series,
                 line=dict(color=color))
    if errors and rows["p20_ms"].notna().all() and rows["p80_ms"].notna().all():
        p20, p80, mid = _floats(rows["p20_ms"]), _floats(rows["p80_ms"]), _floats(rows[y])
        trace["error_y"] = dict(type="data", symmetric=False, array=(p80 - mid) * scale,
                                arrayminus=(mid - p20) * scale)
        tops.append(float(p80.max() * scale))
    traces.append(trace)
    tops.append(float(yv.max()))
    if extra_y and rows[extra_y].notna().any():
        ex = rows[_floats(rows[extra_y]) > 0]
        traces.append(dict(
            type="scatter", x=_floats(ex[x]), y=_floats(ex[extra_y]) * scale,
            mode="lines+markers", line=dict(color=color, dash="dot"), legendgroup=series,
            name=html.escape(f"{series} {extra_y.removesuffix('_bytes')}")))


def _add_ceiling(layout: dict, label: str, value: float) -> None:
    """A dotted horizontal line at a measured ceiling, labelled at its left end. On a log axis
    plotly.js takes a shape's y as a data value and an annotation's as its log10."""
    layout["shapes"] = [dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=value,
                             y1=value, line=dict(color="black", dash="dot", width=1))]
    layout["annotations"] = [dict(text=html.escape(label), showarrow=False, xref="x domain", x=0,
                                  xanchor="left", yref="y", y=math.log10(value),
                                  yanchor="bottom")]


@functools.cache
def _template():
    """plotly_white, resolved once (a template's name is resolved, and copied, per figure)."""
    return pio.templates["plotly_white"]


def _guides(ok: pd.DataFrame, x: str, y: str, scale: float, powers: tuple[int, ...]) -> list[dict]:
    """Dashed O(x^p) lines from the smallest measured size, to read slopes by eye."""
    ok = ok[_floats(ok[y]) > 0]
    if ok.empty or not powers:
        return []
    x0, x1 = float(ok[x].min()), float(ok[x].max())
    y0 = float(np.exp(np.log(_floats(ok.loc[ok[x] == ok[x].min(), y])).mean())) * scale
    out = []
    for p in powers:
        label = f"O({x})" if p == 1 else f"O({x}{'²' if p == 2 else f'^{p}'})"
        out.append(dict(type="scatter", x=[x0, x1], y=[y0, y0 * (x1 / x0) ** p], mode="lines",
                        name=f"{label} guide", hoverinfo="skip",
                        line=dict(color="gray", dash="dash", width=1)))
    return out


def _failures(g: pd.DataFrame, x: str, colors: dict, top: float) -> list[dict]:
    """Failed cells (oom, timeout, crash...) as markers at the top, so they stay visible. Skipped
    cells (a form the mixer does not have, a package missing) are listed in the tables instead."""
    bad = g[~g["status"].isin(["ok", "skipped"])].sort_values(["series", x])
    if bad.empty:
        return []
    hover = [html.escape(f"{r.series} {x}={getattr(r, x)}: {r.status} {r.reason}".strip())
             for r in bad.itertuples()]
    return [dict(
        type="scatter", x=_floats(bad[x]), y=[top] * len(bad), mode="markers+text",
        text=[html.escape(s) for s in bad["status"]], textposition="bottom center",
        hovertext=hover, hoverinfo="text", name="failed (status shown at top)",
        marker=dict(symbol="x", size=11, color=[colors.get(s, "black") for s in bad["series"]]))]


def latency_vs_n(df) -> list[go.Figure]:
    return _sweep_figure(df, "N", "median_ms", title="Latency vs N", y_title="ms",
                         errors=True, guides=(1, 2))


def memory_vs_n(df) -> list[go.Figure]:
    return _sweep_figure(df, "N", "peak_bytes", title="Peak memory vs N", y_title="MiB",
                         scale=1 / MIB, guides=(1, 2), extra_y="saved_bytes")


def throughput_vs_n(df) -> list[go.Figure]:
    return _sweep_figure(df, "N", "tokens_per_s", title="Throughput vs N", y_title="tokens/s",
                         slopes=False)


def latency_vs_k(df) -> list[go.Figure]:
    return _sweep_figure(df, "K", "median_ms", title="Latency vs K", y_title="ms",
                         errors=True, guides=(1,))


def memory_vs_k(df) -> list[go.Figure]:
    return _sweep_figure(df, "K", "peak_bytes", title="Peak memory vs K", y_title="MiB",
                         scale=1 / MIB, guides=(1,), extra_y="saved_bytes")


def latency_vs_h(df) -> list[go.Figure]:
    """Only where a run sweeps the head count (the heads suite): the work grows as H."""
    return _sweep_figure(df, "H", "median_ms", title="Latency vs H", y_title="ms",
                         errors=True, guides=(1,))


def memory_vs_h(df) -> list[go.Figure]:
    return _sweep_figure(df, "H", "peak_bytes", title="Peak memory vs H", y_title="MiB",
                         scale=1 / MIB, guides=(1,), extra_y="saved_bytes")


def bandwidth_vs_n(df, ceilings: dict | None = None) -> list[go.Figure]:
    """Achieved bytes/s of the analytic fewest bytes, against the measured copy ceiling."""
    c = (ceilings or {}).get("copy_bytes_per_s")
    return _sweep_figure(df, "N", "tb_per_s", title="Achieved bandwidth vs N (fewest bytes / time)",
                         y_title="TB/s", slopes=False,
                         ceiling=(f"measured copy {c / 1e12:.2f} TB/s", c / 1e12) if c else None)


def flops_vs_n(df, ceilings: dict | None = None) -> list[go.Figure]:
    """Achieved FLOP/s of the analytic FLOPs, against the measured matmul ceiling."""
    c = (ceilings or {}).get("matmul_flops_per_s")
    return _sweep_figure(df, "N", "tflops_per_s", title="Achieved FLOP/s vs N (analytic FLOPs / time)",
                         y_title="TFLOP/s", slopes=False,
                         ceiling=(f"measured bf16 matmul {c / 1e12:.0f} TFLOP/s", c / 1e12) if c else None)


def all_figures(df, ceilings: dict | None = None) -> list[tuple[str, go.Figure]]:
    """Every figure of the report, each with the name of the section it belongs to.
    `ceilings` (copy bytes/s, matmul FLOP/s measured on the device) draws the roofs."""
    frame = _as_frame(df)
    out = []
    for name, make in [("Latency vs N", latency_vs_n), ("Peak memory vs N", memory_vs_n),
                       ("Throughput vs N", throughput_vs_n), ("Latency vs K", latency_vs_k),
                       ("Peak memory vs K", memory_vs_k), ("Latency vs H", latency_vs_h),
                       ("Peak memory vs H", memory_vs_h)]:
        out.extend((name, fig) for fig in make(frame))
    if "tb_per_s" in frame and frame["tb_per_s"].notna().any():
        out.extend(("Achieved bandwidth vs N", fig) for fig in bandwidth_vs_n(frame, ceilings))
    if "tflops_per_s" in frame and frame["tflops_per_s"].notna().any():
        out.extend(("Achieved FLOP/s vs N", fig) for fig in flops_vs_n(frame, ceilings))
    return out


def history_figure(history) -> go.Figure:
    """Each cell of a report.history.History over its runs: median time against the run, on a
    log axis, one line per cell and timer (a line never joins an eager time to a replayed one);
    cells that did not run ok leave a gap."""
    names = [run.name for run in history.runs]
    commits = {run.name: run.commit for run in history.runs}
    traces = []
    for i, key in enumerate(history.cells):
        points = history.points(key)
        for timer in dict.fromkeys(p.timer for p in points):
            pts = [p for p in points if p.timer == timer]
            traces.append(go.Scatter(
                x=[p.run for p in pts], y=[p.median_ms for p in pts], mode="lines+markers",
                name=html.escape(history.labels[key] + (f" ({timer})" if timer else "")),
                line=dict(color=PALETTE[i % len(PALETTE)], dash="solid" if timer != "cuda_graph" else "dash"),
                customdata=[[commits[p.run], p.status, timer or "not recorded"] for p in pts],
                hovertemplate="%{x}<br>commit %{customdata[0]}<br>%{y:.4g} ms (%{customdata[1]}, "
                              "%{customdata[2]})<extra>%{fullData.name}</extra>"))
    layout = dict(template=_template(), title="Median time per run, oldest run first",
                  xaxis=dict(title="run", categoryorder="array", categoryarray=names, type="category"),
                  yaxis=dict(title="median (ms)", type="log"), legend=dict(orientation="h", y=-0.35),
                  height=620)
    return go.Figure(data=traces, layout=layout)
