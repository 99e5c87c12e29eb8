"""Memory measurement: exact live-storage peaks on CPU and saved-for-backward bytes that show
GMA's O(NK) activation memory against softmax's O(N^2)."""

import numpy as np
import pytest
import gc
import weakref

import torch

from gmabench.measure.memory import measure_peak, saved_tensor_bytes
from gmabench.sweep.cell import run_cell
from gmabench.sweep.plan import Cell
from gmabench.sweep.suite import Timing

CPU = torch.device("cpu")
FAST = Timing(warmup_ms=0.5, rep_ms=1, min_reps=3, max_ms=5, accuracy_tokens=16)


def test_cpu_peak_counts_live_storages_exactly():
    x = torch.randn(256, 256)  # allocated before: excluded

    def f():
        a = x @ x            # 256 KiB
        b = a.exp()          # 256 KiB, a still alive
        del a
        c = b * 2            # a freed first: peak stays at two buffers
        return c.sum()

    _, peak = measure_peak(f, CPU)
    # b and c (a is gone by then) plus the 4-byte sum.
    assert peak.peak_bytes == 2 * 256 * 256 * 4 + 4
    assert peak.method == "dispatch_tracked_storages"


def test_saved_bytes_excludes_inputs_and_deduplicates():
    x = torch.randn(100, 50, requires_grad=True)
    _, saved = saved_tensor_bytes(lambda: (x.exp() * x.exp()).sum(), exclude=[x])
    # Each exp saves its result (100*50 floats); mul saves both operands, the same two storages.
    assert saved == 2 * 100 * 50 * 4


def _saved(mixer: str, N: int, K: int, causal: bool = False) -> int:
    cell = Cell(mixer=mixer, causal=causal, mode="fwd_bwd", scope="core", B=1, N=N, H=2, D=16, Dv=16, K=K,
                dtype="float32", device="cpu", timing=FAST)
    rec = run_cell(cell, CPU)
    assert rec["status"] == "ok", rec
    assert rec["fwd_peak_bytes"] > 0 and rec["bwd_peak_bytes"] > 0 and rec["peak_bytes"] > 0
    return rec["saved_bytes"]


def _loglog_slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


class _SavesItsOutput(torch.autograd.Function):
    """exp, saving its output for backward as SDPA's fused backends and flash-attn do; a weak
    reference to an object on its ctx tells whether the graph was freed."""
    alive: list = []

    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        ctx.marker = type("Marker", (), {})()
        _SavesItsOutput.alive.append(weakref.ref(ctx.marker))
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


def test_counting_saved_bytes_frees_the_graph_with_its_output():
    x = torch.randn(256, requires_grad=True)
    out, saved = saved_tensor_bytes(lambda: _SavesItsOutput.apply(x), exclude=[x])
    assert saved == 256 * 4
    del out   # never differentiated (a backward would free what it saved and hide a cycle)
    gc.collect()
    assert _SavesItsOutput.alive[-1]() is None   # was kept alive by a reference cycle
    out, _ = saved_tensor_bytes(lambda: _SavesItsOutput.apply(x), exclude=[x])
    (grad,) = torch.autograd.grad(out, x, torch.ones(256))   # the graph still works
    assert torch.equal(grad, out)


@pytest.mark.parametrize("mixer, causal", [("gma-reference", False), ("gma-chunked", True)])
def test_gma_saved_bytes_grow_linearly_in_n_and_k(mixer, causal):
    ns = [256, 512, 1024, 2048]
    by_n = [_saved(mixer, n, 8, causal) for n in ns]
    assert 0.95 < _loglog_slope(ns, by_n) < 1.05
    ks = [4, 8, 16, 32]
    by_k = [_saved(mixer, 512, k, causal) for k in ks]
    increments = np.diff(by_k)
    # Affine in K: equal steps of K give steps of bytes doubling with the K step.
    assert np.allclose(increments[1:] / increments[:-1], 2.0, rtol=0.05)
    assert by_k[-1] > by_k[0]


def test_softmax_saved_bytes_grow_quadratically_in_n():
    ns = [128, 256, 512, 1024]
    by_n = [_saved("softmax-naive", n, 8) for n in ns]
    assert 1.85 < _loglog_slope(ns, by_n) < 2.05
