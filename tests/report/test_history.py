"""`gmabench history`: cells across runs, oldest first, changes only between times of one timer."""

from typer.testing import CliRunner

from gmabench.cli.app import app
from gmabench.report.figures import history_figure
from gmabench.report.history import build_history, markdown_table
from gmabench.results.schema import Record
from gmabench.results.store import ResultStore


def _rec(mixer, N, ms, stamp, commit, timer="cuda_events", status="ok", peak=2**20, mode="fwd"):
    return dict(Record(mixer=mixer, causal=True, mode=mode, scope="core", B=1, N=N, H=2, D=16, Dv=16,
                       K=4, dtype="bfloat16", device="cuda", status=status,
                       median_ms=ms if status == "ok" else None, peak_bytes=peak).to_dict(),
                timestamp=stamp, git_commit=commit, timer=timer, device_name="GPU X")


def _runs():
    # given newest first: the history orders them by their first record's timestamp
    return [("late", [_rec("gma", 64, 1.5, "2026-11-30T03:00:00+00:00", "ccc", timer="cuda_graph"),
                      _rec("gma", 128, 2.0, "2026-11-30T03:00:01+00:00", "ccc")]),
            ("early", [_rec("gma", 64, 4.0, "2026-11-30T01:00:00+00:00", "aaa"),
                       _rec("sdpa", 64, 9.0, "2026-11-30T01:00:01+00:00", "aaa")]),
            ("middle", [_rec("gma", 64, 3.0, "2026-11-30T02:00:00+00:00", "bbb"),
                        _rec("gma", 128, None, "2026-11-30T02:00:01+00:00", "bbb", status="oom"),
                        _rec("gma", 64, 2.0, "2026-11-30T02:30:00+00:00", "bbb")])]   # re-run


def test_runs_in_time_order_last_record_wins_and_changes_only_within_one_timer():
    h = build_history(_runs(), mixers=["gma"])
    assert [r.name for r in h.runs] == ["early", "middle", "late"]
    assert [h.labels[k] for k in h.cells] == ["gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4",
                                             "gma causal fwd bf16 B=1 N=128 H=2 D=16 K=4"]
    n64, n128 = (h.points(k) for k in h.cells)
    assert [(p.run, p.commit, p.median_ms, p.timer) for p in n64] == [
        ("early", "aaa", 4.0, "cuda_events"), ("middle", "bbb", 2.0, "cuda_events"),
        ("late", "ccc", 1.5, "cuda_graph")]
    # 2.0 / 4.0 between two eager runs; none from an eager time to a replayed one
    assert [p.change for p in n64] == [None, 0.5, None]
    # a failed cell has no time, and the next run's change skips over it
    assert [(p.status, p.median_ms) for p in n128] == [("oom", None), ("ok", 2.0)]
    assert [p.change for p in n128] == [None, None]


def test_filters_keep_only_the_named_cells():
    h = build_history(_runs(), seq_lens=[64], mixers=["gma", "sdpa"])
    assert sorted(h.labels.values()) == ["gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4",
                                         "sdpa causal fwd bf16 B=1 N=64 H=2 D=16 K=4"]
    assert build_history(_runs(), modes=["fwd_bwd"]).cells == []
    assert build_history(_runs(), heads=[4]).cells == []          # every cell has H=2
    assert len(build_history(_runs(), heads=[2, 4]).cells) == 3


def test_figure_draws_one_line_per_cell_and_timer():
    fig = history_figure(build_history(_runs(), mixers=["gma"]))
    assert [(t.name, list(t.x), list(t.y)) for t in fig.data] == [
        ("gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4 (cuda_events)", ["early", "middle"], [4.0, 2.0]),
        ("gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4 (cuda_graph)", ["late"], [1.5]),
        ("gma causal fwd bf16 B=1 N=128 H=2 D=16 K=4 (cuda_events)", ["middle", "late"], [None, 2.0])]
    assert list(fig.layout.xaxis.categoryarray) == ["early", "middle", "late"]


def _write(tmp_path, runs):
    dirs = []
    for name, records in runs:
        ResultStore(tmp_path / name).extend(records)
        dirs.append(str(tmp_path / name))
    return dirs


def test_cli_prints_each_cell_over_the_runs_and_writes_the_figure(tmp_path):
    dirs = _write(tmp_path, _runs())
    out = tmp_path / "h" / "history.html"
    res = CliRunner().invoke(app, ["history", *dirs, "--mixers", "gma", "--seq-lens", "64",
                                   "--html", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "│" in ln]
    assert [ln.split("│")[1].strip() for ln in lines] == ["early", "middle", "late"]
    assert "0.500x" in lines[1] and "x" not in lines[2].split("│")[5]
    page = out.read_text()
    assert "gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4 (cuda_events)" in page
    assert "gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4 (cuda_graph)" in page


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    dirs = _write(tmp_path, _runs())
    out = tmp_path / "history.html"
    for args in ([str(tmp_path / "nowhere")], [*dirs, "--seq-lens", "99"], [*dirs, "--modes", "bwd"],
                 [*dirs, "--seq-lens", "x"], [*dirs, "--heads", "16"], [str(tmp_path)]):
        res = CliRunner().invoke(app, ["history", *args, "--html", str(out)])
        assert res.exit_code == 2, (args, res.output)
        assert not out.exists()


def test_markdown_table_has_a_row_per_run_and_a_column_per_cell(tmp_path):
    h = build_history(_runs(), mixers=["gma"])
    assert markdown_table(h).splitlines() == [
        "| run | commit | timer | gma causal fwd bf16 B=1 N=64 H=2 D=16 K=4 "
        "| gma causal fwd bf16 B=1 N=128 H=2 D=16 K=4 |",
        "|---|---|---|---|---|",
        "| early | aaa | cuda_events | 4 | - |",
        "| middle | bbb | cuda_events | 2 | - |",
        "| late | ccc | cuda_events, cuda_graph | 1.5 | 2 |"]
    res = CliRunner().invoke(app, ["history", *_write(tmp_path, _runs()), "--mixers", "gma", "--markdown"])
    assert res.output.strip() == markdown_table(h)


def test_cli_names_runs_by_path_where_folders_share_a_name(tmp_path):
    (a,), (b,) = (_write(tmp_path / side, _runs()[1:2]) for side in ("x", "y"))
    res = CliRunner().invoke(app, ["history", a, b, "--markdown"])
    assert res.exit_code == 0, res.output
    rows = [line.split(" | ")[0].lstrip("| ") for line in res.output.splitlines()[2:]]
    assert sorted(rows) == sorted([a, b])
