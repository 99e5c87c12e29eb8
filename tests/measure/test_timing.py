"""Timing statistics: quantiles from raw samples, noise flags, stopping rules."""

import contextlib
import time

import pytest
import torch

from gmabench.measure.timing import Timings, time_callable, warm_up


def test_summary_statistics_from_raw_samples():
    t = Timings([1.0, 2.0, 3.0, 4.0, 5.0], "wall_clock", noise_threshold=0.5)
    assert t.median_ms == 3.0
    assert t.p20_ms == pytest.approx(1.8) and t.p80_ms == pytest.approx(4.2)
    assert t.iqr_over_median == pytest.approx((4.0 - 2.0) / 3.0)
    assert t.noisy is True
    assert Timings([1.0, 1.01, 0.99, 1.0], "wall_clock").noisy is False


def test_cpu_timing_measures_the_callable_and_keeps_samples():
    calls = []

    def sleepy():
        calls.append(1)
        time.sleep(0.004)

    t = time_callable(sleepy, torch.device("cpu"), warmup_ms=5, rep_ms=30, min_reps=5, max_ms=500)
    assert t.timer == "wall_clock"
    assert len(t.samples_ms) >= 5 and len(calls) == len(t.samples_ms) + t.warmup_calls
    assert 3.9 < t.median_ms < 20
    assert sum(t.samples_ms) >= 30 or t.stopped_by != "stable"


def test_max_reps_bounds_repetitions():
    t = time_callable(lambda: None, torch.device("cpu"), warmup_ms=0.1, rep_ms=1e9, min_reps=3, max_reps=7,
                      max_ms=1e9)
    assert len(t.samples_ms) == 7 and t.stopped_by == "max_reps"


def test_warm_up_waits_for_each_call_like_an_asynchronous_device():
    """A GPU call returns once queued; warm-up must count completed work, not queued calls.
    Model: fn queues 20 ms of work instantly, sync waits for the queue to drain."""
    queued = []

    def launch():
        queued.append(0.020)

    def sync():
        time.sleep(sum(queued))
        queued.clear()

    calls = warm_up(launch, warmup_ms=50, sync=sync)
    assert 3 <= calls <= 5  # first call + about 50 ms / 20 ms; unsynchronised it queued thousands
    assert queued == []


class _FakeDevice:
    """A modelled GPU for the CUDA timing loop: calls queue device time and return at once, events
    read the device clock, and the device idles (its clock catches up with the host's) while
    nothing is queued. While a graph is being captured, queued work is recorded in it instead;
    a replay queues what was recorded, at no host cost."""

    def __init__(self):
        self.clock = 0.0            # ms of device time at the end of the queue
        self.capture = None         # the graph being captured
        self.replays = 0

    def now(self) -> float:
        self.clock = max(self.clock, time.perf_counter() * 1e3)
        return self.clock

    def queue(self, ms: float) -> None:
        if self.capture is not None:
            self.capture.work.append(ms)
            return
        self.clock = self.now() + ms


@pytest.fixture
def fake_cuda(monkeypatch):
    from gmabench.measure import timing
    dev = _FakeDevice()

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            self.t = dev.now()

        def elapsed_time(self, end):
            return end.t - self.t

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    class Graph:
        def __init__(self):
            self.work = []

        def replay(self):
            dev.replays += 1
            for ms in self.work:
                dev.queue(ms)

    @contextlib.contextmanager
    def capture(graph):
        dev.capture = graph
        try:
            yield
        except Exception:   # as CUDA does: a failure inside the capture fails its end too
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        finally:
            dev.capture = None

    monkeypatch.setattr(timing, "_L2Flusher", lambda device: lambda: None)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    # synchronize: the host waits until the device has done everything queued
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: time.sleep(max(0.0, dev.clock / 1e3 - time.perf_counter())))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    return dev


def test_cuda_timing_keeps_the_host_time_to_issue_each_call(fake_cuda):
    dev = fake_cuda
    cuda = torch.device("cuda")
    # GPU-bound: 3 ms of device work, issued at once.
    t = time_callable(lambda: dev.queue(3.0), cuda, warmup_ms=1, rep_ms=20, min_reps=5, max_ms=200)
    assert t.timer == "cuda_events" and t.median_ms == pytest.approx(3.0, abs=0.3)
    assert t.extra["host_ms"] < 0.5
    # Host-bound: 2 ms to issue 0.1 ms of device work; the events see the host's time.
    def slow_to_issue():
        time.sleep(0.002)
        dev.queue(0.1)
    t = time_callable(slow_to_issue, cuda, warmup_ms=1, rep_ms=20, min_reps=5, max_ms=200)
    assert t.extra["host_ms"] >= 2.0 and t.median_ms >= 2.0
    assert t.extra["host_ms"] >= 0.8 * t.median_ms
    assert dev.replays == 0


def test_graph_timing_replays_the_captured_call_and_sees_the_gpu_alone(fake_cuda):
    # The host-bound call of the test above: 2 ms to issue 0.1 + 0.05 ms of device work. Captured
    # once and replayed, each sample is the device's 0.15 ms; the host's 2 ms are paid only by
    # the eager warm-up calls and the capture.
    dev = fake_cuda
    calls = []

    def slow_to_issue():
        calls.append(1)
        time.sleep(0.002)
        dev.queue(0.1)
        dev.queue(0.05)

    t = time_callable(slow_to_issue, torch.device("cuda"), warmup_ms=1, rep_ms=5, min_reps=5,
                      max_ms=200, graph=True)
    assert t.timer == "cuda_graph"
    assert t.median_ms == pytest.approx(0.15, abs=0.05) and t.extra["host_ms"] < 0.5
    # every sample was a replay, after the eager warm-up, one capture and the replays' warm-up
    assert len(calls) + dev.replays == t.warmup_calls + len(t.samples_ms) + 1
    assert dev.replays >= len(t.samples_ms) + 1 and len(t.samples_ms) >= 5


def test_a_call_that_fails_inside_the_capture_says_what_failed_first(fake_cuda):
    from gmabench.measure.timing import GraphCaptureError
    from gmabench.sweep.cell import classify_failure
    dev = fake_cuda

    def syncs_when_captured():
        dev.queue(0.1)
        if dev.capture is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    with pytest.raises(GraphCaptureError) as err:
        time_callable(syncs_when_captured, torch.device("cuda"), warmup_ms=1, rep_ms=5, graph=True)
    assert str(err.value) == (
        "the call cannot be captured in a CUDA graph (timer 'graph'): RuntimeError: CUDA error: "
        "operation not permitted when stream is capturing; then RuntimeError: CUDA error: "
        "operation failed due to a previous error during capture")
    # a CUDA error inside: the worker is replaced before the next cell
    assert classify_failure(err.value) == "cuda_error"
    assert dev.replays == 0


def test_graph_timing_needs_cuda():
    with pytest.raises(ValueError, match="graph timing needs a CUDA device, got 'cpu'"):
        time_callable(lambda: None, torch.device("cpu"), graph=True)


@pytest.mark.gpu
def test_graph_timing_on_the_gpu_runs_the_captured_kernels_once_per_replay():
    # 40 tiny launches: eagerly their host work dominates; replayed, the GPU's time alone.
    x = torch.zeros(1, device="cuda")

    def many_launches():
        for _ in range(40):
            x.add_(1)

    eager = time_callable(many_launches, torch.device("cuda"), warmup_ms=2, rep_ms=20, min_reps=10)
    x.zero_()
    graph = time_callable(many_launches, torch.device("cuda"), warmup_ms=2, rep_ms=20, min_reps=10,
                          graph=True)
    torch.cuda.synchronize()
    assert graph.timer == "cuda_graph" and graph.median_ms < eager.median_ms
    # eager warm-up calls + replays (warm-up and samples) each added 40; the capture added none
    assert x.item() == 40 * (graph.warmup_calls + len(graph.samples_ms))


@pytest.mark.gpu
def test_a_call_that_reads_back_to_the_host_cannot_be_graph_timed():
    from gmabench.measure.timing import GraphCaptureError
    x = torch.ones(8, device="cuda")
    with pytest.raises(GraphCaptureError, match="cannot be captured in a CUDA graph"):
        time_callable(lambda: x.sum().item(), torch.device("cuda"), warmup_ms=1, rep_ms=5, graph=True)
