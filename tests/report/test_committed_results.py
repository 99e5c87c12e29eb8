"""Every run committed under results/ still loads and renders with today's code (schema drift
in the record or the report would otherwise break the repository's own evidence)."""

from pathlib import Path

import pytest

from gmabench.report import write_report
from gmabench.results.schema import STATUSES, Record
from gmabench.results.store import load_records

RUNS = sorted({p.parent for p in (Path(__file__).resolve().parents[2] / "results").glob("*/results.jsonl*")})


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


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_committed_report_opens_offline(run):
    """A committed report.html either embeds plotly.js or loads a copy committed beside it."""
    import re
    page = run / "report.html"
    if not page.exists():
        pytest.skip("no committed report for this run")
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<script[^>]*\bsrc="([^"]+)"', text)
    assert all(not s.startswith(("http:", "https:", "//")) for s in sources)
    if sources:
        assert all((run / s).resolve().is_file() for s in sources), sources
    else:
        assert "Plotly" in text and len(text) > 3_000_000  # the bundle is inline
