"""scripts/gpu_pytest_ids.py: which GPUs of a lane each GPU test of a device call may see."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_pytest_ids", ROOT / "scripts" / "gpu_pytest_ids.py")
ids = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ids)


def test_tests_take_the_lanes_gpus_in_turn_and_two_gpu_tests_all_of_them():
    got = ids.assign(["a", "b", "c"], ["m"], ["2", "3"])
    assert got == [("2", "a"), ("3", "b"), ("2", "c"), ("2,3", "m")]
    assert ids.assign(["a"], [], ["0"]) == [("0", "a")]


@pytest.mark.parametrize("gpus", ["", "a,b", "0,,x"])
def test_a_lane_without_gpu_indices_is_refused(gpus, capsys):
    with pytest.raises(SystemExit) as exc:
        ids.main(["--gpus", gpus])
    assert exc.value.code == 2 and "expected GPU indices" in capsys.readouterr().err


def test_the_collected_gpu_tests_with_their_gpus(capsys):
    # the two-GPU test is marked gpus2 and sees both GPUs; the others one each, in turn
    assert ids.main(["--gpus", "0,1", "-k", "another_device or fused_causal_inference_matches"]) == 0
    lines = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    two = [t for d, t in lines if "another_device" in t]
    one = [(d, t) for d, t in lines if "another_device" not in t]
    assert len(two) == 2 and all(d == "0,1" for d, t in lines if t in two)
    assert len(one) == 2 and [d for d, _ in one] == ["0", "1"]
    assert all(t.startswith("tests/gma/test_triton.py::test_gpu_") for _, t in lines)


def test_an_earlier_runs_durations_put_the_longest_tests_first(tmp_path):
    junit = tmp_path / "run.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.mixers.test_mixers_gpu" name="test_twin[fla-causal]" time="198.9"/>'
        '<testcase classname="tests.gma.test_triton" name="test_gpu_x[a]" time="4.5"/>'
        '<testcase classname="tests.gma.test_triton" name="test_gpu_x[b]" time="12.0"/>'
        '<testcase classname="" name="tests.gma.test_triton_compile" time="0.000"/>'
        '</testsuite></testsuites>')
    secs = ids.durations(junit)
    assert secs == {"tests/mixers/test_mixers_gpu.py::test_twin[fla-causal]": 198.9,
                    "tests/gma/test_triton.py::test_gpu_x[a]": 4.5,
                    "tests/gma/test_triton.py::test_gpu_x[b]": 12.0}
    tests = ["tests/gma/test_triton.py::test_gpu_x[a]", "tests/gma/test_triton.py::test_new",
             "tests/gma/test_triton.py::test_gpu_x[b]",
             "tests/mixers/test_mixers_gpu.py::test_twin[fla-causal]",
             "tests/gma/test_triton.py::test_newer"]
    # untimed (new) tests first, in collection order, then the timed ones longest first
    assert ids.longest_first(tests, secs) == [tests[1], tests[4], tests[3], tests[2], tests[0]]
    assert ids.longest_first(tests, {}) == tests


@pytest.mark.parametrize("content", [None, "<testsuite><testcase"])
def test_unreadable_durations_are_refused(tmp_path, capsys, content):
    junit = tmp_path / "run.xml"
    if content is not None:
        junit.write_text(content)
    with pytest.raises(SystemExit) as exc:
        ids.main(["--gpus", "0", "--durations", str(junit)])
    assert exc.value.code == 2 and f"--durations {junit}" in capsys.readouterr().err


def test_the_committed_gpu_run_orders_the_collected_tests(capsys):
    # the newest committed run of every GPU test (what gpu_session.sh passes) times the kernels'
    # wide training tests: the four selected come longest first (collected, they are not)
    junit = sorted(ROOT.glob("results/*-gpu-tests*/pytest-gpu.xml"))[-1]
    secs = ids.durations(junit)
    assert ids.main(["--gpus", "0", "-k", "wide_training_meets_spec", "--durations", str(junit)]) == 0
    got = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert len(got) == 4 and all(t in secs for t in got)
    assert [secs[t] for t in got] == sorted((secs[t] for t in got), reverse=True)
