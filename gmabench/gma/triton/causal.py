"""Causal GMA kernels: a chunk walk per segment of the sequence, forward and backward.

The sequence of each (b, h) is cut into segments of `bps` chunks (a chunk is BLOCK tokens). The
key pass of bidir.py (non-atomic) stores each segment's total state. A forward program starts from
the sum of the earlier segments' totals and walks its chunks in order, keeping the running state
(KP x DV and KP masses, float32) in registers: per chunk the masked intra-chunk product
A = R_q R_k^T (BLOCK x BLOCK) plus the inter-chunk read-out R_q S, then S += R_k^T V. In
inference both run in one kernel (_causal_fused_kernel): each program makes its segment's total
and waits for the earlier segments' before it walks.

Backward: a forward walk for the query side (dq; it also writes the per-row denominator d and
dd = -(do.o)/d, and each segment's total of G = R_q^T dn, g = R_q^T dd), then a reverse walk for
the key side (dk, dv) starting from the sum of the later segments' G totals.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .bidir import _segment_state
from .common import (_add_param_sums, _bwd_weights, _dl_rows, _fp16_scaled, _fwd_weights, _gdc, _hi,
                     _input_grads, _lo, _mm, _opaque_zero, _param_init, _prefetch_rows, _raw_gate,
                     _raw_state_ok,
                     _resp, _resp_p, _resp_p16, _row_ptrs, _segment, _segment_at, _split,
                     _to_out, _wide_base, _wide_dx_weights, _wide_logit_weights)


@triton.jit
def _load_state_sum(st_ptr, bh, p0, p1, P, KP: tl.constexpr, DV: tl.constexpr):
    """Sum of the stored segment states p0 <= p < p1 of (b, h)."""
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    S = tl.zeros((KP, DV), dtype=tl.float32)
    s = tl.zeros((KP,), dtype=tl.float32)
    for p in range(p0, p1):
        base = st_ptr + (bh.to(tl.int64) * P + p) * (KP * (DV + 1))
        S += tl.load(base + kk[:, None] * DV + ee[None, :])
        s += tl.load(base + KP * DV + kk)
    return S, s


@triton.jit
def _walk_blocks(qbase, kbase, vbase, obase, o_ptr, S, s, blk0, blk1, N, H, eps,
                 c2, a2h, a2l, b2h, b2l, D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                 BLOCK: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                 INTERP: tl.constexpr, RAW: tl.constexpr, NST: tl.constexpr = None):
    """The chunk walk over blocks [blk0, blk1) from the state (S, s), storing o; returns the
    final state. RAW: q, k and v converted to float16 with no tile scale (common.py,
    RAW_LOGIT_ERR), a row whose q or k logits overflowed turning the state into NaN; the caller
    checks it (_raw_state_ok). The state's own tile scale stays: it grows along the walk."""
    ii = tl.arange(0, BLOCK)
    tri = ii[:, None] >= ii[None, :]
    for blk in tl.range(blk0, blk1, num_stages=NST):
        rows = blk * BLOCK + ii
        rm = rows < N
        xq = tl.load(_row_ptrs(qbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        xk = tl.load(_row_ptrs(kbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        # the queries' responsibilities unnormalised (p_q = r_q sum(p_q)): numerator and
        # denominator both carry the factor sum(p_q), so o is unchanged (eps scaled with them)
        if RAW:
            pq, pqs = _resp_p16(xq, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
            pk, pks = _resp_p16(xk, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
            # a query row whose logits overflowed (its sum NaN) makes its key row's r NaN: the
            # state shows it (pqs * 0 + 1 is 1 for a finite sum, NaN for NaN or infinity)
            rk = pk * ((1.0 / pks) * (pqs * 0.0 + 1.0))[:, None]
            vh = _fp16_scaled(v, 1.0)
            vl = 1.0
        else:
            pq, pqs = _resp_p(xq, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
            rk = _resp(xk, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
            vh, vl = _split(v, PREC)
        pqh, pql = _split(pq, PREC, True)
        rkth, rktl = _split(tl.trans(rk), PREC, True)
        A = _mm(pqh, pql, rkth, rktl, tl.zeros((BLOCK, BLOCK), dtype=tl.float32), PREC, False,
                False, INTERP)
        A = tl.where(tri, A, 0.0)     # entries p_q . r_k lie in [0, 1]
        Ah, Al = _split(A, PREC, True)
        n = _mm(Ah, Al, vh, vl, tl.zeros((BLOCK, DV), dtype=tl.float32), PREC, False, X_EXACT,
                INTERP)
        Sh, Sl = _split(S, PREC)
        n = _mm(pqh, pql, Sh, Sl, n, PREC, False, False, INTERP)
        d = tl.sum(A, 1) + tl.sum(pq * s[None, :], 1) + eps * pqs
        o = n * (1.0 / d)[:, None]
        tl.store(_row_ptrs(obase, rows, H * DV, DV), _to_out(o, o_ptr),
                 mask=rm[:, None])
        S = _mm(rkth, rktl, vh, vl, S, PREC, False, X_EXACT, INTERP)
        s += tl.sum(rk, 0)
    return S, s


@triton.jit
def _walk_segment(q_ptr, k_ptr, v_ptr, o_ptr, tot_ptr, S, s, b, h, bh, p, P, blk0, blk1, N, H,
                  eps, c2, a2h, a2l, b2h, b2l, D: tl.constexpr, DV: tl.constexpr,
                  KP: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr,
                  X_EXACT: tl.constexpr, INTERP: tl.constexpr, RAW16: tl.constexpr):
    """Segment p's walk from the sum (S, s) of the earlier segments' totals. RAW16 (precision
    fp16): first with q, k, v converted to float16 as they are, again with tile scales (the
    start state loaded again) if the weights or the final state say that lost precision."""
    off = (b.to(tl.int64) * N * H + h)
    qbase = q_ptr + off * D
    kbase = k_ptr + off * D
    vbase = v_ptr + off * DV
    obase = o_ptr + off * DV
    if PREC == 3 and RAW16:
        ok = _raw_gate(a2h, a2l, b2h, b2l)
        if ok == 1:
            S2, s2 = _walk_blocks(qbase, kbase, vbase, obase, o_ptr, S, s, blk0, blk1, N, H, eps,
                                  c2, a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP,
                                  True)
            ok = _raw_state_ok(S2, s2)
        if ok == 0:   # the start state loaded again rather than kept through the first walk
            S1, s1 = _load_state_sum(tot_ptr, bh, 0, p, P, KP, DV)
            _walk_blocks(qbase, kbase, vbase, obase, o_ptr, S1, s1, blk0, blk1, N, H, eps, c2,
                         a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, False, 1)
    else:
        _walk_blocks(qbase, kbase, vbase, obase, o_ptr, S, s, blk0, blk1, N, H, eps, c2, a2h,
                     a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, False)


@triton.jit
def _causal_out_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, tot_ptr, o_ptr,
                       N, H, K, inv_tau, eps, bps,
                       D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                       PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                       RAW16: tl.constexpr = False, GDC: tl.constexpr = False):
    """The walk of segment program_id(0), after the key pass (bidir._state_kernel) stored the
    segments' totals."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    bh = tl.program_id(1)
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, bh % H, K, inv_tau, KP, D,
                                          PREC)
    _gdc(GDC)
    S, s = _load_state_sum(tot_ptr, bh, 0, pid, P, KP, DV)
    blk0, blk1 = _segment(N, bps, BLOCK)
    _walk_segment(q_ptr, k_ptr, v_ptr, o_ptr, tot_ptr, S, s, bh // H, bh % H, bh, pid, P, blk0,
                  blk1, N, H, eps, c2, a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT,
                  INTERP, RAW16)


@triton.jit
def _causal_fused_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, tot_ptr, sync_ptr, o_ptr,
                         N, H, K, inv_tau, eps, bps, bps_key,
                         D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                         BLOCK: tl.constexpr, BLOCK_KEY: tl.constexpr, PREC: tl.constexpr,
                         X_EXACT: tl.constexpr, INTERP: tl.constexpr, RAW16: tl.constexpr,
                         NST_KEY: tl.constexpr, PREFETCH: tl.constexpr = False):
    """The key pass and the walk in one launch (causal inference; plan key fuse_fwd): each
    program makes its segment's total as _state_kernel does, publishes it, waits until every
    earlier segment of its (b, h) has published, then walks from their sum.

    sync_ptr: int32 [a 64-bit ticket counter, one flag per (b, h, segment)], zero when made
    (Call.sync_buffer) and never reset. Tickets go on from launch to launch: ticket t is
    program t mod T of launch t div T (T programs a launch), and a program's (b, h, segment) is
    the former (segments of a (b, h) in the order their programs started), so a program waits
    only for programs that have started: no deadlock whatever the grid, as in decoupled
    look-back scans. A flag set in launch e holds e mod 2^30 + 1, never 0 and never the value
    of the launch before, so nothing has to zero the buffer between launches (CUDA graphs
    replay it as it is)."""
    P = tl.num_programs(0)
    total = P * tl.num_programs(1)
    t = tl.atomic_add(sync_ptr.to(tl.pointer_type(tl.int64)), 1, sem="relaxed")
    epoch = t // total
    t = (t - epoch * total).to(tl.int32)
    mark = (epoch % 1073741824).to(tl.int32) + 1   # this launch's flag value
    p = t % P
    bh = t // P
    b = bh // H
    h = bh % H
    kb0, kb1 = _segment_at(p, N, bps_key, BLOCK_KEY)
    blk0, blk1 = _segment_at(p, N, bps, BLOCK)
    if PREFETCH:   # the key part's and the walk's first rows, while the weights are made
        off = b.to(tl.int64) * N * H + h
        _prefetch_rows(k_ptr + off * D, kb0 * BLOCK_KEY, N, H * D, D, 128, INTERP)
        _prefetch_rows(v_ptr + off * DV, kb0 * BLOCK_KEY, N, H * DV, DV, 128, INTERP)
        _prefetch_rows(q_ptr + off * D, blk0 * BLOCK, N, H * D, D, 128, INTERP)
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    S, s = _segment_state(k_ptr, v_ptr, b, h, kb0, kb1, N, H, c2, a2h, a2l, b2h, b2l, D, DV, KP,
                          BLOCK_KEY, PREC, X_EXACT, INTERP, RAW16, NST_KEY)
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    base = tot_ptr + (bh.to(tl.int64) * P + p) * (KP * (DV + 1))
    tl.store(base + kk[:, None] * DV + ee[None, :], S)
    tl.store(base + KP * DV + kk, s)
    flags = sync_ptr + 2 + bh * P
    tl.debug_barrier()   # every thread's stores of the total before the flag's release
    tl.atomic_xchg(flags + p, mark, sem="release")
    # the earlier segments' flags read together (one round trip, not one per segment), again
    # until every one holds this launch's mark
    jj = tl.arange(0, 128)
    for j0 in range(0, p, 128):
        m = j0 + jj < p
        f = tl.min((tl.where(m, tl.atomic_add(flags + j0 + jj, 0, mask=m, sem="acquire"), mark)
                    == mark).to(tl.int32), 0)
        while f == 0:
            f = tl.min((tl.where(m, tl.atomic_add(flags + j0 + jj, 0, mask=m, sem="acquire"),
                                 mark) == mark).to(tl.int32), 0)
    S, s = _load_state_sum(tot_ptr, bh, 0, p, P, KP, DV)
    _walk_segment(q_ptr, k_ptr, v_ptr, o_ptr, tot_ptr, S, s, b, h, bh, p, P, blk0, blk1, N, H, eps,
                  c2, a2h, a2l, b2h, b2l, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, RAW16)


@triton.jit
def _causal_bwd_q_kernel(q_ptr, k_ptr, v_ptr, do_ptr, mu_ptr, ls_ptr, mix_ptr, w_ptr, tot_ptr,
                         dq_ptr, aux_ptr, gtot_ptr, pg_ptr, dl_ptr, N, H, K, inv_tau, eps, bps,
                         D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                         BLOCK: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                         INTERP: tl.constexpr, WIDE: tl.constexpr,
                         DXP: tl.constexpr, DLST: tl.constexpr,
                         DXPASS: tl.constexpr, GDC: tl.constexpr = False):
    """Forward walk. Per chunk, with S, s the state before it, W = do V^T, U = do S^T, the
    masses so far C = tril(1) R_k + s and Y = mask(W) R_k + U: d = rowsum(R_q*C) + eps,
    do.n = rowsum(R_q*Y), dd = -(do.n)/d^2, dR_q = Y/d + dd C (that is dA R_k + U/d + dd s^T with
    dA = mask(W/d + dd), without the intra-chunk A = R_q R_k^T: docs/kernels.md, Version 2.19)."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    wbase = _wide_base(w_ptr, h, KP, D)   # WIDE: _prep_weights_kernel's buffer
    if not WIDE:   # once per program; WIDE: loaded per block (shared memory, _opaque_zero)
        c2, a2h, a2l, b2h, b2l, ah, al, bh_, bl = _bwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K,
                                                               inv_tau, KP, D, PREC, DXP)
    _gdc(GDC)
    S, s = _load_state_sum(tot_ptr, bh, 0, pid, P, KP, DV)
    G = tl.zeros((KP, DV), dtype=tl.float32)
    g = tl.zeros((KP,), dtype=tl.float32)
    pa, pb, pc = _param_init(KP, D, DLST)
    blk0, blk1 = _segment(N, bps, BLOCK)
    off = (b.to(tl.int64) * N * H + h)
    qbase = q_ptr + off * D
    kbase = k_ptr + off * D
    vbase = v_ptr + off * DV
    dobase = do_ptr + off * DV
    dqbase = dq_ptr + off * D
    auxbase = aux_ptr + bh.to(tl.int64) * 2 * N
    ii = tl.arange(0, BLOCK)
    tri = ii[:, None] >= ii[None, :]
    for blk in range(blk0, blk1):
        if WIDE:
            woff = blk * _opaque_zero(N)
            c2, a2h, a2l, b2h, b2l = _wide_logit_weights(wbase + woff, KP, D, PREC, WIDE)
        rows = blk * BLOCK + ii
        rm = rows < N
        xq = tl.load(_row_ptrs(qbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        xk = tl.load(_row_ptrs(kbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        do = tl.load(_row_ptrs(dobase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        rq = _resp(xq, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        rk = _resp(xk, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        rkt = tl.trans(rk)
        rkth, rktl = _split(rkt, PREC)
        doh, dol = _split(do, PREC)
        vt = tl.trans(v)
        vth, vtl = _split(vt, PREC)
        W = _mm(doh, dol, vth, vtl, tl.zeros((BLOCK, BLOCK), dtype=tl.float32), PREC, X_EXACT,
                X_EXACT, INTERP)
        W = tl.where(tri, W, 0.0)
        St = tl.trans(S)
        Sth = _hi(St, PREC)
        U = _mm(doh, dol, Sth, _lo(St, Sth, PREC), tl.zeros((BLOCK, KP), dtype=tl.float32), PREC,
                X_EXACT, False, INTERP)
        Wh = _hi(W, PREC)
        rkh = _hi(rk, PREC)
        rkl = _lo(rk, rkh, PREC)
        Y = _mm(Wh, _lo(W, Wh, PREC), rkh, rkl, U, PREC, False, False, INTERP)
        trih = _hi(tl.where(tri, 1.0, 0.0), PREC)
        C = _mm(trih, trih, rkh, rkl, tl.zeros((BLOCK, KP), dtype=tl.float32) + s[None, :], PREC,
                True, False, INTERP)
        d = tl.sum(rq * C, 1) + eps
        don = tl.sum(rq * Y, 1)
        rd = 1.0 / d                   # one division per row, products per element
        ddv = -don * (rd * rd)
        dR = Y * rd[:, None] + ddv[:, None] * C
        if WIDE:
            ah, al, bh_, bl = _wide_dx_weights(wbase + woff, KP, D, DXP, WIDE)
        dx, pa, pb, pc = _input_grads(rq, dR, xq, ah, al, bh_, bl, pa, pb, pc,
                                      _dl_rows(dl_ptr, bh, N, rows, KP), rm, BLOCK, D, PREC,
                                      X_EXACT, INTERP, WIDE, DXP, DLST, DXPASS)
        if not DXPASS:   # else the sums pass makes dx
            tl.store(_row_ptrs(dqbase, rows, H * D, D), _to_out(dx, dq_ptr),
                     mask=rm[:, None])
        tl.store(auxbase + rows, d, mask=rm)
        tl.store(auxbase + N + rows, ddv, mask=rm)
        dn = do.to(tl.float32) * rd[:, None]
        rqt = tl.trans(rq)
        rqth = _hi(rqt, PREC)
        dnh = _hi(dn, PREC)
        G = _mm(rqth, _lo(rqt, rqth, PREC), dnh, _lo(dn, dnh, PREC), G, PREC, False, False,
                INTERP)
        g += tl.sum(rq * ddv[:, None], 0)
        vh = _hi(v, PREC)
        S = _mm(rkth, rktl, vh, _lo(v, vh, PREC), S, PREC, False, X_EXACT, INTERP)
        s += tl.sum(rk, 0)
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    gbase = gtot_ptr + (bh.to(tl.int64) * P + pid) * (KP * (DV + 1))
    tl.store(gbase + kk[:, None] * DV + ee[None, :], G)
    tl.store(gbase + KP * DV + kk, g)
    if not DLST:
        _add_param_sums(pg_ptr, h, pa, pb, pc, KP, D)


@triton.jit
def _causal_bwd_k_kernel(q_ptr, k_ptr, v_ptr, do_ptr, mu_ptr, ls_ptr, mix_ptr, w_ptr, aux_ptr,
                         gtot_ptr, dk_ptr, dv_ptr, pg_ptr, dl_ptr, N, H, K, inv_tau, bps,
                         D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                         BLOCK: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                         INTERP: tl.constexpr, WIDE: tl.constexpr,
                         DXP: tl.constexpr, DLST: tl.constexpr,
                         DXPASS: tl.constexpr, AUXDL: tl.constexpr, GDC: tl.constexpr = False):
    """Reverse walk. Per chunk, with G, g the sums over later chunks:
    dR_k = dA^T R_q + V G^T + g, dv = A^T dn + R_k G; then G += R_q^T dn, g += R_q^T dd.
    AUXDL: the query side's d and dd of each row are the first two columns of that row in the
    dl buffer (autograd.py puts them there), which this block overwrites with its own dl only
    after its products have read them (every row's dl depends on the block's d and dd)."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    wbase = _wide_base(w_ptr, h, KP, D)   # WIDE: _prep_weights_kernel's buffer
    if not WIDE:   # once per program; WIDE: loaded per block (shared memory, _opaque_zero)
        c2, a2h, a2l, b2h, b2l, ah, al, bh_, bl = _bwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K,
                                                               inv_tau, KP, D, PREC, DXP)
    _gdc(GDC)
    G, g = _load_state_sum(gtot_ptr, bh, pid + 1, P, P, KP, DV)
    pa, pb, pc = _param_init(KP, D, DLST)
    blk0, blk1 = _segment(N, bps, BLOCK)
    off = (b.to(tl.int64) * N * H + h)
    qbase = q_ptr + off * D
    kbase = k_ptr + off * D
    vbase = v_ptr + off * DV
    dobase = do_ptr + off * DV
    dkbase = dk_ptr + off * D
    dvbase = dv_ptr + off * DV
    auxbase = aux_ptr + bh.to(tl.int64) * 2 * N
    ii = tl.arange(0, BLOCK)
    triT = ii[:, None] <= ii[None, :]
    for it in range(0, blk1 - blk0):
        blk = blk1 - 1 - it
        if WIDE:
            woff = blk * _opaque_zero(N)
            c2, a2h, a2l, b2h, b2l = _wide_logit_weights(wbase + woff, KP, D, PREC, WIDE)
        rows = blk * BLOCK + ii
        rm = rows < N
        xq = tl.load(_row_ptrs(qbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        xk = tl.load(_row_ptrs(kbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        do = tl.load(_row_ptrs(dobase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        if AUXDL:
            dptr = aux_ptr + (bh.to(tl.int64) * N + rows.to(tl.int64)) * KP
            d = tl.load(dptr, mask=rm, other=1.0)
            ddv = tl.load(dptr + 1, mask=rm, other=0.0)
        else:
            d = tl.load(auxbase + rows, mask=rm, other=1.0)
            ddv = tl.load(auxbase + N + rows, mask=rm, other=0.0)
        rq = _resp(xq, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        rk = _resp(xk, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        # transposed intra-chunk products: At[j, i] = A[i, j], dAt[j, i] = dA[i, j]
        rkh, rkl = _split(rk, PREC)
        rqt = tl.trans(rq)
        rqth, rqtl = _split(rqt, PREC)
        At = _mm(rkh, rkl, rqth, rqtl, tl.zeros((BLOCK, BLOCK), dtype=tl.float32), PREC, False,
                 False, INTERP)
        At = tl.where(triT, At, 0.0)
        vh, vl = _split(v, PREC)
        dot_ = tl.trans(do)
        doth = _hi(dot_, PREC)
        Wt = _mm(vh, vl, doth, _lo(dot_, doth, PREC), tl.zeros((BLOCK, BLOCK), dtype=tl.float32),
                 PREC, X_EXACT, X_EXACT, INTERP)
        rd = 1.0 / d                   # one division per row, products per element
        dAt = tl.where(triT, Wt * rd[None, :] + ddv[None, :], 0.0)
        dn = do.to(tl.float32) * rd[:, None]
        dnh, dnl = _split(dn, PREC)
        rqh, rql = _split(rq, PREC)
        Gt = tl.trans(G)
        Gth = _hi(Gt, PREC)
        dR = _mm(vh, vl, Gth, _lo(Gt, Gth, PREC), tl.zeros((BLOCK, KP), dtype=tl.float32), PREC,
                 X_EXACT, False, INTERP) + g[None, :]
        dAth = _hi(dAt, PREC)
        dR = _mm(dAth, _lo(dAt, dAth, PREC), rqh, rql, dR, PREC, False, False, INTERP)
        # dv is rounded to the input dtype: its products take DXP (_input_grads); R_k and A lie
        # in [0, 1]
        rkdh, rkdl = _split(rk, DXP, True)
        Gdh, Gdl = _split(G, DXP)
        dv = _mm(rkdh, rkdl, Gdh, Gdl, tl.zeros((BLOCK, DV), dtype=tl.float32), DXP, False, False,
                 INTERP)
        Adh, Adl = _split(At, DXP, True)
        dndh, dndl = _split(dn, DXP)
        dv = _mm(Adh, Adl, dndh, dndl, dv, DXP, False, False, INTERP)
        tl.store(_row_ptrs(dvbase, rows, H * DV, DV), _to_out(dv, dv_ptr),
                 mask=rm[:, None])
        if WIDE:
            ah, al, bh_, bl = _wide_dx_weights(wbase + woff, KP, D, DXP, WIDE)
        dx, pa, pb, pc = _input_grads(rk, dR, xk, ah, al, bh_, bl, pa, pb, pc,
                                      _dl_rows(dl_ptr, bh, N, rows, KP), rm, BLOCK, D, PREC,
                                      X_EXACT, INTERP, WIDE, DXP, DLST, DXPASS)
        if not DXPASS:   # else the sums pass makes dx
            tl.store(_row_ptrs(dkbase, rows, H * D, D), _to_out(dx, dk_ptr),
                     mask=rm[:, None])
        G = _mm(rqth, rqtl, dnh, dnl, G, PREC, False, False, INTERP)
        g += tl.sum(rq * ddv[:, None], 0)
    if not DLST:
        _add_param_sums(pg_ptr, h, pa, pb, pc, KP, D)
