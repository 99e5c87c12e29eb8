"""Kernel launches with less host work than `kernel[grid](...)`.

Triton's launch path (`JITFunction.run`) binds the arguments, asks the C++ specialiser about each
one, builds a string cache key, checks the kernel's globals and makes launch metadata on every
call: about 39 us per launch of an empty kernel with the walk's arguments on the H200's host
(results/2026-11-29-h200-overhead-tests), while a small-N GMA call's kernels run for 10-30 us. As
FlagGems' `libentry` does, this module keeps the compiled kernel under a key of what Triton
specialises on (each tensor's dtype and 16-byte alignment; each int's i32/i64/u64 range, whether it
is 1 (a compile-time constant) and whether it is a multiple of 16; the constexprs, warps, stages
and device) and calls its launcher directly. The first call with a new key, any call while a
launch hook is set (profilers), the interpreter and GMA_TRITON_FAST_LAUNCH=0 take Triton's own path.
"""

from __future__ import annotations

import os
import warnings

import torch
import triton

from .common import INTERPRET

try:   # Triton >= 3.4
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older Triton: always the standard path
    _knobs = None

ENABLED = (not INTERPRET and _knobs is not None
           and os.environ.get("GMA_TRITON_FAST_LAUNCH", "1") != "0")
_CACHE: dict[tuple, tuple] = {}
_EPOCH = object()   # replaced by clear(): memo entries (launch's `memo`) of an older epoch are stale


def arg_key(a) -> tuple:
    """What Triton's specialiser distinguishes about one non-constexpr argument (at least as
    fine: two arguments with the same key get the same compiled kernel)."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("u1",)
    if isinstance(a, int):
        width = 32 if -2 ** 31 <= a < 2 ** 31 else 64 if -2 ** 63 <= a < 2 ** 63 else 65
        return ("i", width, a == 1, a % 16 == 0)
    if isinstance(a, float):
        return ("f",)
    return ("v", type(a), a)    # anything else by value


def _hook_set(hook) -> bool:
    """Triton 3.6+ keeps launch hooks as a chain (empty when none is set), older ones as None."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _hooks_set() -> bool:
    rt = _knobs.runtime
    return _hook_set(rt.launch_enter_hook) or _hook_set(rt.launch_exit_hook)


class KernelTooLarge(RuntimeError):
    """A fused kernel needs more of a GPU resource (shared memory) than the GPU has, even with
    one pipeline stage: the shape is too wide for these kernels on this GPU."""


def _standard(kernel, grid, args, consts, warps, stages, maxnreg=0, pdl=False):
    """Triton's own launch; a plan that needs more shared memory than the GPU has is retried
    with one pipeline stage (the returned kernel is the one that ran). maxnreg: a cap on
    registers per thread (0: the compiler's choice). pdl: a programmatic dependent launch (the
    kernel may start before the one before it has finished; common._gdc)."""
    OutOfResources = triton.runtime.errors.OutOfResources
    opts = {"maxnreg": maxnreg} if maxnreg else {}
    if pdl:
        opts["launch_pdl"] = True
    try:
        try:
            return kernel[grid](*args, **consts, num_warps=warps, num_stages=stages, **opts)
        except OutOfResources:
            if stages == 1:
                raise
            return kernel[grid](*args, **consts, num_warps=warps, num_stages=1, **opts)
    except OutOfResources as exc:
        shape = ", ".join(f"{k}={consts[k]}" for k in ("D", "DV", "KP", "BLOCK") if k in consts)
        raise KernelTooLarge(
            f"GMA kernel {getattr(kernel, '__name__', kernel)} ({shape}, {warps} warps, 1 stage) needs "
            f"{exc.required} of {exc.name}, this GPU has {exc.limit}: the shape is too wide for the "
            f"fused kernels here; gma_attention(impl='chunked') runs it in PyTorch") from exc


def _raw_stream(dev: int) -> int:
    return torch._C._cuda_getCurrentRawStream(dev)


def launch(kernel, grid, args, consts, warps, stages, maxnreg=0, memo=None, site=None, pdl=False):
    """kernel[grid](*args, **consts, num_warps=warps, num_stages=stages[, maxnreg=maxnreg]
    [, launch_pdl=True]), from the cache when this key was launched before. `args` are the
    kernel's leading parameters in order, `consts` its remaining ones (the constexprs) by name.
    `memo`, `site`: a caller that knows this launch's key cannot change between its calls
    (call.py: same kernel, constexprs and argument specialisation) keeps the compiled kernel in
    memo[site] and skips building the key. `pdl`: a programmatic dependent launch (_standard)."""
    if not ENABLED:
        _standard(kernel, grid, args, consts, warps, stages, maxnreg, pdl)
        return
    if memo is not None:
        kept = memo.get(site)
        if kept is not None and kept[0] is _EPOCH and not _hooks_set():
            _run(kept[1], kernel, grid, args, consts, warps, stages, maxnreg, pdl)
            return
    dev = torch.cuda.current_device()
    key = (id(kernel), dev, warps, stages, maxnreg, pdl, tuple(consts.items()),
           tuple(map(arg_key, args)))
    hit = _CACHE.get(key)
    if hit is None or _hooks_set():
        compiled = _standard(kernel, grid, args, consts, warps, stages, maxnreg, pdl)
        if hasattr(compiled, "result"):     # an asynchronous compile's future
            compiled = compiled.result()
        tail = tuple(consts[name] for name in kernel.arg_names[len(args):])
        hit = _CACHE[key] = (compiled, compiled.function, compiled.packed_metadata, tail, dev)
    else:
        _run(hit, kernel, grid, args, consts, warps, stages, maxnreg, pdl)
    if memo is not None and ENABLED:
        memo[site] = (_EPOCH, hit)


def _run(hit, kernel, grid, args, consts, warps, stages, maxnreg, pdl):
    compiled, function, packed, tail, dev = hit
    stream = _raw_stream(dev)
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    try:
        compiled.run(grid[0], g1, g2, stream, function, packed, None, None, None, *args, *tail)
    except (TypeError, AttributeError) as exc:   # a Triton whose launcher takes other arguments
        _disable(exc)
        _standard(kernel, grid, args, consts, warps, stages, maxnreg, pdl)


def _disable(exc: Exception) -> None:
    global ENABLED
    ENABLED = False
    warnings.warn(f"gmabench: fast Triton launches disabled ({type(exc).__name__}: {exc}); "
                  "using Triton's standard launch path", RuntimeWarning, stacklevel=3)


def clear() -> None:
    """Forget every compiled kernel: the next launch of each key (memos included) takes Triton's path."""
    global _EPOCH
    _CACHE.clear()
    _EPOCH = object()


