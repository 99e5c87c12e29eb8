"""On a GPU: would the fused causal inference kernel win at N=2048 if it walked before it waited?

The fused kernel (causal._causal_fused_kernel) makes its segment's total (the key part), publishes
it, waits for its head's earlier segments and then walks its blocks from their sum, so the key
part sits on every later segment's path (docs/kernels.md, "What bounds the misses"). This script
times, each replayed from a CUDA graph after an L2 flush as gmabench's cells are, at the plan of
the shape (B=1, H=16, D=Dv=K=64, bf16 by default: two 64-token blocks a segment):

    call        gma_attention(..., causal=True, impl="triton") under no_grad: what gmabench times
    fused       the same kernel launched here (a check of the harness)
    fused_ht    a copy of the fused kernel with a ticket counter per (b, h), so that its head's
                weights are made while the ticket is drawn (_ticket's HT)
    fused_rlx   the copy with its flags read relaxed and the totals loaded past L1
                (_wait_range's RLX)
    walk_first  each program walks its two blocks from a zero state, keeping each block's
                queries' responsibilities, numerator and denominator; the walk's final state is
                its segment's total, which it publishes; it then waits for the earlier
                segments and adds R_q S_start and R_q s_start to what it kept:
                o = (n + R_q S_start) / (d + R_q s_start). The same function as the fused
                kernel (output compared), in raw float16 only (no tile-scaled fallback), so a
                form to time, not to ship
    walk_first_*  the same with one of _walk_first_kernel's knobs: forms of the same function
                (grp4: the earlier totals summed by groups of four segments; f16: totals as
                scaled float16; u4: the sums' loop unrolled four times; tf32: the start's
                products in tf32; ht: tickets per (b, h); rlx: as fused_rlx), and forms that
                leave a part out to attribute the end's time (nosum: no sum of the earlier
                totals; bare: nor the wait; bare_storeonly: nor the barrier and flag after the
                total's stores; bare_nocorr: nor the start's products; bare_nopub: nor
                publishing the total)
    walk_only   the ticket, the weights and the walk from a zero state, no total, no wait: the
                floor of any form that takes the key part and the wait off the path (its
                output is wrong for every segment but the first)

    python3 scripts/fused_walk_first.py --out DIR [--n 2048] [--reps 3]

writes DIR/fused_walk_first.json. Under TRITON_INTERPRET=1 (no GPU) it times nothing and checks
each form of the function against the float64 formula (interpreter_check; a test runs it).
"""

from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from form_timing import (arg_parser, check_line, inputs, print_times,  # noqa: E402
                         rel_err, time_interleaved, verdict, write_json)
from gmabench.gma.triton.call import prepare  # noqa: E402
from gmabench.gma.triton.bidir import _segment_state  # noqa: E402
from gmabench.gma.triton.causal import (_causal_fused_kernel, _walk_blocks,  # noqa: E402
                                        _walk_segment)
from gmabench.gma.triton.common import (INTERPRET, PRECISIONS, _fp16_scaled,  # noqa: E402
                                        _fwd_weights, _mm, _pow2_scale, _resp_p16, _row_ptrs,
                                        _segment_at, _split, _to_out)


@triton.jit
def _ticket(sync_ptr, P, total, HT: tl.constexpr = False):
    """(segment, b * H + h, this launch's flag mark) from the launch's ticket counter, as the
    fused kernel takes them; HT: the (b, h) from the program's id and the segment from a
    counter of that (b, h)'s own (after the flags of _walk_first_kernel's slots), so that its
    head's weights need not wait for the ticket. Either way a program waits only on programs
    of its (b, h) that drew earlier tickets, so have started."""
    if HT:
        bh = tl.program_id(1)
        base = (sync_ptr + 2 + 2 * total).to(tl.pointer_type(tl.int64))
        t = tl.atomic_add(base + bh, 1, sem="relaxed")
        epoch = t // P
        p = (t - epoch * P).to(tl.int32)
    else:
        t = tl.atomic_add(sync_ptr.to(tl.pointer_type(tl.int64)), 1, sem="relaxed")
        epoch = t // total
        t = (t - epoch * total).to(tl.int32)
        p = t % P
        bh = t // P
    return p, bh, (epoch % 1073741824).to(tl.int32) + 1


@triton.jit
def _wait_range(flags, lo, hi, mark, RLX: tl.constexpr = False):
    """Until flags lo..hi-1 hold this launch's mark (the fused kernel's wait). RLX: relaxed
    reads, which do not invalidate the SM's L1 as an acquire does (CCTL.IVALL), so that spilled
    registers stay there; the totals must then be read past L1 (_sum_slots' CG). A form to time:
    without the acquire, nothing in the memory model orders those reads after the flags'."""
    SEM: tl.constexpr = "relaxed" if RLX else "acquire"
    jj = tl.arange(0, 128)
    for j0 in range(lo, hi, 128):
        m = j0 + jj < hi
        f = tl.min((tl.where(m, tl.atomic_add(flags + j0 + jj, 0, mask=m, sem=SEM),
                             mark) == mark).to(tl.int32), 0)
        while f == 0:
            f = tl.min((tl.where(m, tl.atomic_add(flags + j0 + jj, 0, mask=m, sem=SEM),
                                 mark) == mark).to(tl.int32), 0)


@triton.jit
def _block_from(qbase, kbase, vbase, blk, N, H, eps, S, s, c2, a2h, a2l, b2h, b2l,
                D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                FIRST: tl.constexpr, INTERP: tl.constexpr):
    """One raw-float16 walk block from (S, s) (FIRST: the zero state, its products left out):
    the queries' unnormalised responsibilities (float16), the numerator and denominator without
    the segment's start, and the state after the block."""
    ii = tl.arange(0, BLOCK)
    rows = blk * BLOCK + ii
    rm = rows < N
    xq = tl.load(_row_ptrs(qbase, rows, H * D, D), mask=rm[:, None], other=0.0)
    xk = tl.load(_row_ptrs(kbase, rows, H * D, D), mask=rm[:, None], other=0.0)
    v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
    pq, pqs = _resp_p16(xq, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
    pk, pks = _resp_p16(xk, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
    rk = pk * (1.0 / pks)[:, None]
    vh = _fp16_scaled(v, 1.0)
    pqh = pq.to(tl.float16)
    rkth = tl.trans(rk).to(tl.float16)
    A = _mm(pqh, 1.0, rkth, 1.0, tl.zeros((BLOCK, BLOCK), dtype=tl.float32), 3, False, False,
            INTERP)
    A = tl.where(ii[:, None] >= ii[None, :], A, 0.0)
    n = _mm(A.to(tl.float16), 1.0, vh, 1.0, tl.zeros((BLOCK, DV), dtype=tl.float32), 3, False,
            False, INTERP)
    d = tl.sum(A, 1) + eps * pqs
    if not FIRST:
        Sh, Sl = _split(S, 3)
        n = _mm(pqh, 1.0, Sh, Sl, n, 3, False, False, INTERP)
        d += tl.sum(pq * s[None, :], 1)
    S = _mm(rkth, 1.0, vh, 1.0, S, 3, False, False, INTERP)
    s += tl.sum(rk, 0)
    return pqh, n, d, rows, rm, S, s


@triton.jit
def _store_slot(tot_ptr, slot, S, s, KP: tl.constexpr, DV: tl.constexpr, F16: tl.constexpr):
    """A state (S, s) into slot `slot` of KP * (DV + 1) floats: float32, or (F16) S as float16
    scaled by a power of two (_split), then s and the scale as float32."""
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    base = tot_ptr + slot.to(tl.int64) * (KP * (DV + 1))
    if F16:
        sc, inv = _pow2_scale(S)
        tl.store(base.to(tl.pointer_type(tl.float16)) + kk[:, None] * DV + ee[None, :],
                 _fp16_scaled(S, inv))
        tl.store(base + KP * DV // 2 + kk, s)
        tl.store(base + KP * DV // 2 + KP, sc)
    else:
        tl.store(base + kk[:, None] * DV + ee[None, :], S)
        tl.store(base + KP * DV + kk, s)


@triton.jit
def _sum_slots(tot_ptr, slot0, n, KP: tl.constexpr, DV: tl.constexpr, F16: tl.constexpr,
               U: tl.constexpr = 1, CG: tl.constexpr = False):
    """The sum of the states in slots slot0 .. slot0 + n - 1 (_store_slot's layout), left to
    right; U: the loop unrolled U times (loads of several slots in flight); CG: loads that
    skip L1 (cache modifier .cg)."""
    MOD: tl.constexpr = ".cg" if CG else ""
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    S = tl.zeros((KP, DV), dtype=tl.float32)
    s = tl.zeros((KP,), dtype=tl.float32)
    for j in tl.range(0, n, loop_unroll_factor=U):
        base = tot_ptr + (slot0 + j).to(tl.int64) * (KP * (DV + 1))
        if F16:
            t = tl.load(base.to(tl.pointer_type(tl.float16)) + kk[:, None] * DV + ee[None, :],
                        cache_modifier=MOD)
            S += t.to(tl.float32) * tl.load(base + KP * DV // 2 + KP, cache_modifier=MOD)
            s += tl.load(base + KP * DV // 2 + kk, cache_modifier=MOD)
        else:
            S += tl.load(base + kk[:, None] * DV + ee[None, :], cache_modifier=MOD)
            s += tl.load(base + KP * DV + kk, cache_modifier=MOD)
    return S, s


@triton.jit
def _finish(obase, o_ptr, pqh, n, d, rows, rm, Sh, Sl, s0, H, DV: tl.constexpr,
            START: tl.constexpr, INTERP: tl.constexpr, TF32: tl.constexpr = False):
    """o = (n + pqh Sh Sl) / (d + pqh s0) stored (START; else n / d). TF32: Sh is the float32
    start itself and its product takes tf32 (no tile scale, whose maximum is a reduction
    across warps)."""
    if START and TF32:
        n = tl.dot(pqh.to(tl.float32), Sh, n, input_precision="tf32")
        d += tl.sum(pqh.to(tl.float32) * s0[None, :], 1)
    elif START:
        n = _mm(pqh, 1.0, Sh, Sl, n, 3, False, False, INTERP)
        d += tl.sum(pqh.to(tl.float32) * s0[None, :], 1)
    tl.store(_row_ptrs(obase, rows, H * DV, DV), _to_out(n * (1.0 / d)[:, None], o_ptr),
             mask=rm[:, None])


@triton.jit
def _walk_first_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, tot_ptr, sync_ptr, o_ptr,
                       N, H, K, inv_tau, eps, bps, bps_key,
                       D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_KEY: tl.constexpr, PREC: tl.constexpr,
                       X_EXACT: tl.constexpr, INTERP: tl.constexpr, RAW16: tl.constexpr,
                       NST_KEY: tl.constexpr, PREFETCH: tl.constexpr = False,
                       WAIT: tl.constexpr = True, SUM: tl.constexpr = True,
                       PUB: tl.constexpr = True, CORR: tl.constexpr = True,
                       F16: tl.constexpr = False, GRP: tl.constexpr = 0,
                       U: tl.constexpr = 1, TF32: tl.constexpr = False,
                       HT: tl.constexpr = False, RLX: tl.constexpr = False):
    """Two blocks a segment (bps = 2), raw float16 products: the module docstring. Knobs, to
    attribute its end (each False gives a wrong output): WAIT the wait for the earlier
    segments; SUM the sum of their totals; PUB publishing this segment's; CORR the start's
    products. And two forms of the same function: F16 totals as scaled float16 (half the bytes
    each program stores and reads); GRP = G > 0: a program sums at most G - 1 totals of its own
    group of G segments and the totals of the earlier groups, which each group's last program
    publishes (fewer reads: at P = 16 and G = 4 at most 6 instead of 15); U: the sums' loops
    unrolled U times; TF32: the start's products in tf32 (_finish); HT: tickets per (b, h)
    (_ticket). PUB = 2 stores the total with no barrier and no flag (to time the release); RLX:
    the flags read relaxed and the totals past L1 (_wait_range)."""
    P = tl.num_programs(0)
    p, bh, mark = _ticket(sync_ptr, P, P * tl.num_programs(1), HT)
    b = bh // H
    h = bh % H
    blk0, blk1 = _segment_at(p, N, bps, BLOCK)
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    off = b.to(tl.int64) * N * H + h
    qbase = q_ptr + off * D
    kbase = k_ptr + off * D
    vbase = v_ptr + off * DV
    obase = o_ptr + off * DV
    S = tl.zeros((KP, DV), dtype=tl.float32)
    s = tl.zeros((KP,), dtype=tl.float32)
    q0, n0, d0, r0, m0, S, s = _block_from(qbase, kbase, vbase, blk0, N, H, eps, S, s, c2, a2h,
                                           a2l, b2h, b2l, D, DV, KP, BLOCK, True, INTERP)
    q1, n1, d1, r1, m1, S, s = _block_from(qbase, kbase, vbase, blk0 + 1, N, H, eps, S, s, c2,
                                           a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, False, INTERP)
    nbh = tl.num_programs(1)
    flags = sync_ptr + 2 + bh * P
    if PUB:
        _store_slot(tot_ptr, bh * P + p, S, s, KP, DV, F16)
        if PUB == 1:
            tl.debug_barrier()
            tl.atomic_xchg(flags + p, mark, sem="release")
    if p == 0 or not CORR:
        _finish(obase, o_ptr, q0, n0, d0, r0, m0, 1.0, 1.0, s, H, DV, False, INTERP)
        _finish(obase, o_ptr, q1, n1, d1, r1, m1, 1.0, 1.0, s, H, DV, False, INTERP)
    else:
        if GRP > 0:
            # segments in groups of GRP: a group's last program publishes the group's total (a
            # slot and a flag after the segments'); a program sums the earlier groups' totals
            # and its own group's earlier segments'
            PG = tl.cdiv(P, GRP)
            g = p // GRP
            gflags = sync_ptr + 2 + nbh * P + bh * PG
            if WAIT:
                _wait_range(flags, g * GRP, p, mark, RLX)
            S0, s0 = _sum_slots(tot_ptr, bh * P + g * GRP, p - g * GRP, KP, DV, F16, U, RLX)
            if p - g * GRP == GRP - 1:
                _store_slot(tot_ptr, nbh * P + bh * PG + g, S0 + S, s0 + s, KP, DV, F16)
                tl.debug_barrier()
                tl.atomic_xchg(gflags + g, mark, sem="release")
            if WAIT:
                _wait_range(gflags, 0, g, mark, RLX)
            Sg, sg = _sum_slots(tot_ptr, nbh * P + bh * PG, g, KP, DV, F16, U, RLX)
            S0 += Sg
            s0 += sg
        else:
            if WAIT:
                _wait_range(flags, 0, p, mark, RLX)
            if SUM:
                S0, s0 = _sum_slots(tot_ptr, bh * P, p, KP, DV, F16, U, RLX)
            else:
                S0 = S
                s0 = s
        if TF32:
            Sh = S0
            Sl = 1.0
        else:
            Sh, Sl = _split(S0, 3)
        _finish(obase, o_ptr, q0, n0, d0, r0, m0, Sh, Sl, s0, H, DV, True, INTERP, TF32)
        _finish(obase, o_ptr, q1, n1, d1, r1, m1, Sh, Sl, s0, H, DV, True, INTERP, TF32)


@triton.jit
def _walk_only_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, tot_ptr, sync_ptr, o_ptr,
                      N, H, K, inv_tau, eps, bps, bps_key,
                      D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                      BLOCK: tl.constexpr, BLOCK_KEY: tl.constexpr, PREC: tl.constexpr,
                      X_EXACT: tl.constexpr, INTERP: tl.constexpr, RAW16: tl.constexpr,
                      NST_KEY: tl.constexpr, PREFETCH: tl.constexpr = False):
    """The ticket, the weights and the production walk from a zero state: no key part, no
    total, no wait (a floor to time; wrong output past each head's first segment)."""
    P = tl.num_programs(0)
    p, bh, mark = _ticket(sync_ptr, P, P * tl.num_programs(1))
    b = bh // H
    h = bh % H
    blk0, blk1 = _segment_at(p, N, bps, BLOCK)
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    off = b.to(tl.int64) * N * H + h
    _walk_blocks(q_ptr + off * D, k_ptr + off * D, v_ptr + off * DV, o_ptr + off * DV, o_ptr,
                 tl.zeros((KP, DV), dtype=tl.float32), tl.zeros((KP,), dtype=tl.float32), blk0,
                 blk1, N, H, eps, c2, a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT,
                 INTERP, True)


@triton.jit
def _fused_copy_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, tot_ptr, sync_ptr, o_ptr,
                       N, H, K, inv_tau, eps, bps, bps_key,
                       D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                       BLOCK: tl.constexpr, BLOCK_KEY: tl.constexpr, PREC: tl.constexpr,
                       X_EXACT: tl.constexpr, INTERP: tl.constexpr, RAW16: tl.constexpr,
                       NST_KEY: tl.constexpr, PREFETCH: tl.constexpr = False,
                       HT: tl.constexpr = False, RLX: tl.constexpr = False):
    """causal._causal_fused_kernel (no prefetch), with _walk_first_kernel's knobs HT and RLX."""
    P = tl.num_programs(0)
    p, bh, mark = _ticket(sync_ptr, P, P * tl.num_programs(1), HT)
    b = bh // H
    h = bh % H
    kb0, kb1 = _segment_at(p, N, bps_key, BLOCK_KEY)
    blk0, blk1 = _segment_at(p, N, bps, BLOCK)
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    S, s = _segment_state(k_ptr, v_ptr, b, h, kb0, kb1, N, H, c2, a2h, a2l, b2h, b2l, D, DV, KP,
                          BLOCK_KEY, PREC, X_EXACT, INTERP, RAW16, NST_KEY)
    flags = sync_ptr + 2 + bh * P
    _store_slot(tot_ptr, bh * P + p, S, s, KP, DV, False)
    tl.debug_barrier()
    tl.atomic_xchg(flags + p, mark, sem="release")
    _wait_range(flags, 0, p, mark, RLX)
    S, s = _sum_slots(tot_ptr, bh * P, p, KP, DV, False, 1, RLX)
    _walk_segment(q_ptr, k_ptr, v_ptr, o_ptr, tot_ptr, S, s, b, h, bh, p, P, blk0, blk1, N, H, eps,
                  c2, a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, RAW16)


# name: (kernel, its knobs): fused and walk_first's forms without a False knob compute the function
BARE = {"WAIT": False, "SUM": False}
KERNELS = {"fused": (_causal_fused_kernel, {}),
           "fused_ht": (_fused_copy_kernel, {"HT": True}),
           "fused_rlx": (_fused_copy_kernel, {"RLX": True}),
           "walk_first": (_walk_first_kernel, {}),
           "walk_first_grp4": (_walk_first_kernel, {"GRP": 4}),
           "walk_first_f16": (_walk_first_kernel, {"F16": True}),
           "walk_first_f16_grp4": (_walk_first_kernel, {"F16": True, "GRP": 4}),
           "walk_first_u4": (_walk_first_kernel, {"U": 4}),
           "walk_first_tf32": (_walk_first_kernel, {"TF32": True}),
           "walk_first_grp4_u2_tf32": (_walk_first_kernel, {"GRP": 4, "U": 2, "TF32": True}),
           "walk_first_ht": (_walk_first_kernel, {"HT": True}),
           "walk_first_grp4_ht": (_walk_first_kernel, {"GRP": 4, "HT": True}),
           "walk_first_rlx": (_walk_first_kernel, {"RLX": True}),
           "walk_first_grp4_rlx": (_walk_first_kernel, {"GRP": 4, "RLX": True}),
           "walk_first_nosum": (_walk_first_kernel, {"SUM": False}),
           "walk_first_nosum_rlx": (_walk_first_kernel, {"SUM": False, "RLX": True}),
           "walk_first_bare": (_walk_first_kernel, BARE),
           "walk_first_bare_storeonly": (_walk_first_kernel, dict(BARE, PUB=2)),
           "walk_first_bare_nocorr": (_walk_first_kernel, dict(BARE, CORR=False)),
           "walk_first_bare_nopub": (_walk_first_kernel, dict(BARE, CORR=False, PUB=False)),
           "walk_only": (_walk_only_kernel, {})}


def launcher(name, tensors, bps=None):
    """A function launching kernel `name` on the fused plan of the tensors' shape (bps: the
    blocks a segment, for the interpreter, whose plan takes other segments)."""
    call, ts = prepare(tensors, True, 1.0, 1e-6, PRECISIONS["fp16"], False)
    pl = call.plan
    if not pl.FUSE_FWD:
        raise SystemExit(f"the plan of this shape does not fuse causal inference: {pl}")
    consts = dict(call.fused)
    bps = bps or pl.bps
    if name.startswith("walk_first") and (bps != 2 or consts["BLOCK_KEY"] != consts["BLOCK"]):
        raise SystemExit(f"walk_first takes two blocks a segment; the plan has {bps}")
    B, N, H, D, DV, K = call.dims
    P = triton.cdiv(triton.cdiv(N, consts["BLOCK"]), bps)
    grid = (P, B * H)
    q, k, v, mu, ls, mix = ts
    slots = B * H * (P + P)   # (the segments', then at most as many groups')
    st = torch.empty(slots * call.state_len, device=q.device, dtype=torch.float32)
    sync = torch.zeros(2 + slots + 2 * B * H, device=q.device, dtype=torch.int32)   # (HT's)
    o = torch.empty_like(v)

    def run():
        kernel, knobs = KERNELS[name]
        kernel[grid](q, k, v, mu, ls, mix, st, sync, o, N, H, K, call.inv_tau, call.eps, bps, bps,
                     **consts, **knobs, num_warps=pl.warps_fwd, num_stages=pl.stages)
        return o
    return run, pl


EXACT = ("fused", "fused_ht", "fused_rlx", "walk_first", "walk_first_ht", "walk_first_grp4_ht",
         "walk_first_rlx", "walk_first_grp4_rlx",
         "walk_first_grp4", "walk_first_f16", "walk_first_f16_grp4", "walk_first_u4",
         "walk_first_tf32", "walk_first_grp4_u2_tf32")


def interpreter_check(N=256, H=1) -> int:
    """Under the interpreter (16-token blocks there: at N=256 8 segments, two groups of four),
    each form that computes the function against the float64 formula, within the SPEC's bound
    (twice gma_reference's error), and walk_only, which does not, outside it. 0 if so, else 1."""
    from gmabench.gma.reference import gma_reference, gma_spec_float64
    ts = inputs(N, H=H)
    exact = gma_spec_float64(*ts, causal=True)
    bound = 2 * rel_err(gma_reference(*ts, causal=True), exact)
    errs = {name: rel_err(launcher(name, ts, bps=2)[0]().clone(), exact)
            for name in (*EXACT, "walk_only")}
    bad = [n for n in EXACT if errs[n] > bound] + (["walk_only"] if errs["walk_only"] <= bound
                                                    else [])
    for name, err in errs.items():
        check_line(name, err, bound)
    return verdict(bad)


def main():
    ap = arg_parser(__doc__)
    args = ap.parse_args()
    if INTERPRET:
        raise SystemExit(interpreter_check())

    from gmabench.gma.api import gma_attention
    dev = torch.device("cuda")
    ts = inputs(args.n, device=dev)
    runs = {"call": None}
    with torch.no_grad():
        runs["call"] = lambda: gma_attention(*ts, causal=True, impl="triton")
        pl = None
        for name in KERNELS:
            runs[name], pl = launcher(name, ts)
        want = runs["call"]().clone()
        errors = {name: rel_err(runs[name]().clone(), want) for name in runs}
        times = time_interleaved(runs, dev, args.reps)
    print_times(times, errors)
    write_json(args.out, "fused_walk_first.json",
               {"N": args.n, "B": 1, "H": 16, "D": 64, "K": 64, "dtype": "bfloat16",
                "plan": dict(vars(pl)), "us": times, "max_err_vs_call": errors})


if __name__ == "__main__":
    main()
