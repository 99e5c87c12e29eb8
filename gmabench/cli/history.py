"""`gmabench history DIR...`: each cell's time and peak memory across many runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from gmabench.cli.common import console, fail, load_run, split_list

MIB = 2**20


def history(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (each holding results.jsonl or results.jsonl.gz), in any order.")],
    mixers: Annotated[Optional[str], typer.Option(help="Comma-separated mixers to keep (default: all).")] = None,
    seq_lens: Annotated[Optional[str], typer.Option(help="Comma-separated N to keep (default: all).")] = None,
    heads: Annotated[Optional[str], typer.Option(help="Comma-separated head counts H to keep (default: all).")] = None,
    dtypes: Annotated[Optional[str], typer.Option(help="Comma-separated dtypes to keep, e.g. bfloat16 (default: all).")] = None,
    modes: Annotated[Optional[str], typer.Option(help="Comma-separated modes to keep: fwd, fwd_bwd (default: both).")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Also write this HTML file: the medians against the run (plotly, offline).")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print one Markdown table (a row per run, a column per cell) instead of a table per cell.")] = False,
) -> None:
    """Show how each cell moved from run to run (runs ordered by when they started); exit 2 on bad input."""
    from gmabench.report.history import build_history

    keep = dict(mixers=split_list("--mixers", mixers), seq_lens=split_list("--seq-lens", seq_lens, int),
                heads=split_list("--heads", heads, int), dtypes=split_list("--dtypes", dtypes),
                modes=split_list("--modes", modes))
    for m in keep["modes"] or []:
        if m not in ("fwd", "fwd_bwd"):
            fail(f"--modes: {m!r} is not a mode (fwd, fwd_bwd)")
    runs = []
    names = [p.name for p in run_dirs]
    for path in run_dirs:
        records = load_run(path)
        # a run is named by its folder, or by its path where two folders share a name
        runs.append((path.name if names.count(path.name) == 1 else str(path), records))
    hist = build_history(runs, **keep)
    if not hist.cells:
        fail("no cell of these runs passes --mixers, --seq-lens, --heads, --dtypes and --modes")
    devices = {d for run in hist.runs for d in run.devices}
    if len(devices) > 1:
        console.print(f"[yellow]note:[/] the runs name {len(devices)} devices ({', '.join(sorted(devices))}): "
                      "times of different machines are not versions of one another")
    if markdown:
        from gmabench.report.history import markdown_table
        print(markdown_table(hist))
    for key in hist.cells if not markdown else []:
        table = Table(title=hist.labels[key], title_justify="left")
        for col in ("run", "commit", "timer", "median ms", "vs previous", "peak MiB", "status"):
            table.add_column(col, justify="left" if col in ("run", "commit", "timer", "status") else "right")
        for p in hist.points(key):
            table.add_row(p.run, p.commit[:7], p.timer or "not recorded",
                          "" if p.median_ms is None else f"{p.median_ms:.4g}",
                          "" if p.change is None else f"{p.change:.3f}x",
                          "" if p.peak_bytes is None else f"{p.peak_bytes / MIB:.1f}", p.status)
        console.print(table)
    if html is not None:
        from gmabench.report.figures import history_figure
        html.parent.mkdir(parents=True, exist_ok=True)
        history_figure(hist).write_html(html, include_plotlyjs=True, full_html=True)
        console.print(f"history: {html}", soft_wrap=True)
