"""One cell measured in-process: core and layer scopes, failures classified as data."""

import dataclasses

import pytest
import torch

from gmabench.mixers.registry import load_mixer
from gmabench.sweep.cell import classify_failure, run_cell
from gmabench.sweep.plan import Cell
from gmabench.sweep.suite import Timing

FAST = Timing(warmup_ms=0.5, rep_ms=1, min_reps=3, max_ms=10, accuracy_tokens=16)


def _cell(**kw):
    base = dict(mixer="gma", causal=True, mode="fwd_bwd", scope="core", B=1, N=48, H=2, D=16, Dv=16, K=4,
                dtype="float32", device="cpu", timing=FAST)
    return Cell(**{**base, **kw})


@pytest.mark.parametrize("scope", ["core", "layer"])
@pytest.mark.parametrize("mixer", ["gma", "mamba2", "sdpa"])
def test_scopes_measure_time_memory_and_accuracy(scope, mixer):
    rec = run_cell(_cell(mixer=mixer, scope=scope), torch.device("cpu"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["median_ms"] > 0 and len(rec["samples_ms"]) >= 3
    assert rec["fwd_peak_bytes"] > 0 and rec["bwd_peak_bytes"] > 0 and rec["saved_bytes"] > 0
    assert rec["rel_error"] < 1e-4 and rec["rel_error_tokens"] == 16
    assert rec["flops"] > 0 and rec["min_bytes"] > 0
    grads = rec["grad_rel_errors"]   # the core's gradients, whatever the scope timed
    assert set(grads) == set(load_mixer(mixer).grad_inputs) and max(grads.values()) < 1e-4, grads


def test_a_wrong_backward_is_recorded_as_its_gradient_error(monkeypatch):
    monkeypatch.setenv("GMABENCH_MIXERS", "test-wrong-grad=tests.sweep.fault_mixers:WrongValueGradient")
    rec = run_cell(_cell(mixer="test-wrong-grad"), torch.device("cpu"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["rel_error"] == 0.0 and rec["grad_rel_errors"]["q"] == 0.0
    assert rec["grad_rel_error"] == rec["grad_rel_errors"]["v"] == pytest.approx(0.005, rel=1e-5)
    rec = run_cell(_cell(mixer="test-wrong-grad", mode="fwd"), torch.device("cpu"))
    assert "grad_rel_errors" not in rec and rec["rel_error"] == 0.0


def test_layer_saves_more_than_the_core_it_wraps():
    core = run_cell(_cell(), torch.device("cpu"))
    layer = run_cell(_cell(scope="layer"), torch.device("cpu"))
    assert layer["saved_bytes"] > core["saved_bytes"]  # projections keep their inputs too


def test_unsupported_mode_or_shape_is_a_skip_with_its_reason():
    rec = run_cell(_cell(mixer="mamba2", causal=False), torch.device("cpu"))
    assert rec["status"] == "skipped" and "no bidirectional form" in rec["reason"]


def test_failures_are_classified():
    assert classify_failure(torch.cuda.OutOfMemoryError("CUDA out of memory")) == "oom"
    assert classify_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried")) == "oom"
    assert classify_failure(RuntimeError("CUDA error: an illegal memory access was encountered")) == "cuda_error"
    assert classify_failure(ValueError("bad shape")) == "error"


def test_backend_is_read_again_after_the_cell_ran(monkeypatch):
    # A mixer may learn during the timing that it runs some calls another way (GMA's kernels over
    # shared memory); the record carries what it ran, not what it expected to run.
    from tests.sweep.fault_mixers import LearnsFallback
    monkeypatch.setenv("GMABENCH_MIXERS", "test-learns-fallback=tests.sweep.fault_mixers:LearnsFallback")
    monkeypatch.setattr(LearnsFallback, "fell_back", False)
    rec = run_cell(_cell(mixer="test-learns-fallback", mode="fwd"), torch.device("cpu"))
    assert rec["status"] == "ok" and rec["backend"] == "fused", rec.get("traceback")
    rec = run_cell(_cell(mixer="test-learns-fallback"), torch.device("cpu"))
    assert rec["status"] == "ok" and rec["backend"] == "fused; backward in PyTorch", rec.get("traceback")


def test_a_mode_refused_for_one_dtype_is_a_skip_in_that_dtype_only(monkeypatch):
    # The cell hands the mixer its dtype along with the mode: a mixer may train in one dtype and
    # not in another (fla's linear attention in float16, docs/competitors.md).
    monkeypatch.setenv("GMABENCH_MIXERS",
                       "test-refuses-half-training=tests.sweep.fault_mixers:RefusesHalfTraining")
    half = run_cell(_cell(mixer="test-refuses-half-training", dtype="float16"), torch.device("cpu"))
    assert half["status"] == "skipped" and half["reason"] == "float16 gradients are wrong"
    full = run_cell(_cell(mixer="test-refuses-half-training"), torch.device("cpu"))
    assert full["status"] == "ok", full.get("traceback")
    fwd = run_cell(_cell(mixer="test-refuses-half-training", dtype="float16", mode="fwd"),
                   torch.device("cpu"))
    assert fwd["status"] == "ok", fwd.get("traceback")


def test_a_failures_record_keeps_the_frames_where_it_failed(monkeypatch):
    monkeypatch.setenv("GMABENCH_MIXERS", "test-deep-raise=tests.sweep.fault_mixers:DeepRaise")
    rec = run_cell(_cell(mixer="test-deep-raise", mode="fwd"), torch.device("cpu"))
    assert rec["status"] == "error" and rec["reason"] == "ValueError: deliberate failure at the bottom"
    tail = rec["traceback"].splitlines()
    assert tail[-1] == "ValueError: deliberate failure at the bottom"
    assert 'raise ValueError("deliberate failure at the bottom")' in tail[-2]
    assert len(rec["traceback"]) <= 4000


@pytest.mark.gpu
@pytest.mark.parametrize("mixer", ["gma", "sdpa-cudnn", "gma-chunked"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_cells_timed_by_cuda_graph_replays(mixer, mode):
    # Forward and training calls (autograd.grad inside the capture) replay from a CUDA graph:
    # the fused kernels, a cuDNN call and a PyTorch GMA of many small ops.
    graph = dataclasses.replace(FAST, timer="graph", rep_ms=5, min_reps=5, max_ms=100)
    cell = _cell(mixer=mixer, mode=mode, device="cuda", dtype="bfloat16", N=1024, H=4, D=64, Dv=64, K=16,
                 timing=graph)
    rec = run_cell(cell, torch.device("cuda"))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["timer"] == "cuda_graph" and len(rec["samples_ms"]) >= 5
    # a replay costs the host one graph launch, far less than the calls it holds
    assert 0 < rec["median_ms"] and rec["host_ms"] < 0.1
