"""Timing statistics: quantiles from raw samples, noise flags, stopping rules."""

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
    nothing is queued."""

    def __init__(self):
        self.clock = 0.0            # ms of device time at the end of the queue

    def now(self) -> float:
        self.clock = max(self.clock, time.perf_counter() * 1e3)
        return self.clock

    def queue(self, ms: float) -> None:
        self.clock = self.now() + ms


def test_cuda_timing_keeps_the_host_time_to_issue_each_call(monkeypatch):
    from gmabench.measure import timing
    dev = _FakeDevice()

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            self.t = dev.now()

        def elapsed_time(self, end):
            return end.t - self.t

    monkeypatch.setattr(timing, "_L2Flusher", lambda device: lambda: None)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    # synchronize: the host waits until the device has done everything queued
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: time.sleep(max(0.0, dev.clock / 1e3 - time.perf_counter())))
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
