"""Suite loading and validation: every bad input names its field and value."""

import json

import pytest

from gmabench.sweep.plan import plan_sweep, unrecorded_cells
from gmabench.sweep.suite import Suite, SuiteError, available_suites, load_suite, parse_suite

BASE = {"mixers": ["gma", "softmax-naive"], "seq_lens": [32, 64], "components": [2, 4], "heads": [2],
        "head_dims": [16], "dtypes": ["float32"], "device": "cpu"}


@pytest.mark.parametrize("name", ["smoke", "seqlen", "components", "heads", "dtype", "paper", "kernels", "layer",
                                  "oom-isolation", "gpu-quick", "small-n"])
def test_named_suites_load_and_plan(name):
    suite = load_suite(name, {"device": "cpu", "timer": "events"})   # graph timers need CUDA
    cells = plan_sweep(suite)
    assert cells and len({c.key() for c in cells}) == len(cells)
    assert suite.name == name
    assert load_suite(name).timing.timer == ("graph" if name in ("small-n", "heads") else "events")


def test_all_named_suites_are_listed():
    assert {"smoke", "seqlen", "components", "heads", "dtype", "paper"} <= set(available_suites())


def test_overrides_replace_every_sweep():
    suite = load_suite("paper", {"seq_lens": [128], "mixers": ["gma"], "device": "cpu"})
    assert all(s.seq_lens == [128] and s.mixers == ["gma"] for s in suite.sweeps)
    assert suite.device == "cpu"


def test_k_does_not_multiply_cells_of_mixers_without_k():
    cells = plan_sweep(parse_suite(BASE))
    soft = [c for c in cells if c.mixer == "softmax-naive"]
    gma = [c for c in cells if c.mixer == "gma"]
    assert {c.K for c in soft} == {2} and not any(c.k_applies for c in soft)
    assert {c.K for c in gma} == {2, 4} and all(c.k_applies for c in gma)
    assert len(gma) == 2 * len(soft)


def test_caps_and_unsupported_become_skips_with_reasons():
    data = {**BASE, "mixers": ["softmax-naive", "mamba2"], "causal": [False, True], "max_seq_len": {"softmax-naive": 32}}
    cells = plan_sweep(parse_suite(data))
    capped = [c for c in cells if c.mixer == "softmax-naive" and c.N == 64]
    assert capped and all("caps softmax-naive at N <= 32" in c.skip_reason for c in capped)
    bidir_mamba = [c for c in cells if c.mixer == "mamba2" and not c.causal]
    assert bidir_mamba and all("no bidirectional form" in c.skip_reason for c in bidir_mamba)
    assert all(c.skip_reason == "" for c in cells if c.mixer == "mamba2" and c.causal)


@pytest.mark.parametrize("change, field, value", [
    ({"seq_lens": [64, 0]}, "seq_lens", "0"),
    ({"components": [-1]}, "components", "-1"),
    ({"heads": [0]}, "heads", "0"),
    ({"head_dims": [-16]}, "head_dims", "-16"),
    ({"dtypes": ["float8"]}, "dtypes", "'float8'"),
    ({"modes": ["bwd"]}, "modes", "'bwd'"),
    ({"mixers": ["gma", "flashy"]}, "mixers", "'flashy'"),
    ({"seq_lens": "64"}, "seq_lens", "'64'"),
    ({"seq_lens": [64.5]}, "seq_lens", "64.5"),
    ({"causal": [1]}, "causal", "1"),
    ({"device": "tpu"}, "device", "'tpu'"),
    ({"colour": "red"}, "colour", "colour"),
    ({"timing": {"rep_ms": -1}}, "timing.rep_ms", "-1"),
    ({"timing": {"reps": 3}}, "timing", "reps"),
    ({"timing": {"timer": "cupti"}}, "timing.timer", "'cupti'"),
    ({"timing": {"timer": "graph"}, "device": "cpu"}, "timing.timer", "'cpu'"),
    ({"max_seq_len": {"gma": 0}}, "max_seq_len.gma", "0"),
])
def test_bad_values_name_field_and_value(change, field, value):
    with pytest.raises(SuiteError) as err:
        parse_suite({**BASE, **change})
    assert field in str(err.value) and value in str(err.value)


def test_timer_comes_from_the_suite_and_the_command_line_overrides_it():
    assert parse_suite(BASE).timing.timer == "events"
    gpu = {**BASE, "device": "auto", "timing": {"timer": "graph", "rep_ms": 50}}
    suite = parse_suite(gpu)
    assert (suite.timing.timer, suite.timing.rep_ms) == ("graph", 50)
    assert parse_suite(gpu, overrides={"device": "cuda"}).timing.timer == "graph"
    suite = parse_suite(gpu, overrides={"timer": "events"})
    assert (suite.timing.timer, suite.timing.rep_ms) == ("events", 50)
    with pytest.raises(SuiteError, match="needs device 'cuda' or 'auto', not 'cpu'"):
        parse_suite(BASE, overrides={"timer": "graph", "device": "cpu"})


def test_unknown_mixer_lists_known_names():
    with pytest.raises(SuiteError, match=r"known: .*gma.*softmax-naive"):
        parse_suite({**BASE, "mixers": ["nope"]})


def test_unknown_key_inside_a_sweep_table():
    with pytest.raises(SuiteError, match=r"sweep\[1\]: unknown key 'seqlens'"):
        parse_suite({**BASE, "sweep": [{}, {"seqlens": [3]}]})


def test_malformed_toml_and_unknown_suite(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("mixers = [gma\n")
    with pytest.raises(SuiteError, match="malformed TOML"):
        load_suite(str(bad))
    with pytest.raises(SuiteError, match="unknown suite 'nosuch'.*smoke"):
        load_suite("nosuch")


def test_missing_required_key():
    data = {k: v for k, v in BASE.items() if k != "seq_lens"}
    with pytest.raises(SuiteError, match="missing 'seq_lens'"):
        parse_suite(data)


def test_suites_folder_from_the_environment_shadows_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "smoke.toml").write_text('mixers = ["gma"]\nseq_lens = [8, 16, 32]\ndevice = "cpu"\n')
    (tmp_path / "mine.toml").write_text('mixers = ["sdpa"]\nseq_lens = [64]\n')
    monkeypatch.setenv("GMABENCH_SUITES", str(tmp_path))
    assert available_suites()["mine"] == tmp_path / "mine.toml"
    assert load_suite("smoke").sweeps[0].seq_lens == [8, 16, 32]
    assert "paper" in available_suites()


def test_malformed_plugin_variable_is_a_suite_error(monkeypatch):
    monkeypatch.setenv("GMABENCH_MIXERS", "broken-entry")
    with pytest.raises(SuiteError, match="GMABENCH_MIXERS: expected 'name=module:Class'"):
        parse_suite(BASE)


def test_suite_round_trips_through_its_saved_form():
    suite = load_suite("paper")
    again = Suite.from_dict(json.loads(json.dumps(suite.to_dict())))
    assert again == suite


def test_unrecorded_cells_are_exactly_the_planned_cells_without_a_record():
    suite = parse_suite({"mixers": ["gma", "sdpa"], "seq_lens": [64, 128, 256], "components": [4, 8],
                         "device": "cpu"})
    planned = plan_sweep(suite)
    assert len(planned) == 3 * 2 + 3  # sdpa: K does not apply, one cell per N
    records = [{**c.to_dict(), "status": "ok"} for c in planned[::2]]
    left = unrecorded_cells(suite, "cpu", records)
    assert [c.key() for c in left] == [c.key() for c in planned[1::2]]
    assert unrecorded_cells(suite, "cpu", [{**c.to_dict(), "status": "oom"} for c in planned]) == []
    # Records of another device do not count for this one.
    assert len(unrecorded_cells(suite, "cuda", records)) == len(planned)


def test_cells_run_smallest_first_so_a_cut_run_has_every_mixer_side_by_side():
    suite = load_suite("paper", {"device": "cpu"})
    cells = plan_sweep(suite)
    sizes = [c.B * c.N for c in cells]
    assert sizes == sorted(sizes)
    first = {c.mixer for c in cells if c.N == 1024}
    assert {"gma", "sdpa-cudnn", "flash-attn", "mamba2-ssd", "fla-simple-gla", "performer"} <= first
    # Within one size the suite's own order holds (first sweep's mixers before the second's).
    at_1024 = [c.mixer for c in cells if c.N == 1024]
    assert at_1024.index("fla-simple-gla") < at_1024.index("softmax-naive")
