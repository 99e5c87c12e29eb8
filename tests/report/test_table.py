"""The terminal tables show the fitted slopes and every cell that did not run ok."""

from __future__ import annotations

from rich.console import Console

from gmabench.report import accuracy_table, failures_table, summary_table
from gmabench.report.table import growth_table
from gmabench.report.analysis import fit_scaling, records_frame


def _text(table) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(table)
    return console.export_text()


def _row(text: str, mixer: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"│ {mixer} "))
    return [c.strip() for c in line.strip("│").split("│")]


def test_summary_table_shows_fitted_slopes_and_counts(records):
    text = _text(summary_table(records))
    # series, N range, ms~N, ms~N big, MiB~N, ms~K, ok/failed/skipped
    assert _row(text, "linear") == ["linear causal fwd bf16", "256–8192", "1.00", "1.00", "1.00", "1.00",
                                    "18/0/0"]
    assert _row(text, "quadratic") == ["quadratic causal fwd bf16", "256–8192", "2.00", "2.00", "2.00",
                                       "n/a", "15/3/0"]
    assert _row(text, "overhead")[2:4] == ["0.26", "0.45"]
    assert _row(text, "tiny")[2:] == ["—", "—", "—", "—", "2/0/1"]
    assert "ms~H" not in text        # one H: no column for it


def test_summary_table_fits_latency_along_heads_where_a_run_sweeps_them(make_record):
    recs = [make_record("gma", 8192, H=h, median_ms=0.01 * h) for h in (1, 2, 4, 8)]
    recs += [make_record("flat", 8192, H=h, median_ms=0.05) for h in (1, 2, 4, 8)]
    text = _text(summary_table(recs))
    assert "ms~H" in text
    assert _row(text, "gma")[-2:] == ["1.00", "4/0/0"] and _row(text, "flat")[-2:] == ["0.00", "4/0/0"]


def test_accuracy_table_shows_the_worst_errors_of_ok_cells_and_which_gradient(make_record):
    recs = [make_record("m", 1024, mode="fwd_bwd", median_ms=1.0, rel_error=2e-3,
                        grad_rel_error=3e-3, grad_rel_errors={"q": 3e-3, "v": 1e-3}),
            make_record("m", 2048, mode="fwd_bwd", median_ms=2.0, rel_error=1e-3,
                        grad_rel_error=5e-2, grad_rel_errors={"q": 1e-3, "v": 5e-2}),
            # a failed cell's numbers are not the series' accuracy
            make_record("m", 4096, mode="fwd_bwd", status="error", rel_error=9.0,
                        grad_rel_error=9.0, grad_rel_errors={"q": 9.0}),
            make_record("f", 1024, median_ms=1.0, rel_error=4e-4)]
    text = _text(accuracy_table(recs))
    assert _row(text, "m")[1:] == ["2.0e-03", "5.0e-02", "v"]
    assert _row(text, "f")[1:] == ["4.0e-04", "—", "—"]   # a forward: no gradient checked


def test_terminal_tables_keep_the_series_names_at_80_columns(make_record):
    # rich shrinks the only foldable column first when a table is too wide for the terminal
    recs = [make_record("fla-linear-attention", n, mode="fwd_bwd", median_ms=1.0, rel_error=3e-3,
                        grad_rel_error=1.8e-2, grad_rel_errors={"q": 1.8e-2}) for n in (131072, 262144)]
    for table in (summary_table(recs), accuracy_table(recs)):
        console = Console(record=True, width=80, color_system=None)
        console.print(table)
        assert "fla-linear-attention" in console.export_text()


def test_a_large_n_slope_over_host_bound_sizes_is_marked(make_record):
    # "hosted" is flat at 0.6 ms, the host's time per call, up to N=4096, then linear; its
    # large-N fit (the upper 3 of 5 sizes) takes 4096, whose cell is host-bound: a star, and the
    # fit counts that one size. "kernel" is never host-bound: no star. Memory fits count none.
    recs = []
    for N in (1024, 2048, 4096, 8192, 16384):
        ms = max(0.6, 1e-4 * N)
        recs.append(make_record("hosted", N, median_ms=ms, host_ms=0.58 if ms == 0.6 else 0.2,
                                peak_bytes=100 * N))
        recs.append(make_record("kernel", N, median_ms=1e-4 * N, host_ms=0.01, peak_bytes=100 * N))
    fits = fit_scaling(records_frame(recs))
    assert dict(zip(fits["mixer"], fits["n_host_bound_large"])) == {"hosted": 1, "kernel": 0}
    assert dict(zip(fits["mixer"], fits["n_host_bound"])) == {"hosted": 3, "kernel": 0}
    assert set(fit_scaling(records_frame(recs), y="peak_bytes")["n_host_bound_large"]) == {0}
    text = _text(summary_table(recs))
    # ms~N over all five sizes (three host-bound) and ms~N big: both starred for "hosted" only
    assert [c[-1] for c in _row(text, "hosted")[2:4]] == ["*", "*"]
    assert [c[-1] for c in _row(text, "kernel")[2:4]] == ["0", "0"]
    assert "*: the fit takes host-bound cells too" in text


def test_a_k_slope_over_host_bound_cells_is_marked(make_record):
    # a mixer flat in K because the host sets its pace at small K (as gma's training cells at
    # N=16384 in results/2026-11-29-h200-components), then growing: its ms~K takes host-bound
    # cells and says so; a kernel-bound one does not
    recs = []
    for K in (8, 16, 32, 64, 128):
        ms = max(0.6, 0.01 * K)
        recs.append(make_record("hosted", 16384, K=K, median_ms=ms, host_ms=0.58 if ms == 0.6 else 0.2))
        recs.append(make_record("kernel", 16384, K=K, median_ms=0.01 * K, host_ms=0.01))
    fits = fit_scaling(records_frame(recs), x="K")
    assert dict(zip(fits["mixer"], fits["n_host_bound"])) == {"hosted": 3, "kernel": 0}   # K <= 32
    text = _text(summary_table(recs))
    assert _row(text, "hosted")[5].endswith("*") and _row(text, "kernel")[5] == "1.00"


def test_summary_table_leaves_series_without_ok_cells_to_the_failures_table(make_record):
    recs = [make_record("never", N, status="skipped", reason="needs CUDA") for N in (256, 512, 1024)]
    recs += [make_record("linear", N, median_ms=1e-3 * N) for N in (256, 512, 1024)]
    text = _text(summary_table(recs))
    assert "linear causal" in text and "never" not in text


def test_summary_table_shows_a_range_when_fixed_shapes_differ(records, make_record):
    extra = [make_record("linear", N, 16, H=16, median_ms=1e-9 * N**1.5) for N in (256, 1024, 4096)]
    assert _row(_text(summary_table(records + extra)), "linear")[2] == "1.0–1.5"


def test_failures_table_lists_status_and_reason(records, make_record):
    bad = make_record("gma", 512, status="error", reason="[rank 0] bad launch")
    text = _text(failures_table(records + [bad]))
    assert "Cells not ok (6)" in text
    assert "CUDA out of memory (tried 2 GiB)" in text and "oom" in text
    assert "cell exceeded 60 s" in text and "timeout" in text
    assert "D=64 unsupported" in text and "skipped" in text
    assert "[rank 0] bad launch" in text  # escaped, so not swallowed as markup



def test_failures_table_groups_cells_by_reason(make_record):
    same = [make_record("sdpa-flash", N, status="skipped", reason="needs CUDA") for N in (64, 128, 256, 512, 1024)]
    text = _text(failures_table(same))
    assert "Cells not ok (5)" in text
    assert text.count("needs CUDA") == 1 and "64..1024 (5 values)" in text


def test_tables_accept_no_records():
    assert "Cells not ok (0)" in _text(failures_table([]))
    assert "Scaling summary" in _text(summary_table([]))


def test_speedup_summary_states_times_faster_at_both_ends(make_record):
    recs = [make_record("fast", n, median_ms=1e-3 * n) for n in (256, 1024)]
    recs += [make_record("base", n, median_ms=4e-3 * n * (n / 256)) for n in (256, 1024)]
    from gmabench.report.table import speedup_summary
    text = _text(speedup_summary(recs, "base"))
    row = _row(text, "fast")
    assert row[1:] == ["N", "256–1024", "4x", "16x"]


def test_speedup_summary_looks_along_heads_where_n_stays_fixed(make_record):
    # the heads suite: one N, H from 1 to 8; the ends are H=1 and H=8, not two arbitrary rows
    recs = [make_record("fast", 8192, H=h, median_ms=1.0 * h) for h in (4, 1, 8, 2)]
    recs += [make_record("base", 8192, H=h, median_ms=0.5 * h * h) for h in (2, 8, 1, 4)]
    from gmabench.report.table import speedup_summary
    row = _row(_text(speedup_summary(recs, "base")), "fast")
    assert row[1:] == ["H", "1–8", "0.5x", "4x"]


def test_growth_table_lists_the_lines_that_grow_faster_than_linear(records, make_record):
    # the synthetic quadratic line (N^2, K-free) and a line flat in K until 8x at 256; the
    # linear, overhead and tiny lines grow linearly or better and stay out
    cliff = [make_record("cliff", 16384, K=K, median_ms=ms, H=h)
             for h in (8, 16) for K, ms in [(64, 0.1), (128, 0.1), (256, 0.8)]]
    text = _text(growth_table(records + cliff))
    quad = _row(text, "quadratic")   # every step of it is 2.00: which one shows is a tie
    assert quad[:3] + quad[4:] == ["quadratic causal fwd bf16", "N", "H=8", "2.00",
                                   "super-linear, at most quadratic"]
    cliffs = [l for l in text.splitlines() if l.startswith("│ cliff ")]
    assert [[c.strip() for c in l.strip("│").split("│")][2] for l in cliffs] == [
        "N=16384 H=8", "N=16384 H=16"]
    assert all("128 → 256" in l and "3.00" in l and "steeper than quadratic" in l for l in cliffs)
    assert not any(l.startswith(("│ linear ", "│ overhead ", "│ tiny ")) for l in text.splitlines())
    assert growth_table([r for r in records if r["mixer"] == "linear"]) is None
