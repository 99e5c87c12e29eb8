"""`gmabench compare BASE NEW`: the performance-regression gate (exit 1 when a cell regressed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gmabench.cli.common import console, fail, load_run

STYLE = {"regressed": "red", "improved": "green", "same": "", "new": "cyan", "gone": "yellow"}


def compare(
    base: Annotated[Path, typer.Argument(help="The baseline run directory.")],
    new: Annotated[Path, typer.Argument(help="The run directory to judge.")],
    threshold: Annotated[float, typer.Option(help="Relative slow-down (or memory growth) that counts, e.g. 0.1.")] = 0.10,
    alpha: Annotated[float, typer.Option(help="Significance level of the one-sided Mann-Whitney test on raw samples.")] = 0.05,
    error_ratio: Annotated[float, typer.Option(help="Growth of a cell's output or gradient error against float64 that counts, e.g. 2.")] = 2.0,
    error_floor: Annotated[float, typer.Option(help="Errors below this count as this (rounding noise).")] = 1e-5,
    show_all: Annotated[bool, typer.Option("--all", help="List unchanged cells too.")] = False,
) -> None:
    """Compare two runs cell by cell; exit 1 when any cell regressed, 2 on bad input."""
    from gmabench.report.compare import compare_runs

    if threshold <= 0:
        fail(f"--threshold: must be positive, got {threshold}")
    if not 0 < alpha < 1:
        fail(f"--alpha: must be in (0, 1), got {alpha}")
    if error_ratio <= 1:
        fail(f"--error-ratio: must be above 1, got {error_ratio}")
    if error_floor < 0:
        fail(f"--error-floor: must not be negative, got {error_floor}")
    runs = [load_run(path, name) for name, path in (("BASE", base), ("NEW", new))]
    changes = compare_runs(runs[0], runs[1], threshold=threshold, alpha=alpha,
                           error_ratio=error_ratio, error_floor=error_floor)
    table = Table(title=f"{new} against {base} (threshold {threshold:.0%})")
    for col in ("cell", "base ms", "new ms", "new/base", "p", "peak new/base", "verdict"):
        table.add_column(col, justify="left" if col in ("cell", "verdict") else "right")
    for c in changes:
        if c.verdict == "same" and not show_all:
            continue
        fmt = lambda x, f: "" if x is None else format(x, f)  # noqa: E731
        style = STYLE[c.verdict]
        verdict = f"[{style}]{c.verdict}[/] {c.why}" if style else f"{c.verdict} {c.why}"
        table.add_row(c.label, fmt(c.base_ms, ".4g"), fmt(c.new_ms, ".4g"), fmt(c.time_ratio, ".3f"),
                      fmt(c.p_value, ".2g"), fmt(c.memory_ratio, ".3f"), verdict)
    console.print(table)
    counts = {v: sum(c.verdict == v for c in changes) for v in STYLE}
    console.print(", ".join(f"{v}: {n}" for v, n in counts.items()))
    if counts["regressed"]:
        raise typer.Exit(1)
