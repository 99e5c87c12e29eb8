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
