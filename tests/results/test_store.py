"""The append-only store: torn tails are repaired, corruption is named by line, nothing is lost."""

import json

import pytest

from gmabench.results.schema import Record, cell_key
from gmabench.results.store import CorruptResultsError, ResultStore, load_records


def _record(i: int) -> dict:
    return Record(mixer="gma", causal=bool(i % 2), mode="fwd", scope="core", B=1, N=64 * (i + 1), H=2,
                  D=16, Dv=16, K=4, dtype="float32", device="cpu", status="ok", median_ms=0.5 + i,
                  samples_ms=[0.5 + i, 0.6 + i], reason=f"r{i} \u00e9").to_dict()


def test_append_and_load_round_trip(tmp_path):
    store = ResultStore(tmp_path)
    recs = [_record(i) for i in range(4)]
    store.extend(recs)
    assert load_records(tmp_path) == recs
    assert [cell_key(r) for r in store.records()] == [cell_key(r) for r in recs]
    assert Record.from_dict(recs[2]).median_ms == 2.5


def test_every_truncation_of_last_record_keeps_complete_ones(tmp_path):
    store = ResultStore(tmp_path / "full")
    recs = [_record(i) for i in range(3)]
    store.extend(recs)
    data = store.path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start, len(data) + 1):
        run = tmp_path / f"cut{cut}"
        run.mkdir()
        (run / "results.jsonl").write_bytes(data[:cut])
        loaded = load_records(run)
        complete = len(data) - cut <= 1  # only the newline (or nothing) missing
        assert loaded == (recs if complete else recs[:2]), cut
        # A repaired file takes appends cleanly and loses nothing complete.
        s = ResultStore(run)
        s.repair()
        s.append(_record(9))
        assert load_records(run) == loaded + [_record(9)], cut


def test_garbage_in_the_middle_names_the_line(tmp_path):
    store = ResultStore(tmp_path)
    store.extend([_record(0), _record(1)])
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join([lines[0], '{"mixer": "gma", broken', lines[1]]) + "\n")
    with pytest.raises(CorruptResultsError, match="line 2"):
        load_records(tmp_path)


def test_non_object_line_is_corruption(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(_record(0)) + "\n[1, 2]\n" + json.dumps(_record(1)) + "\n")
    with pytest.raises(CorruptResultsError, match="line 2"):
        load_records(tmp_path)


def test_missing_file_has_no_records(tmp_path):
    assert load_records(tmp_path) == []
    assert ResultStore(tmp_path).repair() == 0


def test_archived_run_loads_and_refuses_appends(tmp_path):
    import gzip

    from gmabench.results.store import ArchivedRunError
    recs = [_record(i) for i in range(3)]
    ResultStore(tmp_path).extend(recs)
    plain = (tmp_path / "results.jsonl").read_bytes()
    (tmp_path / "results.jsonl.gz").write_bytes(gzip.compress(plain))
    (tmp_path / "results.jsonl").unlink()
    assert load_records(tmp_path) == recs
    with pytest.raises(ArchivedRunError, match="gunzip"):
        ResultStore(tmp_path)
    (tmp_path / "results.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorruptResultsError, match="gzip"):
        load_records(tmp_path)
