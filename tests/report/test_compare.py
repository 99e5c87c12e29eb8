"""The regression gate: real slow-downs, memory growth and new failures regress; noise does not."""

import json

import numpy as np
from typer.testing import CliRunner

from gmabench.cli.app import app
from gmabench.report.compare import compare_runs
from gmabench.results.schema import Record


def _rec(mixer, N, samples, peak=1000, status="ok"):
    return Record(mixer=mixer, causal=False, mode="fwd", scope="core", B=1, N=N, H=2, D=16, Dv=16, K=4,
                  dtype="float32", device="cpu", status=status, median_ms=float(np.median(samples)) if samples else None,
                  samples_ms=list(samples), peak_bytes=peak).to_dict()


rng = np.random.default_rng(0)
BASE = list(1.0 + 0.02 * rng.standard_normal(30))


def test_verdicts():
    base = [_rec("a", 64, BASE), _rec("b", 64, BASE), _rec("c", 64, BASE), _rec("d", 64, BASE),
            _rec("e", 64, BASE), _rec("f", 64, BASE)]
    new = [_rec("a", 64, [x * 1.3 for x in BASE]),           # 30% slower, clearly
           _rec("b", 64, [x * 1.02 for x in BASE]),          # within threshold
           _rec("c", 64, BASE, peak=2000),                   # memory doubled
           _rec("d", 64, [], status="oom"),                  # now fails
           _rec("e", 64, [x / 2 for x in BASE]),             # 2x faster
           _rec("g", 64, BASE)]                              # new cell; f is gone
    verdicts = {c.label.split()[0]: c.verdict for c in compare_runs(base, new, threshold=0.1)}
    assert verdicts == {"a": "regressed", "b": "same", "c": "regressed", "d": "regressed", "e": "improved",
                        "f": "gone", "g": "new"}


def test_a_slower_median_without_statistical_support_is_not_a_regression():
    base = [_rec("a", 64, [1.0, 1.0, 1.0])]
    new = [_rec("a", 64, [0.5, 1.25, 2.0])]  # median 1.25x, but samples overlap heavily
    (change,) = compare_runs(base, new, threshold=0.1)
    assert change.time_ratio == 1.25 and change.p_value > 0.05 and change.verdict == "same"


def test_a_slower_host_bound_cell_says_how_its_host_time_grew():
    # Both runs' host time is most of the cell (a Python call path, small N): the regression
    # stands, and says so; a cell whose kernels take the time gets no such note.
    base = [dict(_rec("a", 64, BASE), host_ms=0.95), dict(_rec("b", 64, BASE), host_ms=0.1)]
    new = [dict(_rec("a", 64, [x * 1.3 for x in BASE]), host_ms=1.27),
           dict(_rec("b", 64, [x * 1.3 for x in BASE]), host_ms=0.1)]
    a, b = compare_runs(base, new, threshold=0.1)
    assert a.verdict == b.verdict == "regressed"
    assert "host-bound in both runs (host 98% of the time), its host time 1.34x" in a.why
    assert "host" not in b.why


def test_times_from_different_timers_are_not_compared():
    # Eager calls (host work included) against graph replays (the GPU alone): a 3x "speed-up"
    # or slow-down there is the timer, not the code; memory and failures are still judged.
    base = [dict(_rec(m, 64, BASE, peak=1000), timer="cuda_events") for m in "abc"]
    new = [dict(_rec("a", 64, [x / 3 for x in BASE]), timer="cuda_graph"),
           dict(_rec("b", 64, [x * 3 for x in BASE], peak=2000), timer="cuda_graph"),
           dict(_rec("c", 64, [x * 3 for x in BASE]), timer="cuda_events")]
    a, b, c = compare_runs(base, new, threshold=0.1)
    assert (a.verdict, a.time_ratio, a.p_value) == ("same", None, None)
    assert a.why == ("times not compared: timed by cuda_events in the base run and by cuda_graph "
                     "in this one")
    assert b.verdict == "regressed" and b.why.startswith("2.00x more peak memory; times not compared")
    assert c.verdict == "regressed" and c.why.startswith("3.00x slower")


def _accurate(mixer, rel_error, **grads):
    rec = _rec(mixer, 64, BASE)
    rec.update(rel_error=rel_error, grad_rel_errors=grads,
               grad_rel_error=max(grads.values()) if grads else None)
    return rec


def test_a_cell_that_got_less_accurate_regresses_even_at_the_same_speed():
    base = [_accurate("a", 1e-3, q=1e-3, mu=1e-5), _accurate("b", 1e-3, q=1e-3, mu=1e-5),
            _accurate("c", 1e-3), _accurate("d", 2e-7, q=3e-7)]
    new = [_accurate("a", 1e-3, q=1e-3, mu=4e-4),     # one gradient 40x worse
           _accurate("b", 1.5e-3, q=1.8e-3, mu=1e-5),  # within 2x
           _accurate("c", 0.3),                       # the output broke
           _accurate("d", 9e-7, q=8e-6)]              # float32 noise, under the 1e-5 floor
    a, b, c, d = compare_runs(base, new, threshold=0.1)
    assert (a.verdict, a.why) == ("regressed", "less accurate: grad mu error 1e-05 -> 0.0004")
    assert b.verdict == "same" and d.verdict == "same"
    assert (c.verdict, c.why) == ("regressed", "less accurate: output error 0.001 -> 0.3")
    (a,) = compare_runs(base[:1], new[:1], threshold=0.1, error_ratio=50)
    assert a.verdict == "same"


def _write(path, recs):
    path.mkdir()
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_cli_exit_codes(tmp_path):
    _write(tmp_path / "base", [_rec("a", 64, BASE)])
    _write(tmp_path / "same", [_rec("a", 64, BASE)])
    _write(tmp_path / "slow", [_rec("a", 64, [x * 1.5 for x in BASE])])
    runner = CliRunner()
    assert runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "same")]).exit_code == 0
    slow = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "slow")])
    assert slow.exit_code == 1 and "regressed: 1," in slow.output and "1.500" in slow.output
    bad = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "same"), "--error-ratio", "1"])
    assert bad.exit_code == 2 and "--error-ratio: must be above 1" in bad.output
    missing = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "NEW" in missing.output and "not a directory" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["compare", str(tmp_path / "empty"), str(tmp_path / "base")])
    assert empty.exit_code == 2 and "BASE" in empty.output and "holds no run" in empty.output
