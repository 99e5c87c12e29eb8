"""Measuring one cell inside a worker: inputs, accuracy (accuracy.py), memory per phase, then timing.

Everything here runs in the worker process that owns the device. Failures are classified
(oom, cuda_error, error) and returned as data; the supervisor decides what to do with the worker.
"""

from __future__ import annotations

import dataclasses

import gc
import hashlib
import time
import traceback
from typing import Any, Callable

import torch

from gmabench.measure.clocks import read_clocks
from gmabench.measure.cost import call_flops, call_min_bytes
from gmabench.measure.memory import measure_peak, memory_totals, saved_tensor_bytes
from gmabench.measure.timing import error_line, time_callable
from gmabench.mixers.base import Mixer, Shape
from gmabench.sweep.accuracy import measure_accuracy
from gmabench.sweep.plan import Cell


def cell_seed(cell: Cell) -> int:
    """A seed that differs between cells (fresh inputs) but is stable across reruns."""
    digest = hashlib.sha256(repr(cell.key()).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def classify_failure(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    text = str(exc)
    if "out of memory" in text.lower() or "can't allocate memory" in text:
        return "oom"
    accel_error = getattr(torch, "AcceleratorError", None)
    if (accel_error is not None and isinstance(exc, accel_error)) or "CUDA error" in text \
            or "cudaError" in text or "illegal memory access" in text:
        return "cuda_error"
    return "error"


def _build_calls(mixer: Mixer, cell: Cell, shape: Shape, dtype: torch.dtype, device: torch.device,
                 seed: int) -> tuple[Callable[[], Any], Callable[[], Any] | None, Callable[[Any], Any] | None, list,
                                     Callable[[], str]]:
    """The timed call, plus (for fwd_bwd) a forward and a backward to measure phase by phase,
    the tensors differentiated, and a function giving the backend the mixer reports for these
    inputs (asked again after the timing: a mixer can learn that it fell back, e.g. GMA's fused
    kernels over the GPU's shared memory)."""
    gen = torch.Generator().manual_seed(seed)
    if cell.scope == "layer":
        from gmabench.mixers.layer import build_layer
        module, x = build_layer(mixer, shape, dtype, device)
        wrt = [x.requires_grad_(cell.mode == "fwd_bwd")] + [p for p in module.parameters() if p.requires_grad]
        forward = lambda: module(x)  # noqa: E731
        # one token stands for the shape (dtype, device, head and mixture sizes): no full-size
        # inputs held through the measurement
        described = mixer.make_inputs(dataclasses.replace(shape, B=1, N=1), dtype, device, gen)
        backend = lambda: mixer.backend(described, cell.causal)  # noqa: E731
    else:
        inputs = mixer.make_inputs(shape, dtype, device, gen)
        backend = lambda: mixer.backend(inputs, cell.causal)  # noqa: E731
        wrt = []
        if cell.mode == "fwd_bwd":
            for name in mixer.grad_inputs:
                inputs[name] = inputs[name].detach().requires_grad_(True)
                wrt.append(inputs[name])
        forward = lambda: mixer.forward(inputs, cell.causal)  # noqa: E731
    if cell.mode == "fwd":
        def fwd_only():
            with torch.no_grad():
                return forward()
        return fwd_only, None, None, wrt, backend
    with torch.no_grad():
        probe = forward()
    grad_out = torch.randn(probe.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=probe.dtype)
    del probe
    wrt = [t for t in wrt if t.requires_grad]
    backward = lambda out: torch.autograd.grad(out, wrt, grad_out)  # noqa: E731
    return (lambda: backward(forward())), forward, backward, wrt, backend


def run_cell(cell: Cell, device: torch.device, gpu_index: int = 0) -> dict[str, Any]:
    """Measure one cell; returns the record fields the worker knows (status always set)."""
    from gmabench.mixers.registry import load_mixer

    rec: dict[str, Any] = {"status": "ok", "reason": ""}
    started = time.perf_counter()
    rec["clocks"] = {"before": read_clocks(gpu_index)} if device.type == "cuda" else {}
    mixer = None
    try:
        mixer = load_mixer(cell.mixer)
        rec["impl"] = mixer.impl
        dtype = getattr(torch, cell.dtype)
        shape = Shape(B=cell.B, N=cell.N, H=cell.H, D=cell.D, K=cell.K, Dv=cell.Dv, causal=cell.causal)
        reasons = mixer.not_supported_reasons(shape, dtype, device)
        reasons += mixer.mode_not_supported_reasons(cell.mode, device, dtype)
        if reasons:
            rec.update(status="skipped", reason="; ".join(reasons))
            return rec
        seed = cell_seed(cell)
        rec["seed"] = seed
        accuracy = measure_accuracy(mixer, shape, dtype, device, cell.timing.accuracy_tokens,
                                    seed, gradients=cell.mode == "fwd_bwd")
        rec["rel_error"], rec["rel_error_tokens"] = accuracy.rel_error, accuracy.tokens
        if accuracy.grad_rel_errors:
            rec["grad_rel_error"] = accuracy.grad_rel_error
            rec["grad_rel_errors"] = accuracy.grad_rel_errors
        del accuracy
        call, forward, backward, wrt, backend = _build_calls(mixer, cell, shape, dtype, device, seed)
        rec["backend"] = backend()

        # Memory, phase by phase, before timing (so timing's allocations don't pollute it).
        # Each phase's result is dropped before the next phase, so no graph or gradient from
        # one measurement is still alive (and occupying memory) during the next.
        if forward is not None:
            out, fwd = measure_peak(forward, device)
            grads, bwd = measure_peak(lambda: backward(out), device)
            del out, grads
            rec["fwd_peak_bytes"], rec["bwd_peak_bytes"] = fwd.peak_bytes, bwd.peak_bytes
            out, rec["saved_bytes"] = saved_tensor_bytes(forward, exclude=wrt)
            del out
        result, total = measure_peak(call, device)
        del result
        rec["peak_bytes"], rec["memory_method"] = total.peak_bytes, total.method
        if forward is None:
            rec["fwd_peak_bytes"] = total.peak_bytes
        t = cell.timing
        timings = time_callable(call, device, warmup_ms=t.warmup_ms, rep_ms=t.rep_ms, min_reps=t.min_reps,
                                max_reps=t.max_reps, max_ms=t.max_ms, noise_threshold=t.noise_threshold,
                                graph=t.timer == "graph")
        rec.update(median_ms=timings.median_ms, p20_ms=timings.p20_ms, p80_ms=timings.p80_ms,
                   iqr_over_median=timings.iqr_over_median, noisy=timings.noisy,
                   samples_ms=timings.samples_ms, timer=timings.timer,
                   host_ms=timings.extra.get("host_ms"))
        rec["tokens_per_s"] = cell.B * cell.N / (timings.median_ms * 1e-3)
        rec["flops"] = call_flops(mixer, shape, cell.mode)
        rec["min_bytes"] = call_min_bytes(mixer, shape, torch.tensor([], dtype=dtype).element_size(), cell.mode)
        rec.update(memory_totals(device))
        rec["impl"] = mixer.impl
        rec["backend"] = backend()
    except Exception as exc:  # a failing cell is data
        rec["status"] = classify_failure(exc)
        rec["reason"] = error_line(exc)[:500]
        # the innermost frames say where it failed: keep the end (a positive limit keeps the
        # outermost frames, which cut mamba_ssm's launch failure off at gmabench's own call)
        rec["traceback"] = traceback.format_exc()[-4000:]
    finally:
        if device.type == "cuda":
            rec["clocks"]["after"] = read_clocks(gpu_index)
        rec["wall_s"] = time.perf_counter() - started
        if device.type == "cuda" or rec["status"] != "ok":
            gc.collect()  # reference cycles (e.g. from a traceback) would hold device memory
        if device.type == "cuda" and rec["status"] != "cuda_error":
            torch.cuda.empty_cache()
    return rec
