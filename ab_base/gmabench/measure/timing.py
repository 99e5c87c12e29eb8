"""Timing one callable: warm it, then repeat until its spread is small or the budget is spent.

On CUDA each repetition is bracketed by CUDA events and preceded by an L2 flush (a write to a
buffer several times the cache), as triton.testing.do_bench does; on CPU a monotonic wall clock
is used. Raw samples are kept: summaries (median, p20/p80, IQR/median) are derived from them.
On CUDA the host time to issue each call is kept too (`extra["host_ms"]`, median): when it is close
to the measured time, the GPU waited for the host and the cell measures launch overhead.

With graph=True (CUDA only) the callable is captured once in a CUDA graph, after its warm-up on a
side stream (as torch.cuda.graph's documentation asks), and each repetition replays the graph
between the events: the GPU's own time for the call's kernels, as a training step captured in a
graph runs them, without the Python and launch work of an eager call. `host_ms` is then the
replay's host time. A callable that cannot be captured (one that synchronises, or reads a value
back to the host) raises GraphCaptureError naming what failed inside the capture, and its cell
records the error.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass
class Timings:
    samples_ms: list[float]
    timer: str
    warmup_calls: int = 0
    noise_threshold: float = 0.10
    stopped_by: str = ""          # "stable", "max_reps" or "max_ms"
    extra: dict = field(default_factory=dict)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.samples_ms, q))  # linear interpolation between samples

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p20_ms(self) -> float:
        return self.quantile(0.2)

    @property
    def p80_ms(self) -> float:
        return self.quantile(0.8)

    @property
    def iqr_over_median(self) -> float:
        med = self.median_ms
        return (self.quantile(0.75) - self.quantile(0.25)) / med if med > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.iqr_over_median > self.noise_threshold


def _spread_ok(samples: list[float], threshold: float) -> bool:
    t = Timings(samples, "", noise_threshold=threshold)
    return not t.noisy


class _L2Flusher:
    """Writes a buffer larger than the GPU's L2 so every repetition starts with a cold cache."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 64 << 20) or (64 << 20)
        self.buf = torch.empty(max(4 * l2, 256 << 20) // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def time_callable(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25.0,
                  rep_ms: float = 100.0, min_reps: int = 5, max_reps: int = 1000,
                  max_ms: float = 2000.0, noise_threshold: float = 0.10,
                  graph: bool = False) -> Timings:
    """Time fn: one first call (compilation, autotuning), warm-up for warmup_ms, then repeat.

    Repetition stops once at least min_reps samples and rep_ms of samples exist and
    IQR/median <= noise_threshold, or at max_reps samples, or when max_ms of samples is spent.
    graph: replay fn captured in a CUDA graph instead of calling it (CUDA only; module docstring).
    """
    stop = (rep_ms, min_reps, max_reps, max_ms, noise_threshold)
    if graph:
        if device.type != "cuda":
            raise ValueError(f"graph timing needs a CUDA device, got {device.type!r}")
        return _time_cuda_graph(fn, device, warmup_ms, *stop)
    if device.type == "cuda":
        return _time_cuda(fn, device, warmup_ms, *stop)
    return _time_cpu(fn, warmup_ms, *stop)


def warm_up(fn: Callable[[], object], warmup_ms: float, sync: Callable[[], None] = lambda: None) -> int:
    """One first call (compilation, autotuning, lazy initialisation), then calls until warmup_ms
    of *completed* work: each call is waited for with sync, so on a GPU, where a call returns as
    soon as it is queued, the loop does not queue hundreds of calls of a slow kernel (it did: a
    150 ms attention cell spent over a minute warming up). Returns the number of calls made."""
    fn()
    sync()
    calls = 1
    start = time.perf_counter()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
        sync()
        calls += 1
    return calls


def _stop(samples: list[float], rep_ms: float, min_reps: int, max_reps: int, max_ms: float,
          threshold: float) -> str:
    total = sum(samples)
    if len(samples) >= max_reps:
        return "max_reps"
    if total >= max_ms and len(samples) >= min(min_reps, 3):
        return "max_ms"
    if len(samples) >= min_reps and total >= rep_ms and _spread_ok(samples, threshold):
        return "stable"
    return ""


def _time_cpu(fn, warmup_ms, rep_ms, min_reps, max_reps, max_ms, threshold) -> Timings:
    calls = warm_up(fn, warmup_ms)
    samples: list[float] = []
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        why = _stop(samples, rep_ms, min_reps, max_reps, max_ms, threshold)
        if why:
            return Timings(samples, "wall_clock", calls, threshold, why)


def _time_cuda(fn, device, warmup_ms, rep_ms, min_reps, max_reps, max_ms, threshold,
               calls: int | None = None, timer: str = "cuda_events") -> Timings:
    """Repetitions of fn between CUDA events, each after an L2 flush; `calls`: the warm-up's
    count when the caller warmed fn up already."""
    flush = _L2Flusher(device)
    if calls is None:
        calls = warm_up(fn, warmup_ms, lambda: torch.cuda.synchronize(device))
    samples: list[float] = []
    host: list[float] = []   # host time to issue each call (it returns once its work is queued)
    batch = 5  # record a few repetitions per synchronisation to keep the GPU busy
    while True:
        events = []
        for _ in range(batch):
            flush()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            e.record()
            events.append((s, e))
        torch.cuda.synchronize(device)
        samples.extend(s.elapsed_time(e) for s, e in events)
        why = _stop(samples, rep_ms, min_reps, max_reps, max_ms, threshold)
        if why:
            del flush
            return Timings(samples, timer, calls, threshold, why,
                           extra={"host_ms": statistics.median(host)})


class GraphCaptureError(RuntimeError):
    """The timed call could not be captured in a CUDA graph."""


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _capture(fn, graph):
    """fn captured into graph; returns its output. A failure inside the capture makes the
    capture's end fail too ("operation failed due to a previous error during capture"): the
    message gives the first failure, then that."""
    try:
        with torch.cuda.graph(graph):
            return fn()
    except Exception as exc:
        chain = [exc] if exc.__context__ is None else [exc.__context__, exc]
        raise GraphCaptureError("the call cannot be captured in a CUDA graph (timer 'graph'): "
                                + "; then ".join(map(error_line, chain))) from exc


def _time_cuda_graph(fn, device, warmup_ms, rep_ms, min_reps, max_reps, max_ms, threshold) -> Timings:
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):   # lazy initialisation and autotuning happen outside the capture
        calls = warm_up(fn, warmup_ms, sync)
    torch.cuda.current_stream(device).wait_stream(side)
    sync()
    graph = torch.cuda.CUDAGraph()
    out = _capture(fn, graph)   # the graph's outputs live in its pool while it is replayed
    sync()
    calls += warm_up(graph.replay, warmup_ms, sync)   # the first replay uploads the graph
    timings = _time_cuda(graph.replay, device, warmup_ms, rep_ms, min_reps, max_reps, max_ms,
                         threshold, calls=calls, timer="cuda_graph")
    del out, graph
    return timings
