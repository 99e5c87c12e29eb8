"""Synthetic records whose latency and memory follow known power laws, plus a few failures."""

from __future__ import annotations

import pytest

from gmabench.results.schema import Record

NS = [256, 512, 1024, 2048, 4096, 8192]
KS = [16, 32, 64]


def _record(mixer: str, N: int, K: int = 16, status: str = "ok", **kw) -> dict:
    base = dict(mixer=mixer, causal=True, mode="fwd", scope="core", B=1, N=N, H=8, D=64, Dv=64,
                K=K, dtype="bfloat16", device="cuda", status=status, suite="synthetic")
    base.update(kw)
    return Record(**base).to_dict()


def timed(mixer: str, N: int, K: int, ms: float, peak: int, **kw) -> dict:
    return _record(mixer, N, K, median_ms=ms, p20_ms=0.9 * ms, p80_ms=1.1 * ms,
                       peak_bytes=peak, tokens_per_s=N / (ms * 1e-3), **kw)


def build_records() -> list[dict]:
    recs = []
    for K in KS:
        for N in NS:
            # "linear": O(N K) time, O(N K) memory.
            recs.append(timed("linear", N, K, 1e-5 * N * K, 4096 * N * K, saved_bytes=1024 * N * K))
            # "quadratic" ignores K: O(N^2) time and memory; the largest N runs out of memory.
            if N == NS[-1]:
                recs.append(_record("quadratic", N, K, status="oom", k_applies=False,
                                        median_ms=1e6, reason="CUDA out of memory (tried 2 GiB)"))
            else:
                recs.append(timed("quadratic", N, K, 1e-7 * N * N, 16 * N * N, k_applies=False))
    # Overhead-dominated at small N: the large-N slope should be steeper than the overall one.
    for N in NS:
        recs.append(timed("overhead", N, 16, 0.5 + 1e-4 * N, 1000 * N))
    recs.append(_record("overhead", 16384, 16, status="timeout", reason="cell exceeded 60 s"))
    recs.append(_record("tiny", 1024, 16, median_ms=1.0, p20_ms=0.9, p80_ms=1.1))
    recs.append(_record("tiny", 2048, 16, median_ms=2.0, p20_ms=1.8, p80_ms=2.2))
    recs.append(_record("tiny", 4096, 16, status="skipped", reason="D=64 unsupported"))
    return recs


@pytest.fixture
def records() -> list[dict]:
    return build_records()


@pytest.fixture
def make_record():
    """Build one record dict: make_record(mixer, N, K=16, status="ok", **fields)."""
    return _record
