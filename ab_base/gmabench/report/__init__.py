"""Reports of a run: scaling fits, terminal tables and a self-contained HTML page (no torch)."""

from gmabench.report.analysis import fit_scaling, records_frame, speedup_table
from gmabench.report.html import write_report
from gmabench.report.table import accuracy_table, failures_table, summary_table

__all__ = ["write_report", "summary_table", "accuracy_table", "failures_table", "records_frame",
           "fit_scaling", "speedup_table"]
