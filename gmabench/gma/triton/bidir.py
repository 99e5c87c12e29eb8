"""Bidirectional GMA kernels: the key pass that accumulates the latent memory, the query read-out,
and the two backward passes.

Grid of every kernel: (segments, B*H). A program walks the blocks of its segment of the sequence
of one (batch, head). Every program computes its head's Gaussian weights itself (no prep launch).
Tensors are contiguous (B, N, H, W). The memory state of one (b, h) is KP*(DV+1) float32:
M (KP, DV) then s (KP).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (_add_param_sums, _bwd_weights, _dl_rows, _fp16_scaled, _fwd_weights, _gdc, _hi,
                     _input_grads, _lo, _mm, _opaque_zero, _param_init, _pow2_scale_pair,
                     _raw_gate, _raw_state_ok, _resp, _resp_p, _resp_p16, _row_ptrs, _segment,
                     _split, _sum_into, _to_out, _wide_base, _wide_dx_weights,
                     _wide_logit_weights)


@triton.jit
def _state_blocks(xbase, vbase, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l,
                  D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                  PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                  RAW: tl.constexpr, NST: tl.constexpr = None):
    """The key pass's walk over blocks [blk0, blk1): S = R^T V and the masses summed
    elementwise. RAW (precision fp16 only): k and v converted to float16 with no tile scale
    (common.py, RAW_LOGIT_ERR); the caller checks the result (_raw_state_ok)."""
    S = tl.zeros((KP, DV), dtype=tl.float32)
    # the masses s = R^T 1, summed over the segment elementwise and over the rows once at the
    # end: a column sum per block (across warps, through shared memory) took 16% of the key
    # pass (docs/kernels.md, Version 2.8)
    sacc = tl.zeros((BLOCK, KP), dtype=tl.float32)
    for blk in tl.range(blk0, blk1, num_stages=NST):
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rm = rows < N
        x = tl.load(_row_ptrs(xbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        if RAW:   # a row that overflowed float16 turns S and the masses into NaN
            p, psum = _resp_p16(x, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
            r = p * (1.0 / psum)[:, None]
            vh = _fp16_scaled(v, 1.0)
            vl = 1.0
        elif PREC == 3 and D == DV:   # both tiles' scales from one reduction across warps
            xs, xinv, vl, vinv = _pow2_scale_pair(x, v)
            p, psum = _resp_p16(x, xs, xinv, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
            r = p * (1.0 / psum)[:, None]
            vh = _fp16_scaled(v, vinv)
        else:
            r = _resp(x, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
            vh, vl = _split(v, PREC)
        rth, rtl = _split(tl.trans(r), PREC, True)
        S = _mm(rth, rtl, vh, vl, S, PREC, False, X_EXACT, INTERP)
        sacc += r
    return S, sacc


@triton.jit
def _segment_state(k_ptr, v_ptr, b, h, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l,
                   D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                   PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                   RAW16: tl.constexpr, NST: tl.constexpr = None):
    """(M, s) = (R_k^T V, R_k^T 1) over blocks [blk0, blk1) of (b, h). RAW16 (precision fp16):
    first with k and v converted to float16 as they are, again with tile scales if the weights
    or the result say that lost precision (common.py, RAW_LOGIT_ERR). NST: the block loop's
    pipeline depth (None: the launch's)."""
    xbase = k_ptr + (b.to(tl.int64) * N * H + h) * D
    vbase = v_ptr + (b.to(tl.int64) * N * H + h) * DV
    if PREC == 3 and RAW16:
        S = tl.zeros((KP, DV), dtype=tl.float32)
        s = tl.zeros((KP,), dtype=tl.float32)
        ok = _raw_gate(a2h, a2l, b2h, b2l)
        if ok == 1:
            S, sacc = _state_blocks(xbase, vbase, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, D, DV,
                                    KP, BLOCK, PREC, X_EXACT, INTERP, True, NST)
            s = tl.sum(sacc, 0)
            ok = _raw_state_ok(S, s)
        if ok == 0:
            S, sacc = _state_blocks(xbase, vbase, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, D, DV,
                                    KP, BLOCK, PREC, X_EXACT, INTERP, False, 1)
            s = tl.sum(sacc, 0)
    else:
        S, sacc = _state_blocks(xbase, vbase, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, D, DV, KP,
                                BLOCK, PREC, X_EXACT, INTERP, False, NST)
        s = tl.sum(sacc, 0)
    return S, s


@triton.jit
def _state_kernel(k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, st_ptr, N, H, K, inv_tau, bps,
                  D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                  PREC: tl.constexpr, X_EXACT: tl.constexpr, ATOMIC: tl.constexpr,
                  INTERP: tl.constexpr, RAW16: tl.constexpr = False, GDC: tl.constexpr = False):
    """M = R_k^T V and s = R_k^T 1 over this program's segment of keys (_segment_state).

    ATOMIC: add into the one state of (b, h) (bidirectional); else store the segment's total at
    slot (b*H + h) * n_segments + segment (causal: the chunk walk starts from their prefix sum).
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    _gdc(GDC)
    blk0, blk1 = _segment(N, bps, BLOCK)
    S, s = _segment_state(k_ptr, v_ptr, b, h, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, D, DV,
                          KP, BLOCK, PREC, X_EXACT, INTERP, RAW16)
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    if ATOMIC:
        slot = bh
    else:
        slot = bh * tl.num_programs(0) + pid
    base = st_ptr + slot.to(tl.int64) * (KP * (DV + 1))
    if ATOMIC:
        _sum_into(base + kk[:, None] * DV + ee[None, :], S)
        _sum_into(base + KP * DV + kk, s)
    else:
        tl.store(base + kk[:, None] * DV + ee[None, :], S)
        tl.store(base + KP * DV + kk, s)


@triton.jit
def _out_blocks(xbase, obase, o_ptr, flag_ptr, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, Mh, Ml,
                s, eps, D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                RAW: tl.constexpr, NST: tl.constexpr = None):
    """The read-out's walk over blocks [blk0, blk1), storing o. RAW: q converted to float16
    with no tile scale (common.py, RAW_LOGIT_ERR); a row whose logits overflowed stores 1 at
    flag_ptr (a masked store: no lane stores in the common case, and nothing is carried from
    block to block)."""
    for blk in tl.range(blk0, blk1, num_stages=NST):
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rm = rows < N
        x = tl.load(_row_ptrs(xbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        # unnormalised: o = (p M) / (p.s + eps sum(p)), the same as (r M) / (r.s + eps)
        if RAW:
            p, psum = _resp_p16(x, 1.0, 1.0, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
            tl.store(flag_ptr + tl.zeros((BLOCK,), tl.int32), 1.0, mask=~(psum >= 1.0))
        else:
            p, psum = _resp_p(x, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        d = tl.sum(p * s[None, :], 1) + eps * psum
        ph, pl = _split(p, PREC, True)
        n = _mm(ph, pl, Mh, Ml, tl.zeros((BLOCK, DV), dtype=tl.float32), PREC, False, False, INTERP)
        o = n * (1.0 / d)[:, None]
        tl.store(_row_ptrs(obase, rows, H * DV, DV), _to_out(o, o_ptr),
                 mask=rm[:, None])


@triton.jit
def _bidir_out_kernel(q_ptr, mu_ptr, ls_ptr, mix_ptr, st_ptr, o_ptr, N, H, K, inv_tau, eps, bps,
                      D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                      PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                      RAW16: tl.constexpr = False, GDC: tl.constexpr = False):
    """o = (R_q M) / (R_q s + eps) for this program's segment of queries. RAW16 (precision
    fp16): q converted to float16 as it is, the segment read out again with tile scales if the
    weights or a row's logits say that lost precision (common.py, RAW_LOGIT_ERR); after the
    B*H states, st holds one flag per program for that (no zero fill: each program clears its
    own)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, PREC)
    _gdc(GDC)
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    sbase = st_ptr + bh.to(tl.int64) * (KP * (DV + 1))
    M = tl.load(sbase + kk[:, None] * DV + ee[None, :])
    s = tl.load(sbase + KP * DV + kk)
    Mh, Ml = _split(M, PREC)
    blk0, blk1 = _segment(N, bps, BLOCK)
    xbase = q_ptr + (b.to(tl.int64) * N * H + h) * D
    obase = o_ptr + (b.to(tl.int64) * N * H + h) * DV
    if PREC == 3 and RAW16:
        nbh = tl.num_programs(1)
        flag_ptr = st_ptr + nbh.to(tl.int64) * (KP * (DV + 1)) + tl.program_id(0) * nbh + bh
        ok = _raw_gate(a2h, a2l, b2h, b2l)
        if ok == 1:
            tl.store(flag_ptr, 0.0)
            tl.debug_barrier()   # every thread's clearing store before any thread's flag
            _out_blocks(xbase, obase, o_ptr, flag_ptr, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l,
                        Mh, Ml, s, eps, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, True)
            tl.debug_barrier()   # the program's flags visible to all of its threads
            ok = (tl.load(flag_ptr, volatile=True) == 0.0).to(tl.int32)
        if ok == 0:
            _out_blocks(xbase, obase, o_ptr, flag_ptr, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l,
                        Mh, Ml, s, eps, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, False, 1)
    else:
        _out_blocks(xbase, obase, o_ptr, st_ptr, blk0, blk1, N, H, c2, a2h, a2l, b2h, b2l, Mh, Ml,
                    s, eps, D, DV, KP, BLOCK, PREC, X_EXACT, INTERP, False)


@triton.jit
def _load_state_t(sbase, KP: tl.constexpr, DV: tl.constexpr, PREC: tl.constexpr):
    """The state M of one (b, h), transposed, as an operand pair, and its masses s."""
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    Mth, Mtl = _split(tl.trans(tl.load(sbase + kk[:, None] * DV + ee[None, :])), PREC)
    return Mth, Mtl, tl.load(sbase + KP * DV + kk)


@triton.jit
def _load_g(gbase, KP: tl.constexpr, DV: tl.constexpr, PREC: tl.constexpr, DXP: tl.constexpr):
    """The summed G = R_q^T dn of one (b, h) as operand pairs, G (for dv alone: precision DXP)
    and G^T, and g = R_q^T dd."""
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    G = tl.load(gbase + kk[:, None] * DV + ee[None, :])
    Gh, Gl = _split(G, DXP)
    Gth, Gtl = _split(tl.trans(G), PREC)
    return Gh, Gl, Gth, Gtl, tl.load(gbase + KP * DV + kk)


@triton.jit
def _bidir_bwd_q_kernel(q_ptr, do_ptr, mu_ptr, ls_ptr, mix_ptr, w_ptr, st_ptr, dq_ptr, g_ptr,
                        pg_ptr, dl_ptr, N, H, K, inv_tau, eps, bps,
                        D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                        PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                        WIDE: tl.constexpr, DXP: tl.constexpr, DLST: tl.constexpr,
                        DXPASS: tl.constexpr, GDC: tl.constexpr = False):
    """Query side of the backward: dq, and the reductions G = R_q^T dn, g = R_q^T dd (atomics into
    g_ptr per (b, h)) plus this side's parameter-gradient sums (atomics into pg_ptr per head).

    With P = do M^T: d = r.s + eps, do.o = (r.P)/d, dR_q = (P - (r.P)/d s)/d.
    """
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    sbase = st_ptr + bh.to(tl.int64) * (KP * (DV + 1))
    wbase = _wide_base(w_ptr, h, KP, D)   # WIDE: _prep_weights_kernel's buffer
    if not WIDE:   # once per program; WIDE: loaded per block (shared memory, _opaque_zero)
        c2, a2h, a2l, b2h, b2l, ah, al, bh_, bl = _bwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K,
                                                               inv_tau, KP, D, PREC, DXP)
    _gdc(GDC)
    if not WIDE:
        Mth, Mtl, s = _load_state_t(sbase, KP, DV, PREC)
    G = tl.zeros((KP, DV), dtype=tl.float32)
    g = tl.zeros((KP,), dtype=tl.float32)
    pa, pb, pc = _param_init(KP, D, DLST)
    blk0, blk1 = _segment(N, bps, BLOCK)
    xbase = q_ptr + (b.to(tl.int64) * N * H + h) * D
    dxbase = dq_ptr + (b.to(tl.int64) * N * H + h) * D
    dobase = do_ptr + (b.to(tl.int64) * N * H + h) * DV
    for blk in range(blk0, blk1):
        if WIDE:
            woff = blk * _opaque_zero(N)
            c2, a2h, a2l, b2h, b2l = _wide_logit_weights(wbase + woff, KP, D, PREC, WIDE)
            Mth, Mtl, s = _load_state_t(sbase + woff, KP, DV, PREC)
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rm = rows < N
        x = tl.load(_row_ptrs(xbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        do = tl.load(_row_ptrs(dobase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        r = _resp(x, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        doh = _hi(do, PREC)
        P = _mm(doh, _lo(do, doh, PREC), Mth, Mtl, tl.zeros((BLOCK, KP), dtype=tl.float32), PREC,
                X_EXACT, False, INTERP)
        d = tl.sum(r * s[None, :], 1) + eps
        rP = tl.sum(r * P, 1)
        rd = 1.0 / d                   # one division per row, products per element
        dR = (P - (rP * rd)[:, None] * s[None, :]) * rd[:, None]
        if WIDE:
            ah, al, bh_, bl = _wide_dx_weights(wbase + woff, KP, D, DXP, WIDE)
        dx, pa, pb, pc = _input_grads(r, dR, x, ah, al, bh_, bl, pa, pb, pc,
                                      _dl_rows(dl_ptr, bh, N, rows, KP), rm, BLOCK, D, PREC,
                                      X_EXACT, INTERP, WIDE, DXP, DLST, DXPASS)
        if not DXPASS:   # else the sums pass makes dx
            tl.store(_row_ptrs(dxbase, rows, H * D, D), _to_out(dx, dq_ptr),
                     mask=rm[:, None])
        dn = do.to(tl.float32) * rd[:, None]
        ddv = -rP * (rd * rd)
        rt = tl.trans(r)
        rth = _hi(rt, PREC)
        dnh = _hi(dn, PREC)
        G = _mm(rth, _lo(rt, rth, PREC), dnh, _lo(dn, dnh, PREC), G, PREC, False, False, INTERP)
        g += tl.sum(r * ddv[:, None], 0)
    gbase = g_ptr + bh.to(tl.int64) * (KP * (DV + 1))
    _sum_into(gbase + kk[:, None] * DV + ee[None, :], G)
    _sum_into(gbase + KP * DV + kk, g)
    if not DLST:
        _add_param_sums(pg_ptr, h, pa, pb, pc, KP, D)


@triton.jit
def _bidir_bwd_k_kernel(k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, w_ptr, g_ptr, dk_ptr, dv_ptr, pg_ptr,
                        dl_ptr, N, H, K, inv_tau, bps,
                        D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                        PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr,
                        WIDE: tl.constexpr, DXP: tl.constexpr, DLST: tl.constexpr,
                        DXPASS: tl.constexpr, GDC: tl.constexpr = False):
    """Key side of the backward: dR_k = V G^T + g, dv = R_k G, then dk and parameter sums."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    gbase = g_ptr + bh.to(tl.int64) * (KP * (DV + 1))
    wbase = _wide_base(w_ptr, h, KP, D)   # WIDE: _prep_weights_kernel's buffer
    if not WIDE:   # once per program; WIDE: loaded per block (shared memory, _opaque_zero)
        c2, a2h, a2l, b2h, b2l, ah, al, bh_, bl = _bwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K,
                                                               inv_tau, KP, D, PREC, DXP)
    _gdc(GDC)
    if not WIDE:
        Gh, Gl, Gth, Gtl, g = _load_g(gbase, KP, DV, PREC, DXP)
    pa, pb, pc = _param_init(KP, D, DLST)
    blk0, blk1 = _segment(N, bps, BLOCK)
    xbase = k_ptr + (b.to(tl.int64) * N * H + h) * D
    dxbase = dk_ptr + (b.to(tl.int64) * N * H + h) * D
    vbase = v_ptr + (b.to(tl.int64) * N * H + h) * DV
    dvbase = dv_ptr + (b.to(tl.int64) * N * H + h) * DV
    for blk in range(blk0, blk1):
        if WIDE:
            woff = blk * _opaque_zero(N)
            c2, a2h, a2l, b2h, b2l = _wide_logit_weights(wbase + woff, KP, D, PREC, WIDE)
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rm = rows < N
        x = tl.load(_row_ptrs(xbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        r = _resp(x, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
        if WIDE:   # G after the logits, the dx weights after G: one set resident at a time
            Gh, Gl, Gth, Gtl, g = _load_g(gbase + woff, KP, DV, PREC, DXP)
        vh = _hi(v, PREC)
        dR = _mm(vh, _lo(v, vh, PREC), Gth, Gtl, tl.zeros((BLOCK, KP), dtype=tl.float32), PREC,
                 X_EXACT, False, INTERP) + g[None, :]
        rh, rl = _split(r, DXP, True)   # dv is rounded to the input dtype: DXP (_input_grads)
        dv = _mm(rh, rl, Gh, Gl, tl.zeros((BLOCK, DV), dtype=tl.float32), DXP, False, False,
                 INTERP)
        tl.store(_row_ptrs(dvbase, rows, H * DV, DV), _to_out(dv, dv_ptr),
                 mask=rm[:, None])
        if WIDE:
            ah, al, bh_, bl = _wide_dx_weights(wbase + woff, KP, D, DXP, WIDE)
        dx, pa, pb, pc = _input_grads(r, dR, x, ah, al, bh_, bl, pa, pb, pc,
                                      _dl_rows(dl_ptr, bh, N, rows, KP), rm, BLOCK, D, PREC,
                                      X_EXACT, INTERP, WIDE, DXP, DLST, DXPASS)
        if not DXPASS:   # else the sums pass makes dx
            tl.store(_row_ptrs(dxbase, rows, H * D, D), _to_out(dx, dk_ptr),
                     mask=rm[:, None])
    if not DLST:
        _add_param_sums(pg_ptr, h, pa, pb, pc, KP, D)
