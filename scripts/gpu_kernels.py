"""On a GPU: check the fused Triton GMA kernels against the float64 SPEC formula, measure the
device's ceilings, time the kernels against gma_reference and torch SDPA, and print a table.

    PYTHONUNBUFFERED=1 python3 scripts/gpu_kernels.py --out $OUT [--budget 330] [--sections ...]

Sections (in order): ceil, check, time, overhead, hostparts (host time of a training call at
N=2048 split into its parts), profile, bwdsweep, sweep, extra; and ncu (each variant
called once at N=131072, for `ncu` to profile: see gpu_session.sh's job profile); devtimes (device
and wall time per call, and per kernel, and the call replayed from a CUDA graph, at each --ns,
with GMABENCH_SRC naming the source tree to time); peerdevtimes (device time per call of gma,
cuDNN and flash SDPA at each --ns);
stagesweep (the same under 2, 3 and 4 pipeline stages); plansweep (the same under each plan
of --plans, a JSON list of TUNING knobs, for the --modes given). A time budget
(seconds) stops new work once spent; whatever was measured is still written to
OUT/gpu_kernels.json and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch

# GMABENCH_SRC: import gmabench from another source tree (an untracked copy carried to the GPU),
# so that one device call can time two versions of the kernels side by side (job devtimes@SRC).
sys.path.insert(0, os.environ.get("GMABENCH_SRC")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from gmabench.gma.chunked import gma_chunked  # noqa: E402
from gmabench.gma.reference import gma_reference, gma_spec_float64  # noqa: E402
from gmabench.gma.triton import TUNING, gma_triton  # noqa: E402
from gmabench.gma.triton import launch as launch_mod  # noqa: E402

DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
T0 = time.time()
R: dict = {"env": {}, "ceilings": {}, "checks": [], "timings": [], "sweep": [], "overhead": [],
           "profile": [], "notes": []}


def elapsed():
    return time.time() - T0


def inputs(B, N, H, D, Dv, K, dtype, seed=0, grad=True):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, s=0.5):
        return torch.randn(*shape, generator=g, device="cuda") * s

    ts = [rnd(B, N, H, D).to(dtype), rnd(B, N, H, D).to(dtype), rnd(B, N, H, Dv).to(dtype),
          rnd(H, K, D), rnd(H, K, D, s=0.1), rnd(H, K)]
    return [t.requires_grad_(grad) for t in ts]


def rel(x, ref):
    """||x - ref|| / ||ref||; where ref is exactly zero (K=1: every routing gradient vanishes,
    the softmax over one component is constant) the absolute error ||x||, as the CPU tests do."""
    err = (x.double() - ref).norm()
    den = ref.norm()
    return (err / den if den > 0 else err).item()


def fwd_grads(fn, ins, do, **kw):
    o = fn(*ins, **kw)
    return [o.detach()] + [t.detach() for t in torch.autograd.grad(o, ins, do)]


NAMES = ("o", "q", "k", "v", "mu", "log_sigma", "mix_logits")


def floor(dtype, name):
    if dtype == torch.float32:
        return 1e-5
    return 5e-5 if name in ("mu", "log_sigma", "mix_logits") else 1e-4


def check(dtype_name, causal, N, B=1, H=4, D=64, Dv=64, K=64, precision=None, seed=1):
    dtype = DT[dtype_name]
    ins = inputs(B, N, H, D, Dv, K, dtype, seed)
    do = (torch.randn(B, N, H, Dv, device="cuda") * 0.5).to(dtype)
    kw = dict(causal=causal)
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    ref = fwd_grads(gma_spec_float64, ins64, do.double(), **kw)
    base = fwd_grads(gma_reference, ins, do, **kw)
    tri = fwd_grads(lambda *a, **k: gma_triton(*a, precision=precision, **k), ins, do, **kw)
    row = dict(dtype=dtype_name, causal=causal, N=N, B=B, H=H, D=D, Dv=Dv, K=K,
               precision=precision or "default", errors={}, ok=True)
    for name, x, r, b in zip(NAMES, tri, ref, base):
        e, eb = rel(x, r), rel(b, r)
        bound = 2 * eb + floor(dtype, name)
        good = math.isfinite(e) and e <= bound
        row["errors"][name] = dict(triton=e, reference=eb, bound=bound, ok=good)
        row["ok"] &= good
    R["checks"].append(row)
    worst = max(row["errors"].items(), key=lambda kv: kv[1]["triton"] / kv[1]["bound"])
    eo = row["errors"]["o"]
    print(f"check {dtype_name:4s} causal={causal!s:5s} N={N} K={K} D={D} Dv={Dv} "
          f"prec={row['precision']}: {'PASS' if row['ok'] else 'FAIL'}  o={eo['triton']:.2e}"
          f" (ref {eo['reference']:.2e}); worst {worst[0]} "
          f"{worst[1]['triton']:.2e} / bound {worst[1]['bound']:.2e}  [{elapsed():.0f}s]")
    del ins, ins64, ref, base, tri
    torch.cuda.empty_cache()


def check_inference(dtype_name, causal, N, B=1, H=4, D=64, Dv=64, K=64, seed=3):
    """Forward only (no gradient): the default precision of an inference call (bf16: fp16
    products) against the float64 SPEC, bound 2x gma_reference + floor."""
    dtype = DT[dtype_name]
    ins = inputs(B, N, H, D, Dv, K, dtype, seed, grad=False)
    with torch.no_grad():
        ref = gma_spec_float64(*[t.double() for t in ins], causal=causal)
        e, eb = rel(gma_triton(*ins, causal=causal), ref), rel(gma_reference(*ins, causal=causal), ref)
    bound = 2 * eb + floor(dtype, "o")
    row = dict(dtype=dtype_name, causal=causal, N=N, B=B, H=H, D=D, Dv=Dv, K=K, precision="inference",
               errors={"o": dict(triton=e, reference=eb, bound=bound, ok=e <= bound)}, ok=e <= bound)
    R["checks"].append(row)
    print(f"check {dtype_name:4s} causal={causal!s:5s} N={N} inference: {'PASS' if row['ok'] else 'FAIL'}"
          f"  o={e:.2e} (ref {eb:.2e}, bound {bound:.2e})  [{elapsed():.0f}s]")
    del ins, ref
    torch.cuda.empty_cache()


def sdpa_fn(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def fn(q, k, v, mu, ls, mix, causal):
        with sdpa_kernel([be]):
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
        return o.transpose(1, 2)
    return fn


IMPLS = {
    "triton": lambda *a, causal: gma_triton(*a, causal=causal),
    "triton_fast": lambda *a, causal: gma_triton(*a, causal=causal, precision="fast"),
    "triton_fp16": lambda *a, causal: gma_triton(*a, causal=causal, precision="fp16"),
    "triton_split": lambda *a, causal: gma_triton(*a, causal=causal, precision="split"),
    "reference": lambda *a, causal: gma_reference(*a, causal=causal),
    "chunked": lambda *a, causal: gma_chunked(*a, causal=causal),
    "sdpa_cudnn": None,  # filled lazily
    "sdpa_flash": None,
}


def make_call(impl, N, causal, mode, B=1, H=16, D=64, Dv=64, K=64, dtype="bf16"):
    """One call of `impl` (a key of IMPLS) on fresh inputs: its forward, or forward and backward."""
    fn = IMPLS[impl] or sdpa_fn(impl.split("_")[1])
    ins = inputs(B, N, H, D, Dv, K, DT[dtype], seed=2, grad=(mode == "fwd_bwd"))
    if impl.startswith("sdpa"):
        ins = ins[:3]
        ins_call = ins + [None, None, None]
    else:
        ins_call = ins
    do = (torch.randn(B, N, H, Dv, device="cuda") * 0.5).to(DT[dtype])
    if mode == "fwd":
        return lambda: fn(*ins_call, causal=causal)
    return lambda: torch.autograd.grad(fn(*ins_call, causal=causal), ins, do)


def _peak_bytes(f):
    """Bytes one call of f allocates at its peak beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    res = f()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del res
    return peak


def bench(impl, N, causal, mode, B=1, H=16, D=64, Dv=64, K=64, dtype="bf16", record=True):
    f = make_call(impl, N, causal, mode, B, H, D, Dv, K, dtype)
    f()
    peak = _peak_bytes(f)
    ms = do_bench(f, warmup=25, rep=100, return_mode="median")
    out_bytes = B * N * H * Dv * torch.finfo(DT[dtype]).bits // 8
    row = dict(impl=impl, N=N, causal=causal, mode=mode, B=B, H=H, D=D, Dv=Dv, K=K, dtype=dtype,
               median_ms=ms, peak_bytes=peak, out_bytes=out_bytes)
    if record:
        R["timings"].append(row)
    print(f"time {impl:12s} {'causal' if causal else 'bidir':6s} {mode:7s} N={N:6d}: "
          f"{ms:9.4f} ms  peak {peak / 2**20:8.1f} MiB (out {out_bytes / 2**20:.0f} MiB)"
          f"  [{elapsed():.0f}s]")
    del f
    torch.cuda.empty_cache()
    return ms


@triton.jit
def _empty_kernel(a, b, c, d, e, f, g, h, N, H, K, inv_tau, eps, bps, D: tl.constexpr, DV: tl.constexpr,
                  KP: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                  INTERP: tl.constexpr):
    pass


def _host_profile(f, calls=100):
    """cProfile of `calls` back-to-back calls: where the host's time goes, by function."""
    import cProfile
    import io
    import pstats
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        f()
    pr.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(22)
    return buf.getvalue()


def overhead():
    """Host cost of one call at a tiny N, split: wall time of back-to-back calls (the larger of
    host and GPU time), host time to issue one call, GPU time of one call (CUDA events after a
    sync), a cProfile of the host path and a profiler table of the kernels' device times."""
    from torch.profiler import ProfilerActivity, profile
    fast_default = launch_mod.ENABLED
    for causal in (False, True):
        for mode in ("fwd", "fwd_bwd"):
            ins = inputs(1, 256, 16, 64, 64, 64, torch.bfloat16, grad=(mode == "fwd_bwd"))
            do = torch.randn(1, 256, 16, 64, device="cuda").to(torch.bfloat16)
            if mode == "fwd":
                f = lambda: gma_triton(*ins, causal=causal)  # noqa: E731
            else:
                f = lambda: torch.autograd.grad(gma_triton(*ins, causal=causal), ins, do)  # noqa: E731
            walls, issues, spans = {}, {}, {}
            for fast in (False, True):     # Triton's launch path, then gmabench's (launch.py)
                launch_mod.ENABLED = fast
                for _ in range(20):
                    f()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(200):
                    f()
                torch.cuda.synchronize()
                walls[fast] = (time.perf_counter() - t) / 200 * 1e6
                issue, gpu = [], []
                ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                for _ in range(50):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    ev0.record()
                    f()
                    ev1.record()
                    issue.append((time.perf_counter() - t) * 1e6)
                    torch.cuda.synchronize()
                    gpu.append(ev0.elapsed_time(ev1) * 1e3)
                issues[fast], spans[fast] = sorted(issue)[25], sorted(gpu)[25]
            launch_mod.ENABLED = fast_default
            wall, issue_us, gpu_us = walls[True], issues[True], spans[True]
            tag = f"{'causal' if causal else 'bidir'} {mode}"
            row = dict(causal=causal, mode=mode, N=256, wall_us_per_call=wall, issue_us=issue_us,
                       event_span_us=gpu_us, cprofile=_host_profile(f),
                       triton_launch=dict(wall_us_per_call=walls[False], issue_us=issues[False],
                                          event_span_us=spans[False]))
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    f()
                torch.cuda.synchronize()
            row["kernels"] = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12,
                                                       max_name_column_width=40)
            R["overhead"].append(row)
            print(f"overhead {tag}: {wall:.1f} us per call back to back, {issue_us:.1f} us to issue, "
                  f"{gpu_us:.1f} us between events around one call (N=256); with Triton's own "
                  f"launches {walls[False]:.1f} / {issues[False]:.1f} / {spans[False]:.1f} us")
            print("\n".join(row["cprofile"].splitlines()[:24]))
    # One launch of an empty kernel with as many arguments as the causal walk: Triton's own
    # per-launch host cost, to split the numbers above between launches and everything else.
    x = torch.empty(16, device="cuda")
    args = [x] * 8 + [256, 16, 64, 1.0, 1e-6, 4]
    consts = dict(D=64, DV=64, KP=64, BLOCK=64, PREC=3, X_EXACT=True, INTERP=False)
    for _ in range(20):
        _empty_kernel[(4, 16)](*args, **consts, num_warps=4, num_stages=2)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(1000):
        _empty_kernel[(4, 16)](*args, **consts, num_warps=4, num_stages=2)
    torch.cuda.synchronize()
    us = (time.perf_counter() - t) / 1000 * 1e6
    R["overhead"].append(dict(what="empty Triton kernel, 14 arguments + 7 constexprs", wall_us_per_call=us))
    print(f"overhead: one launch of an empty Triton kernel with the walk's arguments: {us:.1f} us")


class _Floor(torch.autograd.Function):
    """An autograd Function shaped like GMA's (six inputs, seven saved tensors, six gradients)
    that launches nothing: what the autograd engine and Python cost a training call anyway."""

    @staticmethod
    def forward(ctx, q, k, v, mu, ls, mix):
        ctx.save_for_backward(q, k, v, mu, ls, mix, mix)
        return torch.empty_like(v)

    @staticmethod
    def backward(ctx, do):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors[:6])


def _issue_us(parts, rounds=200):
    """Median host time to issue each of `parts` (name -> callable), the GPU idle before each
    call (no queue to wait on). The parts take turns, one call each per round, so that a host
    whose speed drifts (the H200's did by 2x within a minute) slows every part alike."""
    for f in parts.values():
        for _ in range(10):
            f()
    times = {name: [] for name in parts}
    for _ in range(rounds):
        for name, f in parts.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return {name: sorted(v)[rounds // 2] for name, v in times.items()}


def host_parts(N=2048):
    """Where the host time of a training call goes at a host-bound N (B=1, H=16, D=Dv=K=64,
    bf16): the whole call against its forward, its backward's launches without the autograd
    engine, the engine around a Function that launches nothing, and cuDNN SDPA's call."""
    from gmabench.gma.triton import autograd as ag
    from gmabench.gma.triton.call import prepare
    from gmabench.gma.triton.common import PRECISIONS
    for causal in (False, True):
        ins = inputs(1, N, 16, 64, 64, 64, torch.bfloat16, grad=True)
        do = torch.randn(1, N, 16, 64, device="cuda").to(torch.bfloat16)
        call, ready = prepare(tuple(ins), causal, 1.0, 1e-6, PRECISIONS["fp16"], True)
        _, saved = ag._forward(call, *ready)
        _, _, H, D, _, K = call.dims
        pg = torch.zeros(H * call.plan.KP * (2 * D + 1), device="cuda")   # as autograd._backward
        pgrads = [torch.empty_like(t) for t in ins[3:]]
        sdpa = make_call("sdpa_cudnn", N, causal, "fwd_bwd")
        parts = {
            "gma fwd_bwd call": lambda: torch.autograd.grad(gma_triton(*ins, causal=causal), ins, do),
            "gma training forward": lambda: gma_triton(*ins, causal=causal),
            "gma training forward, launches only": lambda: ag._forward(call, *ready),
            "gma prepare": lambda: prepare(tuple(ins), causal, 1.0, 1e-6, PRECISIONS["fp16"], True),
            "one launch (parameter chain)": lambda: ag._launch(
                ag._param_grad_kernel, (H,), (*ins[3:], pg, *pgrads, K, call.inv_tau), call.param, 4, 3,
                memo=call.memo, site="param"),
            "gma backward launches, no engine": lambda: ag._backward(call, saved, do),
            "Function launching nothing, fwd_bwd": lambda: torch.autograd.grad(_Floor.apply(*ins), ins, do),
            "empty_like x 6": lambda: [torch.empty_like(t) for t in ins],
            "sdpa-cudnn fwd_bwd call": sdpa,
        }
        row = {"N": N, "causal": causal, **_issue_us(parts)}
        R["overhead"].append(dict(what="host_parts_us", **row))
        print(f"host parts, {'causal' if causal else 'bidir'} N={N}: " +
              ", ".join(f"{k} {v:.1f} us" for k, v in row.items() if k not in ("N", "causal")))


VARIANTS = [(causal, mode) for causal in (False, True) for mode in ("fwd", "fwd_bwd")]


def _event_us(e) -> float:
    """Self device time of a profiler event (the attribute's name changed across PyTorch versions)."""
    us = getattr(e, "self_device_time_total", None)
    return e.self_cuda_time_total if us is None else us


def profile_kernels(N=131072, calls=5):
    """Device time per kernel per call of each variant at the target shape (torch profiler):
    which kernel of a call the time goes to."""
    from torch.profiler import ProfilerActivity, profile
    for causal, mode in VARIANTS:
        f = make_call("triton", N, causal, mode)
        f()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                f()
            torch.cuda.synchronize()
        tag = f"{'causal' if causal else 'bidir'} {mode}"
        total = 0.0
        for e in prof.key_averages():
            us = _event_us(e)
            if us <= 0:
                continue
            total += us / calls
            R["profile"].append(dict(variant=tag, N=N, kernel=e.key, us_per_call=us / calls,
                                     launches_per_call=e.count / calls))
        for row in sorted((r for r in R["profile"] if r["variant"] == tag and r["N"] == N),
                          key=lambda r: -r["us_per_call"]):
            print(f"profile {tag:15s} N={N}: {row['us_per_call']:9.1f} us  x{row['launches_per_call']:.0f}  "
                  f"{row['kernel'][:70]}")
        print(f"profile {tag:15s} N={N}: {total:9.1f} us of kernels per call  [{elapsed():.0f}s]")
        del f
        torch.cuda.empty_cache()


# Training plans to time at N=131072: (block, block_bwd, warps_fwd, warps_bwd, stages); the ncu
# run of 2026-11-29 showed the backward kernels spilling (73-88 M local-memory requests per call)
# at one block per SM, and the split training forward 2-3x slower than the fp16 one.
BWD_PLANS = {   # second round (the first, same session: (64, 16, 4, 4, 2) and (64, 32, 4, 4, 2) best)
    "causal": [(64, 16, 4, 4, 2), (64, 16, 4, 2, 2), (64, 16, 4, 4, 1), (64, 16, 4, 4, 3),
               (64, 32, 4, 4, 2), (128, 16, 4, 4, 2), (32, 16, 4, 4, 2)],
    "bidir": [(64, 32, 4, 4, 2), (64, 16, 4, 4, 2), (64, 16, 4, 2, 2), (64, 32, 4, 2, 2),
              (64, 32, 4, 4, 1), (64, 32, 4, 4, 3), (128, 32, 4, 4, 2)],
}
BWD_WAVES = (2, 8)   # programs per SM for the best plan of each variant (default 4)


def bwd_sweep(N=131072):
    """fwd_bwd at the target shape: the current plan in split and in fp16 (output pass) precision,
    then fp16 with the training plans above."""
    for causal in (True, False):
        side = "causal" if causal else "bidir"
        rows = []
        for impl in ("triton_split", "triton_fp16"):
            TUNING.update({k: None for k in TUNING})
            rows.append(dict(side=side, impl=impl, plan="table", ms=bench(impl, N, causal, "fwd_bwd", record=False)))
            print("bwdsweep", rows[-1], f"[{elapsed():.0f}s]")
        for b, bb, wf, wb, st in BWD_PLANS[side]:
            TUNING.update({k: None for k in TUNING})
            TUNING.update(block=b, block_bwd=bb, warps_fwd=wf, warps_bwd=wb, stages=st)
            try:
                ms = bench("triton_fp16", N, causal, "fwd_bwd", record=False)
            except Exception as exc:  # noqa: BLE001 - a plan that does not compile is data
                ms = None
                print(f"bwdsweep {side} {b, bb, wf, wb, st}: {type(exc).__name__}: {str(exc)[:300]}")
            rows.append(dict(side=side, impl="triton_fp16", plan=[b, bb, wf, wb, st], ms=ms))
            print("bwdsweep", rows[-1], f"[{elapsed():.0f}s]")
        timed = [r for r in rows if r["ms"] and r["plan"] != "table"]
        if timed:
            b, bb, wf, wb, st = min(timed, key=lambda r: r["ms"])["plan"]
            for waves in BWD_WAVES:
                TUNING.update(block=b, block_bwd=bb, warps_fwd=wf, warps_bwd=wb, stages=st, waves=waves)
                ms = bench("triton_fp16", N, causal, "fwd_bwd", record=False)
                rows.append(dict(side=side, impl="triton_fp16", plan=[b, bb, wf, wb, st], waves=waves, ms=ms))
                print("bwdsweep", rows[-1], f"[{elapsed():.0f}s]")
        R.setdefault("bwd_sweep", []).extend(rows)
    TUNING.update({k: None for k in TUNING})


# Forward plans with a register cap (plan key regs_fwd; 0 = none): (block, warps_fwd, regs_fwd,
# waves), the current table's plan first. ptxas (sm_90a, here): at 4 warps every forward kernel
# takes 255 registers (two programs per SM, theoretical occupancy 12.5%); a cap of 168 allows
# three, 128 four, at 270-2100 B of spills per thread (docs/kernels.md).
REG_PLANS = {
    "bidir": [(128, 4, 0, 4), (128, 4, 168, 4), (128, 4, 128, 4), (64, 4, 0, 4), (64, 4, 168, 4),
              (64, 4, 128, 4), (128, 8, 128, 4), (128, 4, 128, 8), (64, 4, 128, 8)],
    "causal": [(64, 4, 0, 4), (64, 4, 168, 4), (64, 4, 128, 4), (32, 4, 0, 4), (32, 4, 168, 4),
               (32, 4, 128, 4), (64, 8, 128, 4), (64, 4, 128, 8), (32, 4, 128, 8)],
}


def _compiled_stats():
    """Registers, spills and shared memory of each kernel the fast launch path compiled since
    the last launch_mod.clear()."""
    rows = []
    for key, (compiled, *_rest) in launch_mod._CACHE.items():
        rows.append(dict(kernel=compiled.name, warps=key[2], stages=key[3], maxnreg=key[4],
                         regs=getattr(compiled, "n_regs", None), spills=getattr(compiled, "n_spills", None),
                         shared=compiled.metadata.shared))
    return rows


def reg_sweep(N=131072):
    """Inference forward at N=131072 under register caps (REG_PLANS), then the training plan
    with a cap on its forward kernels; each row keeps the compiled kernels' registers and spills."""
    for causal in (False, True):
        side = "causal" if causal else "bidir"
        plans = [dict(block=b, warps_fwd=w, regs_fwd=r, waves=wv) for b, w, r, wv in REG_PLANS[side]]
        plans = [("fwd", pl) for pl in plans] + [("fwd_bwd", dict(regs_fwd=r)) for r in (0, 168, 128)]
        for mode, knobs in plans:
            TUNING.update({k: None for k in TUNING})
            TUNING.update(knobs)
            launch_mod.clear()
            try:
                ms = bench("triton", N, causal, mode, record=False)
            except Exception as exc:  # noqa: BLE001 - a plan that does not compile is data
                ms = None
                print(f"regsweep {side} {mode} {knobs}: {type(exc).__name__}: {str(exc)[:300]}")
            row = dict(side=side, mode=mode, N=N, ms=ms, compiled=_compiled_stats(), **knobs)
            R.setdefault("reg_sweep", []).append(row)
            kern = " ".join(f"{c['kernel'][1:8]}:{c['regs']}r/{c['spills']}s" for c in row["compiled"])
            print(f"regsweep {side} {mode} {knobs}: {ms} ms  {kern}  [{elapsed():.0f}s]")
    TUNING.update({k: None for k in TUNING})
    launch_mod.clear()


def _device_us(f, calls=20):
    """Device time of one call of f (sum of its kernels, torch profiler), after a warm-up call,
    and the same per kernel name."""
    from torch.profiler import ProfilerActivity, profile
    f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            f()
        torch.cuda.synchronize()
    per = {e.key: max(_event_us(e), 0.0) / calls for e in prof.key_averages()}
    return sum(per.values()), {k: round(v, 2) for k, v in per.items() if v > 0}


def _graph_us(f):
    """Median time of one call of f replayed from a CUDA graph (gmabench's `--timer graph`): the
    GPU's own time for the call with its launches' gaps, which the sum of kernel times leaves
    out and a programmatic dependent launch shortens; None where capture fails."""
    from gmabench.measure.timing import time_callable
    try:
        timed = time_callable(f, torch.device("cuda"), warmup_ms=10, rep_ms=50, graph=True)
        return timed.median_ms * 1e3
    except Exception as exc:   # noqa: BLE001 - a failed capture is a result, not an abort
        print(f"graph replay: {type(exc).__name__}: {str(exc)[:200]}")
        return None


def _call_plan(N, H, K, D, causal, mode, dtype):
    """The plan the timed call got (B=1, D = Dv): with its dtype's product precision, as
    gma_triton picks it, so that float32 and float16 rows report their own segments."""
    from gmabench.gma.triton.autograd import precision_name
    from gmabench.gma.triton.call import call_plan
    from gmabench.gma.triton.common import PRECISIONS
    prec = PRECISIONS[precision_name(DT[dtype], None, (K, D, D))]
    return call_plan(1, N, H, D, D, K, causal, torch.device("cuda"), mode == "fwd_bwd", DT[dtype], prec)


def _plan_times(tag, plans, ns, calls, modes=("fwd", "fwd_bwd"), dtype="bf16", K=64, D=64,
                heads=(16,), causals=(False, True)):
    """Device time per call (profiler, also per kernel) and wall time (do_bench) of every variant
    (of the given modes) at each N and head count H under each plan (a dict of TUNING knobs; {}:
    the table's), with inputs of `dtype`, K components and head size D = Dv (B=1), of the variants
    whose causal flag is in `causals`; rows under R[tag]."""
    for n, H in [(n, H) for n in ns for H in heads]:
        for causal, mode in [vm for vm in VARIANTS if vm[1] in modes and vm[0] in causals]:
            for knobs in plans:
                TUNING.update({k: None for k in TUNING})
                TUNING.update(knobs)
                f = make_call("triton", n, causal, mode, H=H, D=D, Dv=D, K=K, dtype=dtype)
                dev_us, per_kernel = _device_us(f, calls)
                peak_mib = _peak_bytes(f) / 2**20
                wall = do_bench(f, warmup=25, rep=100, return_mode="median")
                graph_us = _graph_us(f)
                pl = _call_plan(n, H, K, D, causal, mode, dtype)
                R.setdefault(tag, []).append({"N": n, "H": H, "causal": causal, "mode": mode, "dtype": dtype, "K": K, "D": D,
                                              **knobs,
                                              "device_us": dev_us, "kernels_us": per_kernel,
                                              "wall_ms": wall, "graph_us": graph_us,
                                              "peak_mib": peak_mib, "P": pl.P,
                                              "bps": pl.bps})
                print(f"{tag} {n} H={H} K={K} D={D} {dtype} {'causal' if causal else 'bidir'} {mode} {knobs or 'table'}: device "
                      f"{dev_us:.1f} us, wall {wall * 1e3:.1f} us, replayed {graph_us or math.nan:.1f} us, "
                      f"peak {peak_mib:.0f} MiB (P={pl.P}, bps={pl.bps}) "
                      f"{per_kernel}  [{elapsed():.0f}s]")
                del f
    TUNING.update({k: None for k in TUNING})


def _segment_times(tag, knob, values, ns, calls):
    """_plan_times over the values of one plan knob (None: the table's)."""
    _plan_times(tag, [{knob: v} if v is not None else {} for v in values], ns, calls)


def small_plans():
    """Small N, where every call is host-bound and wall-clock timings hide the kernels: fewest
    blocks per segment 4 (the table then), 2 and 1: shorter chains of dependent blocks per
    program, more programs."""
    _segment_times("small_plans", "min_bps", (None, 2, 1), (2048, 4096, 8192), calls=20)


def seg_sweep():
    """16 segments per head (one wave of the two programs per SM that fit, for 16 heads) against
    33 (two waves), from N=8192 to 131072."""
    _segment_times("seg_sweep", "segments", (16, 33), (8192, 16384, 32768, 131072), calls=10)


def dev_times(ns):
    """Device time per call (profiler) and wall time (do_bench) of every variant with the table's
    plans, at each N: the numbers a change of kernels moves (job devtimes, one per source tree)."""
    _segment_times("dev_times", "segments", (None,), ns, calls=10)


def peer_dev_times(ns):
    """Device time per call (profiler: the sum of a call's kernels) of gma against cuDNN and
    flash SDPA, every variant, at each N: at the N where every call is host-bound, what the GPU
    itself takes for each library's call."""
    for n in ns:
        for causal, mode in VARIANTS:
            row = {"N": n, "causal": causal, "mode": mode}
            for impl in ("triton", "sdpa_cudnn", "sdpa_flash"):
                f = make_call(impl, n, causal, mode)
                row[impl], _ = _device_us(f, 20)
                del f
            R.setdefault("peer_dev_times", []).append(row)
            print(f"peer device time {n} {'causal' if causal else 'bidir'} {mode}: gma "
                  f"{row['triton']:.1f} us, sdpa-cudnn {row['sdpa_cudnn']:.1f}, sdpa-flash "
                  f"{row['sdpa_flash']:.1f}  [{elapsed():.0f}s]")


def stage_sweep(ns):
    """Pipeline depth of the block loops: with 2 stages Triton keeps one buffer per loaded tile and
    issues the next block's copy at the end of an iteration, just before waiting for it; with 3
    the copy runs one whole iteration ahead (two buffers)."""
    _plan_times("stage_sweep", [{}, {"stages": 3}, {"stages": 4}, {"stages": 3, "block": 64}], ns,
                calls=10)


def wide_shapes(N=16384):
    """Training at the wide shapes the backward's wide form makes fit (D=64 with K=256; D=128 with
    K=128): fused kernels against gma_chunked (the PyTorch fallback they replace), and which ran."""
    from gmabench.gma.triton.autograd import fallback_note
    for D, K in ((64, 256), (128, 128)):
        for causal in (False, True):
            row = dict(N=N, D=D, K=K, causal=causal)
            for impl in ("triton", "chunked"):
                row[impl] = bench(impl, N, causal, "fwd_bwd", D=D, Dv=D, K=K, record=False)
            q = torch.empty(1, 1, 1, D, device="cuda", dtype=torch.bfloat16)
            row["fallback"] = fallback_note(q, q, torch.empty(1, K, D), causal)
            R.setdefault("wide", []).append(row)
            print(f"wide D={D} K={K} {'causal' if causal else 'bidir'} fwd_bwd N={N}: triton "
                  f"{row['triton']:.3f} ms, chunked {row['chunked']:.3f} ms, fallback: "
                  f"{row['fallback'] or 'none'}  [{elapsed():.0f}s]")


def ncu_calls(N=131072):
    """One call of each variant (compiles first): what `ncu -k regex:...` profiles."""
    for causal, mode in VARIANTS:
        make_call("triton", N, causal, mode)()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# (block, warps, stages) of the forward kernels, then (block, warps_bwd, stages) for fwd_bwd, each
# after the current table's plan. Each new triple compiles the kernels again (seconds each).
SWEEP_FWD = [(64, 8, 2), (64, 4, 2), (64, 4, 3), (64, 8, 3), (128, 8, 2), (128, 8, 3), (128, 4, 2),
             (128, 4, 3), (32, 4, 2), (32, 4, 3)]
SWEEP_BWD = [(64, 8, 2), (64, 4, 2), (64, 4, 1), (32, 8, 2), (32, 4, 2), (32, 8, 3), (128, 4, 2)]
WAVES = (1, 2, 8, 16)        # programs per SM (default 4); no recompile
MIN_BPS = (1, 2)             # fewest blocks per segment (default 4), at a short sequence where
                             # segments have the fewest blocks (at N=16384 they have 8 anyway)
GAIN = 0.98                  # a setting replaces the default only when at least 2% faster


def sweep(guarded, save, out, N=131072, n_short=4096):
    """Time the launch-plan knobs at the target shape, per variant (bidir/causal x fwd/fwd_bwd),
    and write the best as a plan file (OUT/triton-plan.json, read through GMA_TRITON_PLAN)."""
    def one(causal, mode, n=N, **knobs):
        TUNING.update({k: None for k in TUNING})
        TUNING.update(knobs)
        ms = guarded(f"sweep {causal} {mode} N={n} {knobs}", bench, "triton", n, causal, mode, record=False)
        row = dict(causal=causal, mode=mode, N=n, ms=ms, **knobs)
        R["sweep"].append(row)
        print("sweep", row, f"[{elapsed():.0f}s]")
        return row

    def best(rows):  # rows[0] is the reference setting
        timed = [r for r in rows if r["ms"] is not None]
        if not timed:
            return None
        top = min(timed, key=lambda r: r["ms"])
        return top if rows[0]["ms"] is None or top["ms"] < GAIN * rows[0]["ms"] else rows[0]

    plans = {}
    for mode in ("fwd", "fwd_bwd"):
        for causal in (True, False):
            side = "causal" if causal else "bidir"
            rows = [one(causal, mode)]      # the current table (plan.py): the reference
            if mode == "fwd":
                rows += [one(causal, mode, block=b, warps_fwd=w, stages=s) for b, w, s in SWEEP_FWD]
            else:
                rows += [one(causal, mode, block=b, warps_bwd=w, stages=s) for b, w, s in SWEEP_BWD]
            top = best(rows)
            if top is None:
                continue
            plan = {k: top[k] for k in ("block", "warps_fwd", "warps_bwd", "stages") if k in top}
            top = best([top] + [one(causal, mode, waves=w, **plan) for w in WAVES])
            if top.get("waves"):
                plan["waves"] = top["waves"]
            rows = [one(causal, mode, n=n_short, **plan)]
            top = best(rows + [one(causal, mode, n=n_short, min_bps=m, **plan) for m in MIN_BPS])
            if top is not None and top.get("min_bps"):
                plan["min_bps"] = top["min_bps"]
            plans[f"{side}/{mode}"] = plan
            save()
    TUNING.update({k: None for k in TUNING})
    plans["_measured"] = (f"scripts/gpu_kernels.py --sections sweep on {torch.cuda.get_device_name()}, "
                          f"N={N} (min_bps at N={n_short}), B=1 H=16 D=Dv=64 K=64 bf16 split, "
                          f"triton {triton.__version__}")
    R["plans"] = plans
    with open(os.path.join(out, "triton-plan.json"), "w") as fh:
        json.dump(plans, fh, indent=1)
    save()


def ceilings():
    x = torch.empty(2**28, device="cuda", dtype=torch.float32)
    x.uniform_()
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    R["ceilings"]["copy_TBps"] = 2 * x.numel() * 4 / (ms * 1e-3) / 1e12
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, return_mode="median")
    R["ceilings"]["bf16_mm_TFLOPs"] = 2 * 8192**3 / (ms * 1e-3) / 1e12
    del a, b
    torch.cuda.empty_cache()
    print("ceilings", R["ceilings"])


def table():
    print("\n== checks (relative error vs float64 SPEC; bound = 2x gma_reference + floor) ==")
    for c in R["checks"]:
        errs = " ".join(f"{n}={e['triton']:.1e}{'' if e['ok'] else '!'}"
                        for n, e in c["errors"].items())
        print(f"{c['dtype']:4s} {'causal' if c['causal'] else 'bidir ':6s} N={c['N']} K={c['K']} "
              f"D={c['D']} {c['precision']:7s} {'PASS' if c['ok'] else 'FAIL'} {errs}")
    print("\n== timings, B=1 H=16 D=Dv=64 K=64 bf16, median ms (peak MiB) ==")
    keys = sorted({(t["causal"], t["mode"], t["impl"]) for t in R["timings"]})
    Ns = sorted({t["N"] for t in R["timings"]})
    print(f"{'variant':34s}" + "".join(f"{n:>18d}" for n in Ns))
    for causal, mode, impl in keys:
        cells = []
        for n in Ns:
            m = [t for t in R["timings"] if (t["causal"], t["mode"], t["impl"], t["N"]) ==
                 (causal, mode, impl, n)]
            cells.append(f"{m[-1]['median_ms']:.4f} ({m[-1]['peak_bytes'] / 2**20:.0f})"
                         if m else "-")
        print(f"{('causal ' if causal else 'bidir ') + mode + ' ' + impl:34s}"
              + "".join(f"{c:>18s}" for c in cells))
    if R["sweep"]:
        print("\n== sweep (B=1 H=16 D=Dv=64 K=64 bf16, split): default -> best per variant ==")
        for causal in (False, True):
            for mode in ("fwd", "fwd_bwd"):
                rows = [r for r in R["sweep"] if (r["causal"], r["mode"], r["N"]) == (causal, mode, 131072)
                        and r["ms"]]
                if rows:
                    top = min(rows, key=lambda r: r["ms"])
                    side = "causal" if causal else "bidir"
                    print(f"{side} {mode}: {rows[0]['ms']:.4f} -> {top['ms']:.4f} ms "
                          + " ".join(f"{k}={top[k]}" for k in TUNING if top.get(k) is not None))
        print("plans", json.dumps(R.get("plans", {})))
    print("ceilings", R["ceilings"], f"total {elapsed():.0f}s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget", type=float, default=330.0)
    ap.add_argument("--sections", default="ceil,check,time,sweep,extra")
    ap.add_argument("--ns", default="2048,4096,16384,65536,131072")
    ap.add_argument("--check-n", type=int, default=4096 + 37)
    ap.add_argument("--plans", default="[{}]",
                    help="plansweep: a JSON list of plans, each a dict of TUNING knobs ({}: the table)")
    ap.add_argument("--modes", default="fwd,fwd_bwd", help="plansweep: the modes to time")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DT), help="plansweep: the inputs' dtype")
    ap.add_argument("--k", type=int, default=64, help="plansweep: mixture components K")
    ap.add_argument("--d", type=int, default=64, help="plansweep: head size D = Dv")
    ap.add_argument("--heads", default="16", help="plansweep: comma-separated head counts H")
    ap.add_argument("--variants", default="bidir,causal", help="plansweep: the variants to time (bidir, causal)")
    args = ap.parse_args()
    secs = args.sections.split(",")
    Ns = [int(n) for n in args.ns.split(",")]
    R["env"] = dict(torch=torch.__version__, triton=triton.__version__,
                    device=torch.cuda.get_device_name(), sm=torch.cuda.get_device_capability())
    print(R["env"])

    def save():
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_kernels.json"), "w") as fh:
            json.dump(R, fh, indent=1)

    def guarded(tag, fn, *a, **kw):
        if elapsed() > args.budget:
            R["notes"].append(f"skipped (budget): {tag}")
            return None
        try:
            return fn(*a, **kw)
        except Exception as exc:  # keep going: one failure must not hide the other numbers
            R["notes"].append(f"error in {tag}: {type(exc).__name__}: {exc}")
            print(f"ERROR {tag}: {type(exc).__name__}: {str(exc)[:2000]}")
            traceback.print_exc(limit=3)
            torch.cuda.empty_cache()
            return None

    try:
        if "ceil" in secs:
            guarded("ceilings", ceilings)
        if "check" in secs:
            for causal in (False, True):
                guarded(f"check bf16 {causal}", check, "bf16", causal, args.check_n)
                for dt in ("bf16", "fp16"):
                    guarded(f"check {dt} {causal} inference", check_inference, dt, causal, args.check_n)
            save()
        if "time" in secs:
            for N in Ns:
                for causal in (False, True):
                    for mode in ("fwd", "fwd_bwd"):
                        for impl in ("triton", "triton_fast", "sdpa_cudnn", "reference"):
                            if impl == "reference" and causal and N > 16384:
                                continue
                            if impl.startswith("sdpa") and N > 16384:
                                continue
                            guarded(f"time {impl} {N} {causal} {mode}", bench, impl, N, causal,
                                    mode)
                save()
        if "check" in secs:
            for dt in ("fp16", "fp32"):
                for causal in (False, True):
                    guarded(f"check {dt} {causal}", check, dt, causal, args.check_n)
            save()
        if "overhead" in secs:
            guarded("overhead", overhead)
            save()
        if "hostparts" in secs:
            guarded("hostparts", host_parts)
            save()
        if "profile" in secs:
            guarded("profile", profile_kernels)
            save()
        if "ncu" in secs:
            guarded("ncu", ncu_calls)
        if "regsweep" in secs:
            guarded("regsweep", reg_sweep)
            save()
        if "smallplans" in secs:
            guarded("smallplans", small_plans)
            save()
        if "segsweep" in secs:
            guarded("segsweep", seg_sweep)
            save()
        if "devtimes" in secs:
            guarded("devtimes", dev_times, Ns)
            save()
        if "plansweep" in secs:
            guarded("plansweep", _plan_times, "plan_sweep", json.loads(args.plans), Ns, 10,
                    tuple(args.modes.split(",")), args.dtype, args.k, args.d,
                    tuple(int(h) for h in args.heads.split(",")),
                    tuple({"bidir": False, "causal": True}[v] for v in args.variants.split(",")))
            save()
        if "peerdevtimes" in secs:
            guarded("peerdevtimes", peer_dev_times, Ns)
            save()
        if "stagesweep" in secs:
            guarded("stagesweep", stage_sweep, Ns)
            save()
        if "wide" in secs:
            guarded("wide", wide_shapes)
            save()
        if "smallprofile" in secs:   # device time per kernel where gma is host-bound
            for n in (2048, 4096):
                guarded(f"profile N={n}", profile_kernels, n, 20)
            save()
        if "bwdsweep" in secs:
            guarded("bwdsweep", bwd_sweep)
            save()
        if "sweep" in secs:
            sweep(guarded, save, args.out)
        if "extra" in secs:
            for causal in (False, True):
                guarded("extra K256 D128", check, "bf16", causal, 1000, B=2, H=2, D=128, Dv=128,
                        K=256)
                guarded("extra K1 D16 Dv32", check, "bf16", causal, 777, B=2, H=3, D=16, Dv=32,
                        K=1)
                guarded("extra fast", check, "bf16", causal, args.check_n, precision="fast")
    finally:
        save()
        table()
        for n in R["notes"]:
            print("note:", n)


if __name__ == "__main__":
    main()
