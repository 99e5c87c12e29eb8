"""The gmabench Typer application: wires the commands together."""

from __future__ import annotations

import typer

from gmabench.cli.compare import compare
from gmabench.cli.history import history
from gmabench.cli.listing import mixers, suites
from gmabench.cli.report import report
from gmabench.cli.run import run

app = typer.Typer(help="Benchmark and scaling suite for Gaussian Mixture Attention and its peers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command()(run)
app.command()(report)
app.command()(mixers)
app.command()(suites)
app.command()(compare)
app.command()(history)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
