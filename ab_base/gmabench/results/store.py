"""Append-only, crash-safe JSON-lines store of records (one run directory, one results.jsonl).

A finished run may be archived as results.jsonl.gz (`gzip -9 results.jsonl`: committed runs are
a third of the size): it still loads and reports, but takes no more records.

Each record is written as one line, flushed and fsync'ed before the next cell starts, so a
killed run loses at most the cell in flight. A torn last line (the process died mid-write) is
cut off before the next append; a bad line anywhere else is corruption and is reported with its
line number rather than silently skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable

RESULTS_FILE = "results.jsonl"
ARCHIVE_FILE = RESULTS_FILE + ".gz"


class CorruptResultsError(ValueError):
    """A results file has an unreadable line that is not a torn tail."""


class ArchivedRunError(ValueError):
    """Records were to be added to a run whose results are archived (results.jsonl.gz)."""


def _parse(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a file and the byte length of its valid prefix (where a torn tail starts)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:   # gzip.BadGzipFile is an OSError
        raise CorruptResultsError(f"{path}: not a readable gzip file ({exc})") from None
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if line.strip():
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                # Only the final, unterminated line can be a torn write.
                if is_last:
                    return records, offset
                raise CorruptResultsError(f"{path}: line {number} is not a valid record ({exc})") from None
            if is_last:
                # A complete object without its newline: keep it, but the file needs the newline.
                records.append(obj)
                return records, offset + len(line)
            records.append(obj)
        offset += len(line) + (0 if is_last else 1)
    return records, offset


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a results file (or of DIR/results.jsonl, else DIR/results.jsonl.gz)."""
    p = Path(path)
    if p.is_dir():
        plain, archived = p / RESULTS_FILE, p / ARCHIVE_FILE
        p = archived if archived.exists() and not plain.exists() else plain
    if not p.exists():
        return []
    return _parse(p)[0]


class ResultStore:
    """Appends records to DIR/results.jsonl, repairing a torn tail first."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS_FILE
        if (self.run_dir / ARCHIVE_FILE).exists():
            raise ArchivedRunError(f"{self.run_dir} is an archived run ({ARCHIVE_FILE}): gunzip it to "
                                   "add records")

    def records(self) -> list[dict[str, Any]]:
        return load_records(self.path)

    def repair(self) -> int:
        """Cut a torn last line; add a missing final newline. Returns bytes removed."""
        if not self.path.exists():
            return 0
        records, valid = _parse(self.path)
        size = self.path.stat().st_size
        with open(self.path, "r+b") as f:
            if valid < size:
                f.truncate(valid)
            if valid > 0:
                f.seek(valid - 1)
                if f.read(1) != b"\n":
                    f.seek(valid)
                    f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return size - valid

    def append(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)
