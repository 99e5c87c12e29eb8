"""Every run committed under results/ still loads and renders with today's code (schema drift
in the record or the report would otherwise break the repository's own evidence)."""

from pathlib import Path

import pytest

from gmabench.report import write_report
from gmabench.results.schema import STATUSES, Record
from gmabench.results.store import load_records

RUNS = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "results").glob("*/results.jsonl"))


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_committed_run_loads_and_renders(run, tmp_path):
    records = load_records(run)
    assert records
    for r in records:
        assert r["status"] in STATUSES
        Record.from_dict(r)  # every field the schema knows still fits
    html = write_report(tmp_path, records, {}, {"name": run.name}).read_text()
    assert f"{sum(r['status'] == 'ok' for r in records)} ok of {len(records)}" in html


def test_there_is_committed_evidence():
    assert len(RUNS) >= 1
