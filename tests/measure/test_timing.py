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
