"""The record: one measured (or refused) benchmark cell, versioned.

Records are plain JSON objects on disk (one per line in results.jsonl). This module is the
single place that names their fields, so the runner writes and the report reads the same thing.
Units are in the names; raw units are stored and converted only when rendering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

# Every status a record can carry. Failure is data: it is recorded, never dropped.
STATUSES = ("ok", "skipped", "oom", "error", "cuda_error", "crashed", "timeout")


@dataclass
class Record:
    # --- identity of the cell ---
    mixer: str
    causal: bool
    mode: str                 # "fwd" or "fwd_bwd"
    scope: str                # "core" (q, k, v given) or "layer" (with projections)
    B: int
    N: int
    H: int
    D: int
    Dv: int
    K: int
    dtype: str                # "float32", "bfloat16", "float16"
    device: str               # "cuda" or "cpu"
    # --- outcome ---
    status: str
    reason: str = ""
    device_name: str = ""     # e.g. "NVIDIA H200"; part of the resume key
    impl: str = ""            # implementation the mixer ran (e.g. "triton", "reference")
    backend: str = ""         # kernel/backend that actually ran (e.g. SDPA's "flash")
    k_applies: bool = True    # False when K does not change what the mixer computes
    # --- timing (milliseconds, per call) ---
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    iqr_over_median: float | None = None
    noisy: bool | None = None
    samples_ms: list[float] = field(default_factory=list)
    timer: str = ""           # "cuda_events", "cuda_graph" (suite timer "graph") or "wall_clock"
    host_ms: float | None = None  # CUDA: median host time to issue one call; near median_ms, the
    #                               GPU waited for the host (launch overhead, not kernel time)
    # --- memory (bytes) ---
    peak_bytes: int | None = None        # peak of the call over what was allocated before it
    fwd_peak_bytes: int | None = None
    bwd_peak_bytes: int | None = None
    saved_bytes: int | None = None       # bytes autograd saved for backward (exact)
    memory_method: str = ""              # how peak_bytes was measured
    allocated_bytes: int | None = None   # allocator state after the cell's calls (CUDA)
    reserved_bytes: int | None = None
    # --- derived ---
    tokens_per_s: float | None = None
    flops: float | None = None           # analytic FLOPs of the timed call
    min_bytes: float | None = None       # analytic fewest bytes the timed call must move
    rel_error: float | None = None       # ||out - ref64|| / ||ref64|| on a sample of inputs
    rel_error_tokens: int | None = None  # sequence length of that sample
    grad_rel_error: float | None = None  # fwd_bwd: the largest of grad_rel_errors
    grad_rel_errors: dict[str, float] = field(default_factory=dict)  # fwd_bwd, per differentiated
    #                                      input: like rel_error, for one random output gradient
    # --- provenance ---
    suite: str = ""
    seed: int = 0
    gmabench_version: str = ""
    git_commit: str = ""
    timestamp: str = ""
    wall_s: float | None = None          # wall-clock seconds the whole cell took
    clocks: dict[str, Any] = field(default_factory=dict)  # NVML readings around the cell
    worker_pid: int | None = None
    gpu_index: int | None = None         # physical (NVML) index of the GPU that measured the cell
    traceback: str = ""                  # last frames of a failing cell's exception
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Fields that identify a cell (used for --resume and for joining runs).
KEY_FIELDS = ("mixer", "causal", "mode", "scope", "B", "N", "H", "D", "Dv", "K", "dtype", "device")


def cell_key(d: dict[str, Any]) -> tuple:
    return tuple(d[k] for k in KEY_FIELDS)
