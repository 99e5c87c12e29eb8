"""Comparing two runs cell by cell: the performance-regression gate.

A cell regresses when its median time grows by more than `threshold` AND the raw samples say
the change is real (one-sided Mann-Whitney U test, scipy; times are compared only between cells
timed alike: eager calls and CUDA-graph replays measure different things), or when its peak
memory grows by more than `threshold`, or when its output or gradient error against the float64
reference grows past `error_ratio` times the base's (errors under `error_floor` count as that
floor: they are rounding noise), or when it ran ok before and does not now. Every regressed cell counts: one is
enough to fail the gate. A slower cell that was host-bound in both runs says so in `why`, with
how much its host time grew: a slower call path or host can explain it (gma's and cuDNN's
fwd_bwd calls at N=2048 took the host 1.2-1.7x longer in one H200 run than in another:
results/2026-11-29-h200-paper-3/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from scipy.stats import mannwhitneyu

from gmabench.report.analysis import cell_label, host_bound
from gmabench.results.schema import cell_key


@dataclass
class CellChange:
    key: tuple
    label: str
    base_ms: float | None
    new_ms: float | None
    time_ratio: float | None        # new / base
    p_value: float | None           # P(new is not slower), one-sided
    base_bytes: int | None
    new_bytes: int | None
    memory_ratio: float | None
    base_status: str
    new_status: str
    verdict: str                    # "regressed", "improved", "same", "new", "gone"
    why: str = ""


def _latest(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for r in records:
        out[cell_key(r)] = r  # a resumed run may hold a cell twice only if it was re-run: keep the last
    return out


def _ratio(new, base):
    return (new / base) if (new is not None and base not in (None, 0)) else None


def _host_note(rb: dict[str, Any], rn: dict[str, Any]) -> str:
    """'' unless both cells were host-bound (analysis.host_bound); then their host times."""
    hb, hn, mb, mn = rb.get("host_ms"), rn.get("host_ms"), rb.get("median_ms"), rn.get("median_ms")
    if not (hb and hn and mb and mn) or not (host_bound(hb, mb) and host_bound(hn, mn)):
        return ""
    return (f"; host-bound in both runs (host {hn / mn:.0%} of the time), its host time "
            f"{hn / hb:.2f}x: a slower call path or host can explain it")


def _error_growth(rb: dict[str, Any], rn: dict[str, Any], ratio: float, floor: float) -> str:
    """'' unless the output's or a gradient's error grew past `ratio` times the base's (each
    taken as at least `floor`); then which, from what to what."""
    grown = []
    pairs = [("output", rb.get("rel_error"), rn.get("rel_error"))]
    base_grads, new_grads = rb.get("grad_rel_errors") or {}, rn.get("grad_rel_errors") or {}
    pairs += [(f"grad {name}", base_grads.get(name), new_grads[name]) for name in new_grads]
    for what, eb, en in pairs:
        if eb is not None and en is not None and en > ratio * max(eb, floor):
            grown.append(f"{what} error {eb:.2g} -> {en:.2g}")
    return "; ".join(grown)


def compare_runs(base: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], *, threshold: float = 0.10,
                 alpha: float = 0.05, error_ratio: float = 2.0,
                 error_floor: float = 1e-5) -> list[CellChange]:
    b, n = _latest(base), _latest(new)
    changes = []
    for key in list(b) + [k for k in n if k not in b]:
        rb, rn = b.get(key), n.get(key)
        ref = rn or rb
        if rb is None or rn is None:
            changes.append(CellChange(key, cell_label(ref), None, None, None, None, None, None, None,
                                      rb["status"] if rb else "", rn["status"] if rn else "",
                                      "new" if rb is None else "gone"))
            continue
        tr = _ratio(rn.get("median_ms"), rb.get("median_ms"))
        mr = _ratio(rn.get("peak_bytes"), rb.get("peak_bytes"))
        p = None
        timers = (rb.get("timer") or "", rn.get("timer") or "")
        timed_apart = all(timers) and timers[0] != timers[1]   # eager calls against graph replays
        if timed_apart:
            tr = None
        elif rb.get("samples_ms") and rn.get("samples_ms"):
            p = float(mannwhitneyu(rn["samples_ms"], rb["samples_ms"], alternative="greater").pvalue)
        verdict, why = "same", ""
        grown = _error_growth(rb, rn, error_ratio, error_floor)
        if rb["status"] == "ok" and rn["status"] != "ok":
            verdict, why = "regressed", f"was ok, now {rn['status']}: {rn.get('reason', '')}"
        elif grown:
            verdict, why = "regressed", f"less accurate: {grown}"
        elif tr is not None and tr > 1 + threshold and (p is None or p < alpha):
            verdict, why = "regressed", f"{tr:.2f}x slower (p={p:.2g})" if p is not None else f"{tr:.2f}x slower"
            why += _host_note(rb, rn)
        elif mr is not None and mr > 1 + threshold:
            verdict, why = "regressed", f"{mr:.2f}x more peak memory"
        elif tr is not None and tr < 1 / (1 + threshold):
            verdict, why = "improved", f"{1 / tr:.2f}x faster"
        elif rb["status"] != "ok" and rn["status"] == "ok":
            verdict, why = "improved", f"was {rb['status']}, now ok"
        if timed_apart and rb["status"] == rn["status"] == "ok":
            why = "; ".join(filter(None, [why, f"times not compared: timed by {timers[0]} in the base "
                                               f"run and by {timers[1]} in this one"]))
        changes.append(CellChange(key, cell_label(rn), rb.get("median_ms"), rn.get("median_ms"), tr, p,
                                  rb.get("peak_bytes"), rn.get("peak_bytes"), mr, rb["status"], rn["status"],
                                  verdict, why))
    return changes
