"""Memory of one call, per phase: peak over what was allocated before, and bytes saved for backward.

- CUDA: the caching allocator's own counters (peak allocated, reset before each phase).
- CPU: PyTorch keeps no allocator statistics there, so storages created by aten ops are tracked
  through a TorchDispatchMode and their frees detected through weak references; the peak of
  live tracked bytes is exact for tensors PyTorch hands out (kernel-internal scratch is not seen).
- Saved for backward: torch.autograd.graph.saved_tensors_hooks sees every tensor autograd keeps;
  storages are de-duplicated and the caller's own inputs excluded. Exact and device-independent,
  which is how the O(NK) memory claim is checked without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_id(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


class LiveBytesTracker(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the context (CPU or any device)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[tuple[str, int], tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self._live.items() if ref.expired()]
        for k in dead:
            self.current -= self._live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                s = t.untyped_storage()
                key = (str(t.device), s.data_ptr())
                if key not in self._live and s.nbytes() > 0:
                    self._live[key] = (StorageWeakRef(s), s.nbytes())
                    self.current += s.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@dataclass
class PhasePeak:
    peak_bytes: int
    method: str


def measure_peak(fn: Callable[[], object], device: torch.device) -> tuple[object, PhasePeak]:
    """Run fn once; return its result and the peak bytes it allocated over what existed before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return result, PhasePeak(int(peak), "cuda_allocator_peak")
    with LiveBytesTracker() as tracker:
        result = fn()
    return result, PhasePeak(int(tracker.peak), "dispatch_tracked_storages")


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> tuple[object, int]:
    """Run fn under saved_tensors_hooks; bytes of distinct storages autograd saved, inputs excluded."""
    excluded = {_storage_id(t) for t in exclude}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor):
        key = _storage_id(t)
        if key not in excluded:
            seen.setdefault(key, t.untyped_storage().nbytes())
        # Detached: an op that saves its own output (SDPA's flash and cuDNN backends, flash-attn,
        # mamba_ssm) would otherwise hold that output with its grad_fn, a reference cycle through
        # C++ that Python's collector cannot see: the graph, its memory and the leaves'
        # AccumulateGrad nodes outlived the cell's call (and broke its CUDA-graph capture, whose
        # backward found them on the default stream). Same storage, so the count is unchanged.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, int(sum(seen.values()))


def memory_totals(device: torch.device) -> dict[str, int]:
    """Allocated and reserved bytes right now (CUDA); empty on CPU where no allocator reports."""
    if device.type != "cuda":
        return {}
    return {"allocated_bytes": int(torch.cuda.memory_allocated(device)),
            "reserved_bytes": int(torch.cuda.memory_reserved(device)),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
