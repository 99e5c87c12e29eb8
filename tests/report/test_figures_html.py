"""Figures keep shapes apart and failures visible; report.html is offline, complete and escaped."""

from __future__ import annotations

import math
import re

import plotly.offline
import pytest

from gmabench.report import write_report
from gmabench.report.analysis import records_frame
from gmabench.report.figures import (MIB, all_figures, latency_vs_h, latency_vs_k, latency_vs_n,
                                     memory_vs_n)

ENV = {"gpu": {"name": "NVIDIA H200", "memory_gib": 139}, "torch": "2.5.1+cu124",
       "git_commit": "abc1234", "timestamp": "2025-01-02T03:04:05Z",
       "ceilings": {"matmul_flops_per_s": 9.9e14}}
SUITE = {"name": "synthetic-scaling", "baseline": "quadratic"}


def _trace(fig, prefix):
    return next(t for t in fig.data if t.name.startswith(prefix))


def test_latency_vs_n_one_figure_per_k_with_slopes_in_legend(records):
    figs = latency_vs_n(records_frame(records))
    assert [("K=16" in f.layout.title.text, "K=64" in f.layout.title.text) for f in figs] == [
        (True, False), (False, False), (False, True)]
    first = figs[0]
    assert first.layout.xaxis.type == "log" and first.layout.yaxis.type == "log"
    assert first.layout.yaxis.title.text == "ms"
    assert _trace(first, "linear").name == "linear causal fwd bf16 (slope 1.00)"
    assert _trace(first, "quadratic").name == "quadratic causal fwd bf16 (slope 2.00)"
    assert _trace(first, "overhead").name == "overhead causal fwd bf16 (slope 0.26, large-N 0.45)"
    lin = _trace(first, "linear")
    # p20/p80 error bars: 10% either side of the median by construction.
    assert list(lin.error_y.array) == pytest.approx([0.1 * y for y in lin.y])
    assert {t.name for t in first.data} >= {"O(N) guide", "O(N²) guide"}


def test_failed_cells_stay_visible_at_the_top(records):
    fig = latency_vs_n(records_frame(records))[0]
    bad = _trace(fig, "failed")
    assert sorted(bad.text) == ["oom", "timeout"]  # skipped cells are in the tables, not the plot
    highest = max(max(t.y) for t in fig.data if "guide" not in t.name and t.name != bad.name)
    assert min(bad.y) > highest
    assert any("CUDA out of memory (tried 2 GiB)" in h for h in bad.hovertext)


def test_memory_in_mib_with_saved_bytes(records):
    fig = memory_vs_n(records_frame(records))[0]
    assert fig.layout.yaxis.title.text == "MiB"
    lin = _trace(fig, "linear causal fwd bf16 (")
    assert list(lin.y) == pytest.approx([4096 * n * 16 / MIB for n in lin.x])
    saved = _trace(fig, "linear causal fwd bf16 saved")
    assert list(saved.y) == pytest.approx([1024 * n * 16 / MIB for n in saved.x])


def test_shared_plotly_js_is_written_once_beside_the_runs(tmp_path, records):
    bundle = plotly.offline.get_plotlyjs()
    pages = [write_report(tmp_path / "results" / name, records, ENV, SUITE, shared_js=True).read_text()
             for name in ("run-a", "run-b")]
    js = tmp_path / "results" / f"plotly-{plotly.__version__}.min.js"
    assert js.read_text(encoding="utf-8") == bundle
    assert [p.name for p in (tmp_path / "results").iterdir() if p.is_file()] == [js.name]
    for text in pages:
        assert f'<script src="../{js.name}"></script>' in text
        assert bundle[:200] not in text and bundle[-3000:] not in text  # nothing embedded
        assert text.count('class="plotly-graph-div"') == len(all_figures(records_frame(records)))


def test_latency_vs_k_only_for_mixers_where_k_applies(records):
    figs = latency_vs_k(records_frame(records))
    assert len(figs) == 6  # one per N
    names = {t.name for f in figs for t in f.data}
    assert "linear causal fwd bf16 (slope 1.00)" in names
    assert not any(n.startswith("quadratic") for n in names)


def test_latency_vs_h_only_where_a_run_sweeps_the_heads(records, make_record):
    assert latency_vs_h(records_frame(records)) == []      # one H: nothing to draw along it
    heads = [make_record("gma", 8192, H=h, median_ms=0.01 * h) for h in (1, 2, 4, 8)]
    heads += [make_record("sdpa", 8192, H=h, median_ms=0.1 * h, k_applies=False) for h in (1, 2, 4, 8)]
    figs = latency_vs_h(records_frame(heads))
    assert len(figs) == 1 and figs[0].layout.xaxis.title.text == "H (heads)"
    gma = _trace(figs[0], "gma")
    assert list(gma.x) == [1, 2, 4, 8] and list(gma.y) == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert gma.name.endswith("(slope 1.00)")
    assert [s for s, _ in all_figures(records_frame(heads))] == ["Latency vs H", "Peak memory vs H"]


def test_the_report_fits_latency_along_heads(tmp_path, make_record):
    heads = [make_record("gma", 8192, H=h, median_ms=0.01 * h * h) for h in (1, 2, 4, 8)]
    page = write_report(tmp_path, heads, ENV, SUITE).read_text()
    fits = re.findall(r'<tr><td class="l">latency vs H</td><td class="l">gma causal fwd bf16</td>'
                      r'<td class="l">([^<]*)</td><td>([0-9.]+) ± ', page)
    assert fits == [("B=1 N=8192 D=64 K=16", "2.00")]


def test_write_report_is_offline_and_complete(tmp_path, records):
    path = write_report(tmp_path / "run", records, ENV, SUITE)
    assert path == tmp_path / "run" / "report.html"
    text = path.read_text(encoding="utf-8")
    bundle = plotly.offline.get_plotlyjs()
    assert bundle[-3000:] in text and text.count(bundle[:200]) == 1  # inline, exactly once
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert 'src="https://cdn' not in text
    n_figs = len(all_figures(records_frame(records)))
    assert n_figs == 3 + 3 + 3 + 6 + 6
    assert text.count('<section class="figure"') == n_figs
    assert text.count('class="plotly-graph-div"') == n_figs
    for fact in ["synthetic-scaling", "NVIDIA H200", "2.5.1+cu124", "abc1234", "2025-01-02"]:
        assert fact in text
    assert "<td>2.00 ± 0.00</td>" in text and "<td>1.00 ± 0.00</td>" in text
    assert "(slope 2.00)" in text  # legend of a figure
    assert '<td class="l">oom</td><td class="l">CUDA out of memory (tried 2 GiB)</td>' in text
    # Skipped cells are grouped by mixer and reason: mixer, count, sizes, reason.
    assert re.search(r'<h3>Skipped</h3>.*<td class="l">\w+</td><td>\d+</td><td>[\d, ]+</td><td>D=64 unsupported</td>', text, re.S)
    assert "Speed against quadratic" in text
    assert "<th>of matmul ceiling</th>" in text and "of copy ceiling" not in text


def test_write_report_escapes_record_text(tmp_path, records, make_record):
    evil = [make_record("<b>evil</b>", n, median_ms=0.01 * n) for n in (256, 512, 1024)]
    evil.append(make_record("<b>evil</b>", 2048, status="error", reason="x < y & </td>"))
    text = write_report(tmp_path, records + evil, {"gpu": "<GPU>"}, {"name": "a&b"}).read_text()
    assert "<b>evil</b>" not in text and "x < y & </td>" not in text
    assert "&lt;b&gt;evil&lt;/b&gt; causal fwd bf16" in text
    assert "x &lt; y &amp; &lt;/td&gt;" in text
    assert "&lt;GPU&gt;" in text and "gmabench report: a&amp;b" in text


def test_write_report_with_no_records(tmp_path):
    text = write_report(tmp_path, [], {}, {}).read_text()
    assert "No sweep with two sizes." in text and "every cell ran ok" in text
    assert "plotly-graph-div" not in text


def test_runs_from_two_gpus_never_share_a_line(make_record):
    recs = [make_record("gma", n, device_name=gpu, median_ms=m * n)
            for gpu, m in [("NVIDIA H200", 1e-3), ("NVIDIA A100", 3e-3)] for n in (256, 512, 1024)]
    figs = latency_vs_n(records_frame(recs))
    assert sorted(f.layout.title.text.split(" · ")[1].split(" causal")[0] for f in figs) == [
        "NVIDIA A100", "NVIDIA H200"]
    assert all(len(f.data[0].x) == 3 for f in figs)


def test_achieved_bandwidth_and_flops_are_drawn_against_the_measured_ceilings(make_record):
    # 1 ms per call moving 2 GB and doing 300 GFLOP: 2 TB/s and 300 TFLOP/s achieved.
    recs = [make_record("gma", n, median_ms=1.0, min_bytes=2e9, flops=3e11) for n in (1024, 2048, 4096)]
    ceilings = {"copy_bytes_per_s": 4.27e12, "matmul_flops_per_s": 686e12}
    figs = dict((name, fig) for name, fig in all_figures(records_frame(recs, {"ceilings": ceilings}), ceilings))
    bw, fl = figs["Achieved bandwidth vs N"], figs["Achieved FLOP/s vs N"]
    assert list(bw.data[0].y) == pytest.approx([2.0, 2.0, 2.0])
    assert list(fl.data[0].y) == pytest.approx([300.0, 300.0, 300.0])
    assert "measured copy 4.27 TB/s" in bw.layout.annotations[0].text
    assert bw.layout.shapes[0].y0 == pytest.approx(4.27)
    # on a log axis plotly.js places an annotation at 10**y, a shape at its data value
    assert bw.layout.annotations[0].y == pytest.approx(math.log10(4.27))
    assert fl.layout.annotations[0].y == pytest.approx(math.log10(686))
    assert "686 TFLOP/s" in fl.layout.annotations[0].text


def test_cells_whose_host_time_dominates_are_marked_host_bound(tmp_path, make_record):
    recs = [make_record("gma", 256, median_ms=0.10, host_ms=0.095),      # the GPU waited for the host
            make_record("gma", 512, median_ms=1.00, host_ms=0.05),       # the host was far ahead
            make_record("gma", 1024, median_ms=2.00)]                     # no host time (CPU timer)
    df = records_frame(recs)
    assert list(df.sort_values("N")["host_bound"]) == [True, False, False]
    text = write_report(tmp_path, recs, {}, {"name": "h"}).read_text()
    assert text.count("(host-bound)") == 1 and "host-bound: the host took at least 80%" in text
    # the latency fit over N (the three sizes) counts the one host-bound size
    assert "(1 of its sizes host-bound)" in text


def test_the_header_says_how_the_cells_were_timed(tmp_path, make_record):
    graph = [make_record("gma", 256, median_ms=0.1, timer="cuda_graph")]
    text = write_report(tmp_path / "g", graph, {}, {"name": "t"}).read_text()
    assert "<dt>Timer</dt><dd>CUDA events around a replay of the call captured in a CUDA graph" in text
    eager = [make_record("gma", 256, median_ms=0.1, timer="cuda_events")]
    text = write_report(tmp_path / "e", eager, {}, {"name": "t"}).read_text()
    assert "<dt>Timer</dt><dd>CUDA events around each call issued from Python" in text
    assert "CUDA graph" not in text


def test_the_cells_table_shows_output_and_gradient_errors(tmp_path, make_record):
    recs = [make_record("m", n, mode="fwd_bwd", median_ms=0.01 * n, rel_error=0.00123,
                        grad_rel_error=0.0456, grad_rel_errors={"q": 0.0456, "v": 0.001})
            for n in (256, 512)]
    recs.append(make_record("f", 256, median_ms=1.0, rel_error=0.00789))
    text = write_report(tmp_path, recs, {}, SUITE).read_text()   # no ceilings: no fraction columns
    head = re.search(r"<h2>All ok cells</h2>.*?<tr>(.*?)</tr>", text, re.S).group(1)
    assert head.endswith("<th>rel_error</th><th>grad rel_error</th>")
    assert text.count("<td>0.00123</td><td>0.0456</td></tr>") == 2
    assert "<td>0.00789</td><td>—</td></tr>" in text     # a forward cell checks no gradient
    # the Accuracy section: per series, the output and each input's gradient, worst over cells
    acc = re.search(r"<h2>Accuracy</h2>.*?</table>", text, re.S).group(0)
    assert "<th>output</th><th>grad q</th><th>grad v</th>" in acc
    assert '<td class="l">m causal fwd+bwd bf16</td><td>2</td><td>0.00123</td><td>0.0456</td><td>0.001</td>' in acc
    assert '<td class="l">f causal fwd bf16</td><td>1</td><td>0.00789</td><td>—</td><td>—</td>' in acc


def test_no_accuracy_section_without_errors(tmp_path, records):
    assert "<h2>Accuracy</h2>" not in write_report(tmp_path, records, ENV, SUITE).read_text()


def test_the_report_names_the_steepest_step_of_each_line(tmp_path, records, make_record):
    # the synthetic linear and quadratic lines, and one flat along K until a 6x jump at 256
    cliff = [make_record("cliff", 16384, K=K, median_ms=ms)
             for K, ms in [(32, 0.1), (64, 0.1), (128, 0.1), (256, 0.6)]]
    text = write_report(tmp_path, records + cliff, {}, {"name": "s"}).read_text()
    section = text[text.index("<h2>Steepest growth</h2>"):]
    section = section[:section.index("<h2>", 5)]
    rows = [re.sub("<[^>]+>", "|", r).strip("|").split("||")
            for r in re.findall(r"<tr>(.*?)</tr>", section)]
    by_line = {tuple(r[:3]): r[3:] for r in rows}
    assert by_line[("latency vs K", "cliff causal fwd bf16", "B=1 N=16384 H=8 D=64")] == [
        "steeper than quadratic", "128 → 256", "2.58", "4 of 4"]
    quad = by_line[("latency vs N", "quadratic causal fwd bf16", "B=1 H=8 D=64")]
    assert (quad[0], quad[2], quad[3]) == ("super-linear, at most quadratic", "2.00", "5 of 6")
    lin = by_line[("latency vs N", "linear causal fwd bf16", "B=1 H=8 D=64 K=16")]
    assert (lin[0], lin[2]) == ("linear or better", "1.00")
