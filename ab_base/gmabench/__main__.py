"""`python -m gmabench` runs the command line."""

from gmabench.cli.app import main

main()
