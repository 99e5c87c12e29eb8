"""The gmabench command line (Typer). Each command parses its options and delegates."""
