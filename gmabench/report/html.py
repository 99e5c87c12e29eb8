"""Write one self-contained report.html for a run: header, fits, failures, figures, all ok cells.

The page embeds plotly.js once (inline, never from a CDN) so it opens offline, and every string
that came from a record, the environment or the suite passes through html.escape.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from gmabench.report.analysis import (HOST_BOUND_SHARE, STEP_TOLERANCE, fit_scaling,
                                      records_frame, speedup_table, steepest_steps, worst_errors)
from gmabench.report.figures import MIB, all_figures
from gmabench.report.table import group_unrecorded

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}
dt{font-weight:600} section.figure{margin-bottom:1.5em} pre{background:#f7f7f7;padding:.5em}
"""


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return str(v)


def _flag(v: Any) -> bool:
    return v is not None and v is not pd.NA and bool(v)


def _table(headers: list[str], rows: Iterable[list[Any]], left: int = 1) -> str:
    """An escaped HTML table; the first `left` columns are text and align left."""
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"
    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pick(d: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    """First scalar under any of `keys`, searching nested dicts (env layout is free-form)."""
    if not isinstance(d, dict) or depth > 3:
        return None
    for k in keys:
        v = d.get(k)
        if isinstance(v, dict):
            v = v.get("name") or v.get("version")
        if v not in (None, "", [], {}):
            return v
    for v in d.values():
        found = _pick(v, keys, depth + 1)
        if found is not None:
            return found
    return None


def _shape(r: Any, k_applies: bool = True) -> str:
    # K is part of the cell's identity even where the mixer ignores it.
    k = r.K if k_applies else f"{r.K} (n/a)"
    return f"B={r.B} N={r.N} H={r.H} D={r.D} Dv={r.Dv} K={k}"


TIMERS = {"cuda_events": "CUDA events around each call issued from Python (host work included)",
          "cuda_graph": "CUDA events around a replay of the call captured in a CUDA graph "
                        "(the GPU's time alone)",
          "wall_clock": "wall clock (CPU)"}


def _header(df: pd.DataFrame, env: dict, suite: dict) -> tuple[str, str]:
    first = df.iloc[0] if len(df) else None
    name = suite.get("name") or (first["suite"] if first is not None else "") or "unnamed suite"
    stamps = [t for t in df.get("timestamp", []) if t] if len(df) else []
    facts = {
        "Device": _pick(env, ("gpu_name", "gpu", "device_name", "device"))
        or ", ".join(sorted({str(v) for v in df.get("device_name", []) if v})) or None,
        "torch": _pick(env, ("torch_version", "torch")),
        "Date": _pick(env, ("timestamp", "date", "captured_at")) or (max(stamps) if stamps else
                datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        "Commit": _pick(env, ("git_commit", "commit")) or (first["git_commit"] if first is not None
                                                         else None),
        "Cells": f"{int((df['status'] == 'ok').sum())} ok of {len(df)}" if len(df) else "0",
        "Timer": ", ".join(TIMERS.get(t, t) for t in sorted({t for t in df.get("timer", []) if t}))
        or None,
    }
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(_fmt(v))}</dd>"
                 for k, v in facts.items())
    return str(name), f"<h1>gmabench report: {html.escape(str(name))}</h1><dl>{dl}</dl>"


def _fixed(r: Any, x: str) -> str:
    """The shape a fitted line holds fixed, e.g. "B=1 H=16 D=64 K=64" along N."""
    return " ".join(f"{c}={getattr(r, c)}" for c in ["B", "N", "H", "D", "K"]
                    if c != x and getattr(r, c) is not pd.NA)


def _fit_section(df: pd.DataFrame) -> str:
    rows = []
    for label, x, y in [("latency vs N", "N", "median_ms"), ("peak memory vs N", "N", "peak_bytes"),
                        ("latency vs K", "K", "median_ms"), ("peak memory vs K", "K", "peak_bytes"),
                        ("latency vs H", "H", "median_ms"), ("peak memory vs H", "H", "peak_bytes")]:
        fits = fit_scaling(df, x=x, y=y)
        # Series with no measured point are listed among the failed cells, not here.
        for r in fits[(fits["n_x_cells"] >= 2) & (fits["n_points"] > 0)].itertuples():
            fixed = _fixed(r, x)
            slope = "—" if math.isnan(r.slope) else f"{r.slope:.2f} ± {r.stderr:.2f}"
            if r.n_host_bound and math.isfinite(r.slope):
                slope += f" ({r.n_host_bound} of its sizes host-bound)"
            span = f"{r.x_min:g}–{r.x_max:g}" if r.n_points else "—"
            large = _fmt(r.slope_large, ".2f")
            if r.n_host_bound_large and math.isfinite(r.slope_large):
                large += f" ({r.n_host_bound_large} of its sizes host-bound)"
            rows.append([label, r.series, fixed, slope, _fmt(r.r2, ".3f"), large, r.n_points,
                         span])
    headers = ["fit", "series", "fixed", "slope ± stderr", "r²", "large-x slope", "points",
               "x range"]
    note = ("<p>Log-log slopes over ok cells (needs 3 sizes): 1 means O(x), 2 means O(x²). "
            "The large-x slope refits the upper half of the sizes, past launch overhead; where "
            "some of a fit's sizes are host-bound (see the cells' legend) it may still time the "
            "call path, and says how many.</p>")
    return "<h2>Scaling fits</h2>" + note + _table(headers, rows, left=3)


def _steps_section(df: pd.DataFrame) -> str:
    rows = []
    for label, x in [("latency vs N", "N"), ("latency vs K", "K")]:
        steps = steepest_steps(df, x=x)
        ran = set(df.loc[df["status"] == "ok", "series"])
        for r in steps[(steps["n_x_cells"] >= 2) & steps["series"].isin(ran)].itertuples():
            fixed = _fixed(r, x)
            step = "—" if r.n_sizes < 2 else f"{r.x_from:g} → {r.x_to:g}"
            rows.append([label, r.series, fixed, r.verdict, step, _fmt(r.exponent, ".2f"),
                         f"{r.n_sizes} of {r.n_x_cells}"])
    if not rows:
        return ""
    headers = ["growth", "series", "fixed", "verdict", "steepest step", "local exponent",
               "sizes used"]
    note = ("<p>Does each line grow as its complexity says? Between neighbouring sizes, the "
            "local exponent log(t<sub>b</sub>/t<sub>a</sub>) / log(x<sub>b</sub>/x<sub>a</sub>) "
            "of the median time, over ok cells that are neither host-bound nor noisy; the "
            f"steepest one decides: at most 1 + {STEP_TOLERANCE:g} is linear or better, at most "
            f"2 + {STEP_TOLERANCE:g} super-linear but at most quadratic. A fitted slope can "
            "average a cliff away; this shows where it is.</p>")
    return "<h2>Steepest growth</h2>" + note + _table(headers, rows, left=4)


def _failure_section(df: pd.DataFrame) -> str:
    """Failed cells one by one; skipped cells grouped by mixer and reason (often hundreds)."""
    bad = df[df["status"] != "ok"].sort_values(["series", "N", "K"])
    if bad.empty:
        return "<h2>Failed and skipped cells</h2><p>None: every cell ran ok.</p>"
    out = "<h2>Failed and skipped cells</h2>"
    failed = bad[bad["status"] != "skipped"]
    if len(failed):
        rows = [[r.series, _shape(r, r.k_applies), r.status, r.reason] for r in failed.itertuples()]
        out += _table(["series", "shape", "status", "reason"], rows, left=4)
    skipped = bad[bad["status"] == "skipped"]
    if len(skipped):
        rows = []
        for (mixer, reason), g in skipped.groupby(["mixer", "reason"], sort=True):
            ns = sorted({int(n) for n in g["N"]})
            rows.append([mixer, len(g), ", ".join(map(str, ns)), reason])
        out += "<h3>Skipped</h3>" + _table(["mixer", "cells", "N", "reason"], rows, left=1)
    return out


def _ok_section(df: pd.DataFrame) -> str:
    ok = df[df["status"] == "ok"].sort_values(["series", "B", "H", "D", "K", "N"])
    fracs = {c: label for c, label in [("frac_matmul_ceiling", "of matmul ceiling"),
                                       ("frac_copy_ceiling", "of copy ceiling")] if c in df}
    rows = [[r.series, r.backend or r.impl, r.B, r.N, r.H, r.D, r.Dv,
             r.K if r.k_applies else f"{r.K} (n/a)", _fmt(r.median_ms),
             f"{_fmt(r.p20_ms)}–{_fmt(r.p80_ms)}" + (" (noisy)" if _flag(r.noisy) else "")
             + (" (host-bound)" if r.host_bound else ""),
             None if r.peak_bytes is pd.NA else r.peak_bytes / MIB, r.tokens_per_s,
             r.tflops_per_s, r.tb_per_s, r.rel_error, r.grad_rel_error] + [getattr(r, c) for c in fracs]
            for r in ok.itertuples()]
    headers = ["series", "backend", "B", "N", "H", "D", "Dv", "K", "median ms", "p20–p80 ms",
               "peak MiB", "tokens/s", "TFLOP/s", "TB/s", "rel_error", "grad rel_error"]
    headers += [fracs[c] for c in fracs]
    legend = ("<p>noisy: IQR/median above the suite's threshold; host-bound: the host took at least "
              f"{HOST_BOUND_SHARE:.0%} of the measured time to issue the call: either the GPU "
              "waited for the host, and the cell measures launch overhead more than the kernels "
              "(its times then stay flat across N), or the call waited for the GPU before it "
              "returned (a synchronisation inside it, or a launch queue full of its kernels; "
              "its times then grow with N). rel_error: the output's relative error against the "
              "mixer's float64 reference on a short sample of fresh inputs; grad rel_error "
              "(fwd+bwd cells): the largest relative error of the gradients of every input the "
              "backward differentiates, for one random output gradient (each input's is in the "
              "record's grad_rel_errors).</p>")
    return "<h2>All ok cells</h2>" + legend + _table(headers, rows, left=2)


def _accuracy_section(df: pd.DataFrame) -> str:
    """Per series, the largest error of the output and of each input's gradient over its ok
    cells: which backward is off, and where, at a glance."""
    worst = worst_errors(df)
    if worst.empty or worst[list(worst.columns[2:])].isna().all().all():
        return ""
    headers = ["series", "cells", "output"] + list(worst.columns[4:])
    rows = [[r[c] for c in headers] for r in worst.to_dict("records")]
    note = ("<p>Largest relative error against the mixer's float64 reference over each series' ok "
            "cells (a sample of accuracy_tokens tokens per cell): of the output, and of the "
            "gradient of each input the backward differentiates (fwd+bwd cells, one random output "
            "gradient); — where a series has no such input or ran no backward.</p>")
    return "<h2>Accuracy</h2>" + note + _table(headers, rows, left=1)


def _speedup_section(df: pd.DataFrame, baseline: Any) -> str:
    if not isinstance(baseline, str) or baseline not in set(df["mixer"]):
        return ""
    sp = speedup_table(df, baseline)
    rows = [[r.series, _shape(r, r.K is not pd.NA), r.median_ms, r.baseline_ms,
             f"{r.speedup:.2f}×"] for r in sp.itertuples()]
    return (f"<h2>Speed against {html.escape(baseline)}</h2>"
            + _table(["series", "shape", "median ms", "baseline ms", "speedup"], rows, left=2))


def _unrecorded_section(unrecorded: list[dict]) -> str:
    """Cells of the suite that the run never reached, grouped like skipped cells."""
    if not unrecorded:
        return ""
    rows = []
    for (mixer, causal, mode), g in group_unrecorded(unrecorded):
        ns = sorted({int(c["N"]) for c in g})
        ks = sorted({int(c["K"]) for c in g})
        rows.append([mixer, "causal" if causal else "bidir", mode, len(g), ", ".join(map(str, ns)),
                     ", ".join(map(str, ks))])
    return (f"<h2>Not measured ({len(unrecorded)} cells of the suite)</h2><p>The run stopped before "
            "these cells (a time budget or an interruption); <code>gmabench run SUITE --out DIR "
            "--resume</code> measures them.</p>"
            + _table(["mixer", "kind", "mode", "cells", "N", "K"], rows, left=3))


def shared_plotly_js(folder: Path) -> Path:
    """folder/plotly-<version>.min.js, written from the installed plotly if missing: one copy of
    the 4.6 MB bundle for every report under a results folder instead of one per report."""
    import plotly
    from plotly.offline import get_plotlyjs

    path = Path(folder) / f"plotly-{plotly.__version__}.min.js"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(get_plotlyjs(), encoding="utf-8")
    return path


def write_report(run_dir: Path, records: list[dict], env: dict, suite: dict,
                 unrecorded: list[dict] | None = None, shared_js: bool = False) -> Path:
    """Write run_dir/report.html and return its path. `unrecorded`: cells of the suite without a
    record (as dicts of the record's key fields), listed in their own section. shared_js: load
    plotly.js from ../plotly-<version>.min.js (written there if missing) instead of embedding it,
    for many reports kept side by side (the report then opens offline only beside that file)."""
    env, suite = env or {}, suite or {}
    run_dir = Path(run_dir)
    script = ""
    if shared_js:
        js = shared_plotly_js(run_dir.resolve().parent)
        script = '<script src="../' + html.escape(js.name) + '"></script>'
    df = records_frame(records, env)
    title, header = _header(df, env, suite)
    figs = []
    for i, (section, fig) in enumerate(all_figures(df, env.get("ceilings")) if len(df) else []):
        # The first figure carries the whole plotly.js bundle; the rest reuse it.
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0 and not shared_js), div_id=f"fig-{i}",
                          config={"displaylogo": False, "responsive": True})
        figs.append(f'<section class="figure" data-section="{html.escape(section)}">{div}</section>')
    details = "".join(
        f"<details><summary>{html.escape(k)}</summary><pre>"
        f"{html.escape(json.dumps(v, indent=2, sort_keys=True, default=str))}</pre></details>"
        for k, v in [("Environment", env), ("Suite", suite)])
    body = "".join([header, "<h2>Figures</h2>", "".join(figs) or "<p>No sweep with two sizes.</p>",
                    _fit_section(df) if len(df) else "", _steps_section(df) if len(df) else "",
                    _failure_section(df),
                    _unrecorded_section(unrecorded or []),
                    _speedup_section(df, suite.get("baseline")) if len(df) else "",
                    _accuracy_section(df) if len(df) else "", _ok_section(df), details])
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape('gmabench: ' + title)}</title><style>{_CSS}</style>{script}</head>"
            f"<body>{body}</body></html>")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
