"""`gmabench report DIR`: the HTML scaling report and a terminal summary of a run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gmabench.cli.common import console, fail, load_run


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def _unrecorded(suite: dict, records: list[dict]) -> list[dict]:
    """Cells of the saved suite without a record, as key-field dicts; [] when the suite file is
    missing or from an older layout (then nothing can be said, and nothing is claimed)."""
    from gmabench.results.schema import KEY_FIELDS
    from gmabench.sweep.plan import unrecorded_cells
    from gmabench.sweep.suite import Suite

    devices = {r.get("device") for r in records}
    if not suite.get("sweeps") or len(devices) != 1:
        return []
    try:
        cells = unrecorded_cells(Suite.from_dict(suite), devices.pop(), records)
    except (KeyError, TypeError, ValueError):
        return []
    return [{k: getattr(c, k) for k in KEY_FIELDS} for c in cells]


def render_report(run_dir: Path, baseline: str | None = None, shared_js: bool = False) -> Path:
    from gmabench.report import accuracy_table, failures_table, summary_table, write_report
    from gmabench.report.table import growth_table, speedup_summary, unrecorded_table

    records = load_run(run_dir)
    env = _read_json(run_dir / "environment.json")
    suite = _read_json(run_dir / "suite.json")
    if baseline is not None:
        if baseline not in {r.get("mixer") for r in records}:
            fail(f"--baseline: {baseline!r} is not a mixer of this run "
                 f"(it has: {', '.join(sorted({str(r.get('mixer')) for r in records}))})")
        suite = {**suite, "baseline": baseline}
    unrecorded = _unrecorded(suite, records)
    path = write_report(run_dir, records, env, suite, unrecorded, shared_js=shared_js)
    console.print(summary_table(records))
    growth = growth_table(records)
    if growth is not None:
        console.print(growth)
    console.print(accuracy_table(records))
    if suite.get("baseline") in {r.get("mixer") for r in records}:
        console.print(speedup_summary(records, suite["baseline"]))
    if any(r.get("status") != "ok" for r in records):
        console.print(failures_table(records))
    if unrecorded:
        console.print(unrecorded_table(unrecorded))
    console.print(f"report: {path}", soft_wrap=True)   # a path a terminal's width does not break
    return path


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holding results.jsonl).")],
    baseline: Annotated[Optional[str], typer.Option(help="Mixer to state speed-ups against (default: the suite's baseline).")] = None,
    shared_js: Annotated[bool, typer.Option("--shared-js", help="Load plotly.js from one copy beside DIR "
                                            "(DIR/../plotly-VERSION.min.js) instead of embedding 4.6 MB in each report, "
                                            "for a folder of many runs such as a repository's results/.")] = False,
) -> None:
    """Write DIR/report.html (offline plotly figures, fitted log-log slopes) and print a summary."""
    render_report(run_dir, baseline, shared_js)
