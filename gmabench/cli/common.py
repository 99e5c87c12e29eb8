"""Helpers shared by the commands: the console, bad-input exits, comma-separated lists."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

BAD_INPUT = 2


def fail(message: str) -> NoReturn:
    """Bad input: say what is wrong and exit with code 2 (nothing measured, nothing written)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(BAD_INPUT)


def split_list(option: str, text: str | None, kind: type = str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        fail(f"{option}: expected a comma-separated list, got {text!r}")
    if kind is int:
        out = []
        for t in items:
            try:
                out.append(int(t.replace("_", "")))
            except ValueError:
                fail(f"{option}: {t!r} is not an integer")
        return out
    return items


def load_run(path: Path, what: str = "DIR") -> list[dict]:
    """The records of the run directory `path`; bad input (not a directory, a corrupt results
    file, no record) exits 2 with a message naming `what`."""
    from gmabench.results.store import CorruptResultsError, load_records

    if not path.is_dir():
        fail(f"{what}: {path} is not a directory")
    try:
        records = load_records(path)
    except CorruptResultsError as exc:
        fail(str(exc))
    if not records:
        fail(f"{what}: {path} holds no run (no records in {path / 'results.jsonl'})")
    return records
