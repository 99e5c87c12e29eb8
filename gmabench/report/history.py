"""Cells across many runs: how each cell's time and peak memory moved from run to run.

What `gmabench history DIR...` shows, and what a notes file quotes as "each version's time". A
cell is a cell_key without the device (the runs of one machine name it alike); its value in a run
is the run's last record of it (a resumed run keeps its re-run). Runs are ordered by their first
record's timestamp. A time is comparable only with times of the same timer (eager calls between
CUDA events and CUDA-graph replays measure different things), so every value carries its timer,
and a change is stated only between consecutive runs that timed the cell alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from gmabench.report.analysis import cell_label
from gmabench.results.schema import KEY_FIELDS

HISTORY_FIELDS = tuple(k for k in KEY_FIELDS if k != "device")


@dataclass
class HistoryRun:
    name: str
    started: str                      # the first record's timestamp ('' when none has one)
    commits: list[str]                # every git_commit its records name, in order of appearance
    devices: list[str]
    cells: dict[tuple, dict[str, Any]] = field(default_factory=dict)

    @property
    def commit(self) -> str:
        return ",".join(c[:7] for c in self.commits) or "?"


@dataclass
class HistoryPoint:
    run: str
    commit: str
    status: str
    median_ms: float | None
    timer: str
    peak_bytes: int | None
    change: float | None              # median over the previous point's, same timer; else None


@dataclass
class History:
    runs: list[HistoryRun]
    cells: list[tuple]                # keys (HISTORY_FIELDS), in the order first seen
    labels: dict[tuple, str]

    def points(self, key: tuple) -> list[HistoryPoint]:
        """The cell's record in every run that has one, oldest run first."""
        out: list[HistoryPoint] = []
        for run in self.runs:
            r = run.cells.get(key)
            if r is None:
                continue
            ms = r.get("median_ms") if r.get("status") == "ok" else None
            timer = r.get("timer") or ""
            prev = next((p for p in reversed(out) if p.median_ms is not None), None)
            change = (ms / prev.median_ms if ms is not None and prev is not None
                      and prev.timer == timer and prev.median_ms > 0 else None)
            out.append(HistoryPoint(run.name, r.get("git_commit", "") or "", r.get("status", "?"),
                                    ms, timer, r.get("peak_bytes"), change))
        return out


def build_history(runs: Iterable[tuple[str, list[dict[str, Any]]]], *,
                  mixers: list[str] | None = None, seq_lens: list[int] | None = None,
                  heads: list[int] | None = None, dtypes: list[str] | None = None,
                  modes: list[str] | None = None) -> History:
    """runs: (name, records) per run directory, in any order. The filters keep the cells whose
    mixer, N, H, dtype and mode are listed (None: all)."""
    def keep(r: dict[str, Any]) -> bool:
        return ((mixers is None or r.get("mixer") in mixers)
                and (seq_lens is None or r.get("N") in seq_lens)
                and (heads is None or r.get("H") in heads)
                and (dtypes is None or r.get("dtype") in dtypes)
                and (modes is None or r.get("mode") in modes))

    built, cells, labels = [], [], {}
    for name, records in runs:
        stamps = [r["timestamp"] for r in records if r.get("timestamp")]
        commits = list(dict.fromkeys(str(r["git_commit"]) for r in records if r.get("git_commit")))
        devices = list(dict.fromkeys(str(r.get("device_name") or r.get("device") or "?")
                                     for r in records))
        run = HistoryRun(name, min(stamps) if stamps else "", commits, devices)
        for r in records:
            if not keep(r) or any(k not in r for k in HISTORY_FIELDS):
                continue
            key = tuple(r[k] for k in HISTORY_FIELDS)
            run.cells[key] = r
            if key not in labels:
                labels[key] = cell_label(r)
                cells.append(key)
        built.append(run)
    built.sort(key=lambda run: (run.started, run.name))
    return History(built, cells, labels)


def markdown_table(history: History) -> str:
    """The history as one Markdown table: a row per run (oldest first), a column per cell, its
    median in ms ('-' where the run has no ok record of it); the run's commits and timers in
    their own columns, since times of different timers are not comparable."""
    head = ["run", "commit", "timer"] + [history.labels[k] for k in history.cells]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in history.runs:
        recs = [run.cells.get(k) for k in history.cells]
        if not any(recs):
            continue
        timers = sorted({r.get("timer") or "not recorded" for r in recs if r})
        vals = ["-" if r is None or r.get("status") != "ok" or r.get("median_ms") is None
                else f"{r['median_ms']:.4g}" for r in recs]
        lines.append("| " + " | ".join([run.name, run.commit, ", ".join(timers), *vals]) + " |")
    return "\n".join(lines)
