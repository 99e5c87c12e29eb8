"""Records and their append-only store."""

from gmabench.results.schema import KEY_FIELDS, SCHEMA_VERSION, STATUSES, Record, cell_key
from gmabench.results.store import CorruptResultsError, ResultStore, load_records

__all__ = ["KEY_FIELDS", "SCHEMA_VERSION", "STATUSES", "Record", "cell_key",
           "CorruptResultsError", "ResultStore", "load_records"]
