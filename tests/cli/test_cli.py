"""The command line end to end: smoke suite to results and report, and every bad input exits 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gmabench.cli.app import app
from gmabench.results.schema import KEY_FIELDS
from gmabench.results.store import load_records

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_suite_writes_records_environment_and_report(tmp_path):
    # a path longer than the console's 80 columns: printed whole, on one line, for copy and paste;
    # two of the suite's three lengths (every mixer and every status still met, in 2/3 the time)
    out = tmp_path / ("a-long-folder-name-" * 5) / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--seq-lens", "32,64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    recs = load_records(out)
    mixers = {r["mixer"] for r in recs}
    from gmabench.mixers.registry import mixer_names
    assert mixers == set(mixer_names())  # smoke touches every mixer
    ok = [r for r in recs if r["status"] == "ok"]
    assert {"gma", "softmax-naive", "sdpa", "linear-attention", "performer", "mamba2"} <= {r["mixer"] for r in ok}
    for r in ok:
        for f in ("median_ms", "p20_ms", "p80_ms", "peak_bytes", "tokens_per_s"):
            assert r[f] is not None and r[f] > 0, (r["mixer"], f)
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["rel_error"] is not None and r["rel_error"] < 1e-3, (r["mixer"], r["rel_error"])
        if r["mode"] == "fwd_bwd":   # every differentiated input's gradient, against float64
            assert r["grad_rel_errors"] and r["grad_rel_error"] < 1e-3, (r["mixer"], r["grad_rel_errors"])
            assert r["grad_rel_error"] == max(r["grad_rel_errors"].values())
        else:
            assert r["grad_rel_error"] is None and r["grad_rel_errors"] == {}
        assert r["memory_method"] == "dispatch_tracked_storages" and r["timer"] == "wall_clock"
    skipped = [r for r in recs if r["status"] == "skipped"]
    assert skipped and all(r["reason"] for r in skipped)
    assert any(not r["k_applies"] for r in recs if r["mixer"] == "softmax-naive")
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] and env["gmabench_version"] and "cpu_count_logical" in env
    suite = json.loads((out / "suite.json").read_text())
    assert suite["name"] == "smoke"
    html = (out / "report.html").read_text()
    assert "plotly" in html and "latency" in html.lower()
    assert f"results: {out / 'results.jsonl'}\n" in result.output
    assert f"report: {out / 'report.html'}\n" in result.output


@pytest.mark.parametrize("args, needle", [
    (["--mixers", "gma,flashy"], "unknown mixer 'flashy'"),
    (["--seq-lens", "64,0"], "seq_lens: must be positive, got 0"),
    (["--components", "-4"], "components: must be positive, got -4"),
    (["--heads", "0"], "heads: must be positive, got 0"),
    (["--head-dims", "0"], "head_dims: must be positive, got 0"),
    (["--dtypes", "float8"], "unknown value 'float8'"),
    (["--variants", "causal,forward"], "--variants: unknown variant 'forward' (known: causal, bidirectional)"),
    (["--seq-lens", "abc"], "'abc' is not an integer"),
    (["--device", "tpu"], "device: unknown value 'tpu'"),
    (["--timer", "wallclock"], "timing.timer: unknown value 'wallclock'"),
    (["--timer", "graph", "--device", "cpu"], "'graph' (CUDA graphs) needs device 'cuda' or 'auto'"),
    (["--timer", "graph"], "CUDA graphs need a CUDA device; this run is on the CPU (--timer events"),
])
def test_bad_options_exit_2_before_writing(tmp_path, args, needle):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not out.exists()


@pytest.mark.parametrize("variants, causal", [("causal", [True]), ("bidir", [False]),
                                               ("bidirectional,causal,bidir", [False, True])])
def test_variants_replace_the_suites_causal_list(tmp_path, variants, causal):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out), "--mixers", "gma",
                                 "--seq-lens", "16", "--modes", "fwd", "--no-report", "--variants", variants])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "suite.json").read_text())["sweeps"][0]["causal"] == causal
    assert sorted({r["causal"] for r in load_records(out)}) == sorted(causal)


def test_unknown_mixer_message_lists_known_names(tmp_path):
    result = runner.invoke(app, ["run", "smoke", "--mixers", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "known:" in result.output and "softmax-naive" in result.output


def test_malformed_suite_file_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('mixers = ["gma"]\nseq_lens = [64]\nwhatever = 3\n')
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown key 'whatever'" in result.output


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"mixer": "gma"}\n')
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "results.jsonl").read_text() == '{"mixer": "gma"}\n'


def test_resume_keeps_the_timer_a_run_was_made_with(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out), "--mixers", "gma",
                                 "--seq-lens", "16", "--modes", "fwd", "--no-report"])
    assert result.exit_code == 0, result.output
    before = (out / "results.jsonl").read_text()
    suite = json.loads((out / "suite.json").read_text())
    assert suite["timing"]["timer"] == "events"
    suite["timing"]["timer"] = "graph"   # as a GPU run timed with graphs would have saved it
    (out / "suite.json").write_text(json.dumps(suite))
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out), "--resume"])
    assert result.exit_code == 2
    assert "was timed with 'graph', not 'events'" in " ".join(result.output.split())
    assert (out / "results.jsonl").read_text() == before


def test_report_of_a_folder_without_a_run_exits_2(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a directory" in result.output
    assert not (tmp_path / "report.html").exists()


def test_mixers_and_suites_listings():
    result = runner.invoke(app, ["mixers"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in ("gma", "softmax-naive", "sdpa", "linear-attention", "performer", "mamba2"):
        assert name in text
    assert "needs" in text.lower() or "not installed" in text.lower() or "no module" in text.lower()
    result = runner.invoke(app, ["suites"])
    assert result.exit_code == 0
    for name in ("smoke", "seqlen", "components", "heads", "dtype", "paper"):
        assert name in result.output


@pytest.mark.slow
def test_kill_9_then_resume_records_every_cell_once(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'mixers = ["gma", "linear-attention"]\n'
        'seq_lens = [32, 64]\ncomponents = [2, 4]\nheads = [2]\nhead_dims = [16]\n'
        'dtypes = ["float32"]\nmodes = ["fwd", "fwd_bwd"]\ncausal = [false, true]\ndevice = "cpu"\n'
        '[timing]\nwarmup_ms = 1\nrep_ms = 5\nmin_reps = 3\naccuracy_tokens = 32\n')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gmabench", "run", str(suite), "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 8):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load_records(out)
    assert 8 <= len(partial) < 24
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = load_records(out)
    keys = [tuple(r[k] for k in KEY_FIELDS) for r in final]
    assert len(keys) == len(set(keys))               # every cell exactly once
    # gma: 2 N x 2 K x 2 modes x 2 causal; K collapses for linear attention, which has none
    assert len(final) == 2 * 2 * 2 * 2 + 2 * 2 * 2
    assert final[:len(partial)] == partial           # earlier records unchanged


def test_run_without_a_suite_picks_smoke_on_a_cpu_machine(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--mixers", "gma", "--seq-lens", "32,64,128", "--components", "4",
                                 "--modes", "fwd", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "suite.json").read_text())["name"] == "smoke"
    recs = load_records(out)
    assert len(recs) == 6 and {r["status"] for r in recs} == {"ok"}
    assert (out / "report.html").exists()


def test_resume_into_a_corrupt_results_file_exits_2_naming_the_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    content = '{"mixer": "gma"}\nnot json at all\n{"mixer": "sdpa"}\n'
    (out / "results.jsonl").write_text(content)
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out), "--resume"])
    assert result.exit_code == 2 and "line 2" in result.output
    assert (out / "results.jsonl").read_text() == content


def test_report_states_speedups_against_a_baseline(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--mixers", "gma,sdpa", "--seq-lens", "32,64,128",
                                 "--components", "4", "--modes", "fwd", "--out", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["report", str(out), "--baseline", "mamba2"])
    assert bad.exit_code == 2 and "not a mixer of this run" in bad.output
    good = runner.invoke(app, ["report", str(out), "--baseline", "sdpa"])
    assert good.exit_code == 0, good.output
    html = (out / "report.html").read_text()
    assert "Speed against sdpa" in html and html.count("gma bidir fwd fp32 cpu") >= 1


def test_suite_baseline_must_be_a_known_mixer(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text('mixers = ["gma"]\nseq_lens = [64]\nbaseline = "nope"\n')
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "baseline: unknown mixer 'nope'" in result.output


def test_report_lists_the_cells_a_stopped_run_never_reached(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--mixers", "gma,sdpa", "--seq-lens", "32,64,128",
                                 "--components", "4", "--modes", "fwd", "--out", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    dropped = [json.loads(line) for line in lines[-2:]]
    (out / "results.jsonl").write_text("".join(lines[:-2]))   # as if the budget stopped the run
    rep = runner.invoke(app, ["report", str(out)], env={"COLUMNS": "200"})
    assert rep.exit_code == 0, rep.output
    assert "Not measured: 2 cells" in rep.output
    html = (out / "report.html").read_text()
    assert "Not measured (2 cells of the suite)" in html
    section = html.split("Not measured (2 cells of the suite)")[1].split("<h2>")[0]
    for r in dropped:
        assert f">{r['mixer']}</td>" in section and str(r["N"]) in section
    # A complete run claims nothing.
    (out / "results.jsonl").write_text("".join(lines))
    rep = runner.invoke(app, ["report", str(out)])
    assert "Not measured" not in rep.output and "Not measured" not in (out / "report.html").read_text()


def test_sigint_stops_cleanly_and_resume_completes(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'mixers = ["gma", "linear-attention"]\nseq_lens = [32, 64]\ncomponents = [2]\n'
        'heads = [2]\nhead_dims = [16]\ndtypes = ["float32"]\nmodes = ["fwd", "fwd_bwd"]\n'
        'causal = [false, true]\ndevice = "cpu"\n'
        '[timing]\nwarmup_ms = 1\nrep_ms = 5\nmin_reps = 3\naccuracy_tokens = 32\n')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gmabench", "run", str(suite), "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    # Ctrl-C's default disposition, as a terminal's foreground job has it: a test run started
    # in the background by a non-interactive shell inherits SIGINT ignored, and Python keeps it so
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 4):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)      # what Ctrl-C sends to the foreground group
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "--resume" in output
    assert "interrupted (SIGINT)" in (out / "run.log").read_text()
    partial = load_records(out)             # every line written is a whole record
    assert 4 <= len(partial) < 16
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    keys = [tuple(r[k] for k in KEY_FIELDS) for r in load_records(out)]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2 * 2


def test_archived_run_reports_but_is_not_resumed(tmp_path):
    import gzip
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--mixers", "gma,sdpa", "--seq-lens", "32,64",
                                 "--components", "4", "--modes", "fwd", "--out", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    records = load_records(out)
    plain = out / "results.jsonl"
    (out / "results.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    suite = (out / "suite.json").read_text()
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert f"{sum(r['status'] == 'ok' for r in records)} ok of {len(records)}" in (out / "report.html").read_text()
    resumed = runner.invoke(app, ["run", "smoke", "--device", "cpu", "--out", str(out), "--resume"])
    assert resumed.exit_code == 2 and "archived" in resumed.output
    assert not plain.exists() and (out / "suite.json").read_text() == suite
