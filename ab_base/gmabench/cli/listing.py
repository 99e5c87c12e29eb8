"""`gmabench mixers` and `gmabench suites`: what can be run here."""

from __future__ import annotations

from rich.table import Table

from gmabench.cli.common import console


def mixers() -> None:
    """List every mixer, whether it can run on this machine, and why not when it cannot."""
    from gmabench.mixers.registry import list_mixers

    table = Table(title="mixers")
    for col in ("name", "family", "K applies", "available", "description / reason"):
        table.add_column(col)
    for m in list_mixers():
        avail = "[green]yes[/]" if m["available"] else "[red]no[/]"
        text = m["description"] if m["available"] else f"{m['description']} [red]({m['reason']})[/]"
        table.add_row(m["name"], m["family"], "yes" if m["k_applies"] else "no", avail, text)
    console.print(table)


def suites() -> None:
    """List the named suites and what each sweeps."""
    from gmabench.sweep.plan import plan_sweep
    from gmabench.sweep.suite import available_suites, load_suite

    table = Table(title="suites")
    for col in ("name", "description", "cells", "N range"):
        table.add_column(col)
    for name in available_suites():
        suite = load_suite(name)
        ns = [n for s in suite.sweeps for n in s.seq_lens]
        table.add_row(name, suite.description, str(len(plan_sweep(suite))), f"{min(ns)}-{max(ns)}")
    console.print(table)
