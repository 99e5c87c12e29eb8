"""The supervisor keeps going through segfaults, hangs, exceptions and OOMs; records everything."""

from pathlib import Path

import pytest

from gmabench.results.store import load_records
from gmabench.sweep.plan import plan_sweep
from gmabench.sweep.runner import Runner
from gmabench.sweep.suite import parse_suite

HERE = Path(__file__).parent
FAULTS = ",".join(f"test-{n}=fault_mixers:{c}" for n, c in
                  [("segfault", "Segfault"), ("hang", "Hang"), ("raise", "Raise"), ("oom", "HugeAlloc"),
                   ("sigkill", "SigKill")])

TIMING = {"warmup_ms": 1, "rep_ms": 2, "min_reps": 3, "max_ms": 20, "timeout_s": 8, "accuracy_tokens": 32}


@pytest.fixture
def fault_env(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("GMABENCH_MIXERS", FAULTS)


def _run(tmp_path, mixers, **kw):
    suite = parse_suite({"mixers": mixers, "seq_lens": [32], "components": [4], "heads": [2], "head_dims": [16],
                         "dtypes": ["float32"], "device": "cpu", "timing": TIMING}, name="t")
    cells = plan_sweep(suite)
    seen = []
    runner = Runner(tmp_path, suite_name="t", host_env={"git_commit": "abc"}, on_record=seen.append)
    summary = runner.run(cells, device_kind="cpu", **kw)
    return cells, seen, summary


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, fault_env):
    mixers = ["gma", "test-segfault", "softmax-naive", "test-hang", "linear-attention", "test-raise",
              "test-oom", "test-sigkill", "gma-chunked"]
    cells, seen, summary = _run(tmp_path, mixers)
    recs = load_records(tmp_path)
    assert recs == seen and len(recs) == len(cells) == len(mixers)
    by_mixer = {r["mixer"]: r for r in recs}
    assert by_mixer["test-segfault"]["status"] == "crashed"
    assert "SIGSEGV" in by_mixer["test-segfault"]["reason"]
    assert by_mixer["test-hang"]["status"] == "timeout"
    assert "8 s timeout" in by_mixer["test-hang"]["reason"]
    assert by_mixer["test-raise"]["status"] == "error"
    assert "ValueError: deliberate failure" in by_mixer["test-raise"]["reason"]
    assert by_mixer["test-oom"]["status"] == "oom"
    assert by_mixer["test-sigkill"]["status"] == "crashed"
    assert "SIGKILL" in by_mixer["test-sigkill"]["reason"] and "out-of-memory killer" in by_mixer["test-sigkill"]["reason"]
    for name in ("gma", "softmax-naive", "linear-attention", "gma-chunked"):
        assert by_mixer[name]["status"] == "ok", by_mixer[name]
        assert by_mixer[name]["median_ms"] > 0 and len(by_mixer[name]["samples_ms"]) >= 3
    # A crash, a timeout and an OOM each replace the worker: the cells after run in a new process.
    pids = [r["worker_pid"] for r in recs if r["worker_pid"]]
    assert len(set(pids)) >= 3
    log = (tmp_path / "run.log").read_text()
    assert "died during test-segfault" in log and "timed out" in log and "replaced after oom" in log


def test_resume_skips_recorded_cells(tmp_path):
    cells, first, _ = _run(tmp_path, ["gma", "softmax-naive"])
    before = (tmp_path / "results.jsonl").read_bytes()
    _, second, summary = _run(tmp_path, ["gma", "softmax-naive", "linear-attention"], resume=True)
    assert summary.skipped_existing == len(cells)
    assert [r["mixer"] for r in second] == ["linear-attention"]
    assert (tmp_path / "results.jsonl").read_bytes().startswith(before)
    keys = [(r["mixer"], r["N"]) for r in load_records(tmp_path)]
    assert len(keys) == len(set(keys)) == 3


def test_time_budget_leaves_cells_for_resume(tmp_path):
    cells, seen, summary = _run(tmp_path, ["gma", "softmax-naive"], time_budget_s=1e-9)
    assert summary.left_for_resume == len(cells) and seen == [] and load_records(tmp_path) == []
    assert "cells left for --resume" in (tmp_path / "run.log").read_text()
    _, seen, summary = _run(tmp_path, ["gma", "softmax-naive"], resume=True)
    assert summary.left_for_resume == 0 and len(load_records(tmp_path)) == len(cells)


def test_two_workers_share_the_cells(tmp_path):
    cells, seen, summary = _run(tmp_path, ["gma", "softmax-naive", "linear-attention", "gma-chunked"], n_workers=2)
    recs = load_records(tmp_path)
    assert len(recs) == len(cells) and {r["status"] for r in recs} == {"ok"}
    assert len({r["worker_pid"] for r in recs}) == 2


def test_worker_module_imports_no_torch_before_choosing_its_gpu():
    import subprocess
    import sys
    code = "import sys, gmabench.sweep.worker; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
