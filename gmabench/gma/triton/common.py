"""Triton building blocks shared by the fused GMA kernels.

Everything here is a `@triton.jit` helper that the kernels in bidir.py and causal.py inline:
the Gaussian parameters computed in-kernel from (mu, log_sigma, mix_logits), responsibilities
from a tile of routing vectors, precision-controlled matrix products, the softmax backward and
the per-tile input and parameter gradients.

Precision (constexpr PREC):
  0  "fast":  one bfloat16 tensor-core product per matmul (float32 accumulation).
  1  "split": every float32 operand is split into bfloat16 hi + lo parts and the product takes
              hi*hi + hi*lo + lo*hi (operands exact in bfloat16, such as bf16 inputs, skip their
              lo part). About 16 bits of operand precision at 2-3x the tensor-core work; this is
              what keeps bf16/fp16 results within the SPEC criterion (see docs/kernels.md).
  2  "ieee":  float32 operands, input_precision="ieee": exact float32 products without tensor
              cores (the exact twin of "tf32x3"; float32 inputs took it by default before).
  4  "tf32x3": float32 operands, input_precision="tf32x3": each operand split into tf32 hi + lo
              and three tensor-core products (hi*hi + hi*lo + lo*hi), about 22 bits per operand;
              the default for float32 inputs (docs/kernels.md, Version 2.15).
  3  "fp16":  forward kernels only: one float16 tensor-core product per matmul, each operand first
              scaled by a power of two (exact) so that it lies in [-1, 1]: no overflow whatever the
              inputs' range, and 11 significant bits, 8 times finer than bfloat16. The scale rides
              in the "lo" slot of the operand pair: _mm returns acc + (s_a * s_b) * (a' @ b').
              Output error: 1.04x gma_reference's in a float64 simulation (docs/kernels.md), at
              the tensor-core work of "fast". Backward kernels never run in this mode. The
              forward kernels take q, k and v with no scale at all where a check finds that
              exact ("raw", below: RAW_LOGIT_ERR), and their scaled form where it does not.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:   # Triton >= 3.4: programmatic dependent launch (launch_pdl, griddepcontrol)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_GDC = True
except ImportError:   # older Triton: no dependent launches (plan.py never asks for them)
    HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

# Read once, like triton.jit itself does: the env var must be set before this module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = tl.constexpr(1.4426950408889634)
# logit of a padded component: exp2 underflows to exactly 0, no inf arithmetic
NEG_BIG = tl.constexpr(-1.0e30)

PRECISIONS = {"fast": 0, "split": 1, "ieee": 2, "fp16": 3, "tf32x3": 4}
_INTERP = tl.constexpr(INTERPRET)


@triton.jit
def _gdc(GDC: tl.constexpr):
    """Programmatic dependent launch (plan key pdl): wait until the kernel launched before this
    one has finished and its writes are visible, then let the kernel after this one start
    launching. Every kernel calls it after making its head's weights from (mu, log_sigma,
    mix_logits), which no kernel of a call writes, and before any other load or store, so
    that this much of a kernel overlaps the end of the one before. A no-op for a kernel not
    launched as a dependent (a call's first)."""
    if GDC:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _sum_into(ptrs, x):
    """Add x into float32 sums that a later kernel reads (atomics). Relaxed: the sums need no
    order with anything else a program does, and Triton's default, acq_rel, puts a GPU-wide
    fence before each atomic and an L1 invalidation after it, a chain of 9-26 of them at the end
    of every program that took 21% off bidirectional training at N=2048 when they went
    (docs/kernels.md, Version 2.22)."""
    tl.atomic_add(ptrs, x, sem="relaxed")


@triton.jit
def _dot16(a, b, acc, INTERP: tl.constexpr):
    # Triton's interpreter stores bfloat16 as raw uint16 and its dot multiplies the raw integers;
    # upcasting first gives the same exact products with float32 accumulation.
    if INTERP:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _rne_bf16(x):
    """float32 -> bfloat16 rounding to nearest even (the GPU's default). Only needed under the
    interpreter, which truncates; done on the bits so that the final cast is exact."""
    bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _hi(x, PREC: tl.constexpr):
    if PREC == 2 or PREC == 4:
        y = x.to(tl.float32)
    elif _INTERP and x.dtype != tl.bfloat16:
        y = _rne_bf16(x)
    else:
        y = x.to(tl.bfloat16)
    return y


@triton.jit
def _lo(x, hi, PREC: tl.constexpr):
    if PREC == 1:
        rem = x.to(tl.float32) - hi.to(tl.float32)
        if _INTERP:
            y = _rne_bf16(rem)
        else:
            y = rem.to(tl.bfloat16)
    else:
        y = hi
    return y




@triton.jit
def _pow2(m):
    """(2^e, 2^-e) with 2^e the power of two at or above m (floored at 1e-30)."""
    e = tl.ceil(tl.log2(tl.maximum(m, 1e-30)))
    return tl.exp2(e), tl.exp2(-e)


@triton.jit
def _pow2_scale(x):
    """(2^e, 2^-e) with 2^e the power of two at or above max|x|: x * 2^-e lies in [-1, 1] and
    the scaling is exact."""
    return _pow2(tl.max(tl.max(tl.abs(x.to(tl.float32)), 1), 0))


@triton.jit
def _fp16_scaled(x, inv):
    """x * inv (a power of two from _pow2) in float16: exact, the scale carried apart."""
    return (x.to(tl.float32) * inv).to(tl.float16)


# "Raw" float16 (RAW16, precision fp16; docs/kernels.md, Version 2.9): q, k and v converted to
# float16 as they are, with no tile scale, when that loses nothing the scaled form keeps. bf16
# values convert exactly unless they are float16 subnormals or overflow, so two things are
# checked instead of a scale per tile (a reduction across warps per block):
# - overflow, after the fact: an infinite x or x*x makes a row's logits infinite or NaN, and
#   then its responsibilities and softmax sum (>= 1 for every finite row) NaN; so is the state
#   they are summed into (the causal walk adds a NaN there for a query row too), and an
#   infinite v makes it infinite; one check of the state at the end (_raw_state_ok) sends the
#   segment through the scaled form again (the bidirectional read-out keeps a flag instead);
# - subnormals: an x or x*x below 2^-14 rounds to a multiple of 2^-24, so the logits may err by
#   2^-25 times the sum of the weights' magnitudes (_raw_gate: at most RAW_LOGIT_ERR, once per
#   program); and v's: the state must not be tiny against its masses (v of magnitude below
#   RAW_V_MIN would keep fewer bits than a scaled tile).
RAW_SUBNORMAL_ERR = tl.constexpr(2.98023223876953125e-08)   # 2^-25: half a subnormal's step
RAW_LOGIT_ERR = tl.constexpr(6.103515625e-05)    # 2^-14, in log2 units
RAW_V_MIN = tl.constexpr(6.103515625e-05)        # 2^-14 (float16's smallest normal)
FLOAT_BIG = tl.constexpr(3.0e38)


@triton.jit
def _raw_gate(a2h, a2l, b2h, b2l):
    """1 if subnormal x or x*x (error <= 2^-25 each) move no logit by more than RAW_LOGIT_ERR
    under these logit weights (fp16 operand pairs, (D, KP)), else 0 (int32 scalar)."""
    wa = tl.sum(tl.abs(a2h.to(tl.float32)), 0) * a2l
    wb = tl.sum(tl.abs(b2h.to(tl.float32)), 0) * b2l
    return (tl.max(wa + wb, 0) * RAW_SUBNORMAL_ERR <= RAW_LOGIT_ERR).to(tl.int32)


@triton.jit
def _raw_state_ok(S, s):
    """1 (int32 scalar) if the state S (KP, DV) and masses s (KP) made with raw float16 are
    finite and S is not tiny against s (v of magnitude RAW_V_MIN or more), else 0."""
    aS = tl.abs(S)
    finite = tl.min(tl.min((aS <= FLOAT_BIG).to(tl.int32), 1), 0)
    finite = tl.minimum(finite, tl.min((tl.abs(s) <= FLOAT_BIG).to(tl.int32), 0))
    mS = tl.max(tl.max(aS, 1), 0)
    big = (mS == 0.0) | (mS >= RAW_V_MIN * tl.max(s, 0))
    return tl.minimum(finite, big.to(tl.int32))


@triton.jit
def _max_pair(a0, b0, a1, b1):
    return tl.maximum(a0, a1), tl.maximum(b0, b1)


@triton.jit
def _pow2_scale_pair(x, y):
    """_pow2_scale of two tiles of one shape, with one reduction across warps for both (each
    such reduction is a round trip through shared memory and a barrier)."""
    mx, my = tl.reduce((tl.abs(x.to(tl.float32)), tl.abs(y.to(tl.float32))), 1, _max_pair)
    mx, my = tl.reduce((mx, my), 0, _max_pair)
    sx, ix = _pow2(mx)
    sy, iy = _pow2(my)
    return sx, ix, sy, iy


@triton.jit
def _split(x, PREC: tl.constexpr, UNIT: tl.constexpr = False):
    """x as the operand pair that _mm takes: (hi, lo) in split precision, (hi, hi) in fast, ieee
    and tf32x3, (x / scale in float16, scale) in fp16 precision; UNIT: x is known to lie in
    [0, 1] (scale 1)."""
    if PREC == 3:
        if UNIT:
            hi = x.to(tl.float16)
            lo = 1.0
        else:
            lo, inv = _pow2_scale(x)
            hi = _fp16_scaled(x, inv)
    else:
        hi = _hi(x, PREC)
        lo = _lo(x, hi, PREC)
    return hi, lo


@triton.jit
def _mm(ah, al, bh, bl, acc, PREC: tl.constexpr, A_EXACT: tl.constexpr, B_EXACT: tl.constexpr,
        INTERP: tl.constexpr):
    """acc + a @ b from operand pairs made by _split (see the module docstring for PREC)."""
    if PREC == 2:
        acc = tl.dot(ah, bh, acc, input_precision="ieee")
    elif PREC == 4:
        acc = tl.dot(ah, bh, acc, input_precision="tf32x3")
    elif PREC == 3:
        acc = acc + (al * bl) * _dot16(ah, bh, tl.zeros(acc.shape, dtype=tl.float32), INTERP)
    else:
        acc = _dot16(ah, bh, acc, INTERP)
        if PREC == 1:
            if not B_EXACT:
                acc = _dot16(ah, bl, acc, INTERP)
            if not A_EXACT:
                acc = _dot16(al, bh, acc, INTERP)
    return acc


@triton.jit
def _load_mixture(mu_ptr, ls_ptr, mix_ptr, h, K, KP: tl.constexpr, D: tl.constexpr):
    """Head h's mu, log_sigma (KP, D) and mix_logits (KP) in float32; padded rows k >= K read
    as mu = log_sigma = 0 and mix_logits = NEG_BIG. Also returns the row mask and offsets."""
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    kmask = kk < K
    offs = h * K * D + kk[:, None] * D + dd[None, :]
    mu = tl.load(mu_ptr + offs, mask=kmask[:, None], other=0.0).to(tl.float32)
    ls = tl.load(ls_ptr + offs, mask=kmask[:, None], other=0.0).to(tl.float32)
    mix = tl.load(mix_ptr + h * K + kk, mask=kmask, other=NEG_BIG).to(tl.float32)
    return mu, ls, mix, kmask, offs


@triton.jit
def _gauss_params(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP: tl.constexpr, D: tl.constexpr):
    """a = mu/sigma^2/tau, b = 1/sigma^2/tau (KP, D) and c (KP) for head h, float32.

    Padded components (k >= K) get a = b = 0 and c = NEG_BIG, so their responsibility is 0.
    """
    mu, ls, mix, kmask, offs = _load_mixture(mu_ptr, ls_ptr, mix_ptr, h, K, KP, D)
    e = tl.where(kmask[:, None], tl.exp(-2.0 * ls), 0.0)
    a = mu * e * inv_tau
    b = e * inv_tau
    mmax = tl.max(mix, 0)
    lse = mmax + tl.log(tl.sum(tl.exp(mix - mmax), 0))
    c = (mix - lse - tl.sum(ls, 1) - 0.5 * tl.sum(mu * mu * e, 1)) * inv_tau
    c = tl.where(kmask, c, NEG_BIG)
    return a, b, c


@triton.jit
def _logit_weights(a, b, c, PREC: tl.constexpr):
    """Base-2 logit weights as operand pairs for _resp: c2 = c*log2(e) (KP), A2 = a*log2(e) and
    B2 = -b*log2(e)/2 transposed to (D, KP)."""
    a2h, a2l = _split(tl.trans(a * LOG2E), PREC)
    b2h, b2l = _split(tl.trans(b * (-0.5 * LOG2E)), PREC)
    return c * LOG2E, a2h, a2l, b2h, b2l


@triton.jit
def _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP: tl.constexpr, D: tl.constexpr,
                 PREC: tl.constexpr):
    """Head h's logit weights (_logit_weights), computed by the program itself: no prep launch."""
    a, b, c = _gauss_params(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D)
    return _logit_weights(a, b, c, PREC)


@triton.jit
def _bwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP: tl.constexpr, D: tl.constexpr,
                 PREC: tl.constexpr, DXP: tl.constexpr):
    """What a backward program needs of head h, made once per program: the logit weights, plus
    the natural a and b (KP, D) as operand pairs for the input gradients (_input_grads), in
    precision DXP. (The wide form loads its weights per block instead: _wide_logit_weights.)"""
    a, b, c = _gauss_params(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D)
    c2, a2h, a2l, b2h, b2l = _logit_weights(a, b, c, PREC)
    ah, al = _split(a, DXP)
    bh, bl = _split(b, DXP)
    return c2, a2h, a2l, b2h, b2l, ah, al, bh, bl


def wide_weights_len(KP: int, D: int) -> int:
    """Floats per head in _prep_weights_kernel's buffer (the layout of _wide_base)."""
    return 4 * KP * D + KP


@triton.jit
def _wide_base(w_ptr, h, KP: tl.constexpr, D: tl.constexpr):
    """Head h's slice of _prep_weights_kernel's buffer: wide_weights_len(KP, D) floats."""
    return w_ptr + h.to(tl.int64) * (4 * KP * D + KP)


@triton.jit
def _prep_weights_kernel(mu_ptr, ls_ptr, mix_ptr, w_ptr, K, inv_tau, KP: tl.constexpr,
                         D: tl.constexpr, GDC: tl.constexpr = False, FMT: tl.constexpr = 0,
                         FMT_DX: tl.constexpr = 0):
    """One program per head: the logit weights of the backward's wide form (Plan.WIDE), which
    loads them for every block from here (L2) rather than holding them through its walk or
    making them again from the Gaussian parameters. Per head (_wide_base):
    A2 = (a log2 e)^T and B2 = (-b log2 e / 2)^T as (D, KP), the same two untransposed (KP, D)
    for the input gradients, and c2 = c log2 e (KP): _logit_weights' values, laid out so that
    no block transposes them. Each of the four tiles takes KP * D floats, in the form its
    products take (_store_wide_tile; FMT for the logit weights, FMT_DX for the input gradients'):
    float32 values (0); the bfloat16 hi and lo parts that _split makes of them (1: split
    products, plan key wide_pairs), so that no block splits them; their scaled float16 form (3:
    fp16 products for the input gradients, plan key wide_dx16)."""
    h = tl.program_id(0)
    a, b, c = _gauss_params(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D)
    _gdc(GDC)
    at = a * LOG2E
    bt = b * (-0.5 * LOG2E)
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    base = _wide_base(w_ptr, h, KP, D)
    tr = dd[None, :] * KP + kk[:, None]    # A2[d, k] = at[k, d]
    nat = kk[:, None] * D + dd[None, :]
    _store_wide_tile(base, tr, at, KP * D, FMT)
    _store_wide_tile(base + KP * D, tr, bt, KP * D, FMT)
    _store_wide_tile(base + 2 * KP * D, nat, at, KP * D, FMT_DX)
    _store_wide_tile(base + 3 * KP * D, nat, bt, KP * D, FMT_DX)
    tl.store(base + 4 * KP * D + kk, c * LOG2E)


@triton.jit
def _store_wide_tile(tile, offs, x, n: tl.constexpr, FMT: tl.constexpr):
    """One weight tile of the wide buffer (n floats from `tile`): x in float32 (FMT 0), its
    split pair (1: the bf16 hi tile, then the lo tile) or its scaled float16 form (3: the fp16
    tile, then the power-of-two scale as one float), what _wide_pair loads for split (or
    single bf16) and fp16 products."""
    if FMT == 1:
        hi, lo = _split(x, 1)
        t16 = tile.to(tl.pointer_type(tl.bfloat16))
        tl.store(t16 + offs, hi)
        tl.store(t16 + n + offs, lo)
    elif FMT == 3:
        hi, scale = _split(x, 3)
        tl.store(tile.to(tl.pointer_type(tl.float16)) + offs, hi)
        tl.store(tile + n // 2, scale)
    else:
        tl.store(tile + offs, x)


@triton.jit
def _wide_pair(tile, offs, n: tl.constexpr, PREC: tl.constexpr, WIDE: tl.constexpr):
    """One weight tile of the wide buffer as the operand pair _mm takes in precision PREC:
    WIDE == 2, loaded as _store_wide_tile made it for PREC (the scaled fp16 tile and its scale
    for fp16 products, else the split pair: split or single bf16 products); WIDE == 1, float32
    split here."""
    if WIDE == 2 and PREC == 3:
        hi = tl.load(tile.to(tl.pointer_type(tl.float16)) + offs)
        lo = tl.load(tile + n // 2)
    elif WIDE == 2:
        t16 = tile.to(tl.pointer_type(tl.bfloat16))
        hi = tl.load(t16 + offs)
        if PREC == 1:
            lo = tl.load(t16 + n + offs)
        else:
            lo = hi
    else:
        hi, lo = _split(tl.load(tile + offs), PREC)
    return hi, lo


@triton.jit
def _wide_logit_weights(wbase, KP: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                        WIDE: tl.constexpr = 1):
    """The logit weights (c2, A2 and B2 as operand pairs) of one head, loaded from its slice of
    _prep_weights_kernel's buffer: the values _logit_weights makes. WIDE == 2: the buffer holds
    split pairs (plan key wide_pairs)."""
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    tr = dd[:, None] * KP + kk[None, :]
    a2h, a2l = _wide_pair(wbase, tr, KP * D, PREC, WIDE)
    b2h, b2l = _wide_pair(wbase + KP * D, tr, KP * D, PREC, WIDE)
    return tl.load(wbase + 4 * KP * D + kk), a2h, a2l, b2h, b2l


@triton.jit
def _wide_dx_weights(wbase, KP: tl.constexpr, D: tl.constexpr, DXP: tl.constexpr,
                     WIDE: tl.constexpr = 1):
    """a log2(e) and -b log2(e)/2 (KP, D: A2 and B2 untransposed) as operand pairs in precision
    DXP, for the wide form's input gradients: scaled fp16 (plan key wide_dx16) or the logit
    weights' precision."""
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    nat = kk[:, None] * D + dd[None, :]
    ah, al = _wide_pair(wbase + 2 * KP * D, nat, KP * D, DXP, WIDE)
    bh, bl = _wide_pair(wbase + 3 * KP * D, nat, KP * D, DXP, WIDE)
    return ah, al, bh, bl


@triton.jit
def _opaque_zero(N):
    """0 for any N >= 1, in a form the compiler cannot fold. A pointer offset by blk * this is not
    loop-invariant, so what is loaded through it inside the block loop stays there instead of
    being hoisted before it; Triton keeps hoisted dot operands in shared memory for the whole walk,
    which is what makes the wide shapes' backward too large (docs/kernels.md)."""
    return N // (N + 1)


@triton.jit
def _softmax_p(l2, rowmask):
    """exp2(l2 - its row max), rows outside the sequence zeroed, and the row sums."""
    m = tl.max(l2, 1)
    p = tl.exp2(l2 - m[:, None])
    return tl.where(rowmask[:, None], p, 0.0), tl.sum(p, 1)


@triton.jit
def _resp_p16(x, xs, inv, rowmask, c2, a2h, a2l, b2h, b2l, BLOCK: tl.constexpr,
              KP: tl.constexpr, INTERP: tl.constexpr):
    """_resp_p in "fp16" precision, with x's power-of-two scale given: x = xs * xh, |xh| <= 1."""
    xh = _fp16_scaled(x, inv)
    l2 = _mm(xh, xs, a2h, a2l, tl.zeros((BLOCK, KP), dtype=tl.float32) + c2[None, :], 3, False,
             False, INTERP)
    # xh * xh in float16 rounds once, as the float32 square rounded to float16 would
    l2 = _mm(xh * xh, xs * xs, b2h, b2l, l2, 3, False, False, INTERP)
    return _softmax_p(l2, rowmask)


@triton.jit
def _resp_p(x, rowmask, c2, a2h, a2l, b2h, b2l, BLOCK: tl.constexpr, KP: tl.constexpr,
            PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr):
    """Unnormalised responsibilities p (BLOCK, KP) in (0, 1], float32 (the largest of each row
    is 1), and their row sums: r = p / sum. Rows outside the sequence (rowmask False) get p = 0
    (their sums stay positive)."""
    if PREC == 3:
        xs, inv = _pow2_scale(x)
        p, psum = _resp_p16(x, xs, inv, rowmask, c2, a2h, a2l, b2h, b2l, BLOCK, KP, INTERP)
    else:
        l2 = tl.zeros((BLOCK, KP), dtype=tl.float32) + c2[None, :]
        xh, xl, x2h, x2l = _x_pairs(x, PREC)
        l2 = _mm(xh, xl, a2h, a2l, l2, PREC, X_EXACT, False, INTERP)
        l2 = _mm(x2h, x2l, b2h, b2l, l2, PREC, False, False, INTERP)
        p, psum = _softmax_p(l2, rowmask)
    return p, psum


@triton.jit
def _resp(x, rowmask, c2, a2h, a2l, b2h, b2l, BLOCK: tl.constexpr, KP: tl.constexpr,
          PREC: tl.constexpr, X_EXACT: tl.constexpr, INTERP: tl.constexpr):
    """Responsibilities (BLOCK, KP) in float32 of a tile x (BLOCK, D); rows outside the sequence
    (rowmask False) get 0 so they add nothing to any sum."""
    p, psum = _resp_p(x, rowmask, c2, a2h, a2l, b2h, b2l, BLOCK, KP, PREC, X_EXACT, INTERP)
    return p * (1.0 / psum)[:, None]


@triton.jit
def _input_grads(r, dR, x, ah, al, bh, bl, pa, pb, pc, dl_ptrs, rm, BLOCK: tl.constexpr,
                 D: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                 INTERP: tl.constexpr, WIDE: tl.constexpr, DXP: tl.constexpr,
                 DLST: tl.constexpr, DXPASS: tl.constexpr):
    """Softmax backward and the chain through l = c + x.a - 1/2 (x*x).b.

    r, dR: (BLOCK, KP) responsibilities and the gradient w.r.t. them; x (BLOCK, D).
    Returns dx (BLOCK, D) float32 and the running sums pa += dl^T x, pb += dl^T x^2, pc += sum dl
    (the gradients of a, b, c are pa, -pb/2, pc once all tiles are summed: _param_products).
    DLST: the sums are not made here; dl is stored through dl_ptrs (rows rm) for _dl_sums_kernel
    to make them in a pass of its own, and pa, pb, pc come back unchanged (docs/kernels.md,
    Version 2.17). WIDE: (ah, al), (bh, bl) are the logit weights a log2(e) and -b log2(e)/2
    (KP, D) in precision DXP (_wide_dx_weights). DXP: the precision of the products that feed dx
    alone (dl a, dl b; in the wide form the logit weights' precision unless the plan's wide_dx16
    asks for fp16 ones): dx is rounded to the input dtype, so for bf16 inputs
    scaled-fp16 products (11 bits) suffice there, while the parameter sums, which add up over
    every token, keep PREC. DXPASS (with DLST): dx is left to the sums pass too (_dl_dx, from
    the stored dl), and 0.0 comes back in its place.
    """
    dl = r * (dR - tl.sum(r * dR, 1)[:, None])
    if DXPASS:
        dx = 0.0
    elif WIDE:
        xf = x.to(tl.float32)
        dlh, dll = _split(dl, DXP)
        t_a = _mm(dlh, dll, ah, al, tl.zeros((BLOCK, D), dtype=tl.float32), DXP, False, False,
                  INTERP)
        t_b = _mm(dlh, dll, bh, bl, tl.zeros((BLOCK, D), dtype=tl.float32), DXP, False, False,
                  INTERP)
        dx = (t_a + 2.0 * xf * t_b) * (1.0 / LOG2E)
    else:
        dx = _dl_dx(dl, x, ah, al, bh, bl, BLOCK, D, DXP, INTERP)
    if DLST:
        tl.store(dl_ptrs, dl, mask=rm[:, None])
    else:
        pa, pb = _param_products(dl, x, pa, pb, PREC, X_EXACT, INTERP)
        pc += tl.sum(dl, 0)
    return dx, pa, pb, pc


@triton.jit
def _dl_dx(dl, x, ah, al, bh, bl, BLOCK: tl.constexpr, D: tl.constexpr, DXP: tl.constexpr,
           INTERP: tl.constexpr):
    """dx = dl a - x (dl b) for a tile of dl (BLOCK, KP) float32 and its x (BLOCK, D), with the
    natural weights as DXP operand pairs (_bwd_weights): the input gradient of the table form."""
    dxh, dxl = _split(dl, DXP)
    t_a = _mm(dxh, dxl, ah, al, tl.zeros((BLOCK, D), dtype=tl.float32), DXP, False, False, INTERP)
    t_b = _mm(dxh, dxl, bh, bl, tl.zeros((BLOCK, D), dtype=tl.float32), DXP, False, False, INTERP)
    return t_a - x.to(tl.float32) * t_b


@triton.jit
def _x_pairs(x, PREC: tl.constexpr):
    """x and x^2 (x a tile of q or k) as the (hi, lo) operand pairs of precision PREC: the two
    left operands of the logits' products and of the parameter sums'."""
    xf = x.to(tl.float32)
    xh = _hi(x, PREC)
    xl = _lo(xf, xh, PREC)
    x2 = xf * xf
    x2h = _hi(x2, PREC)
    return xh, xl, x2h, _lo(x2, x2h, PREC)


@triton.jit
def _param_products(dl, x, pa, pb, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                    INTERP: tl.constexpr):
    """pa += dl^T x, pb += dl^T x^2 for a tile of dl (BLOCK, KP) float32 and its x (BLOCK, D),
    in precision PREC (dl's column sums, the third parameter sum, are the caller's)."""
    dlh, dll = _split(dl, PREC)
    dlth = tl.trans(dlh)
    dltl = tl.trans(dll)
    xh, xl, x2h, x2l = _x_pairs(x, PREC)
    pa = _mm(dlth, dltl, xh, xl, pa, PREC, False, X_EXACT, INTERP)
    pb = _mm(dlth, dltl, x2h, x2l, pb, PREC, False, False, INTERP)
    return pa, pb


@triton.jit
def _param_init(KP: tl.constexpr, D: tl.constexpr, DLST: tl.constexpr):
    """A backward program's running parameter sums (pa, pb, pc): nothing to carry when its dl
    is stored instead (DLST)."""
    if DLST:
        pa = 0.0
        pb = 0.0
        pc = 0.0
    else:
        pa = tl.zeros((KP, D), dtype=tl.float32)
        pb = tl.zeros((KP, D), dtype=tl.float32)
        pc = tl.zeros((KP,), dtype=tl.float32)
    return pa, pb, pc


@triton.jit
def _dl_rows(dl_ptr, bh, N, rows, KP: tl.constexpr):
    """Pointers to rows of (b, h)'s dl in a (B*H, N, KP) float32 buffer."""
    kk = tl.arange(0, KP)
    return dl_ptr + (bh.to(tl.int64) * N + rows.to(tl.int64))[:, None] * KP + kk[None, :]


@triton.jit
def _dl_sums_kernel(x_ptr, dl_ptr, pg_ptr, dx_ptr, aux_ptr, mu_ptr, ls_ptr, mix_ptr, N, H, K,
                    inv_tau, rows_per_prog, D: tl.constexpr, DC: tl.constexpr, KP: tl.constexpr,
                    BLOCK: tl.constexpr, PREC: tl.constexpr, X_EXACT: tl.constexpr,
                    INTERP: tl.constexpr, DXPASS: tl.constexpr,
                    DXP: tl.constexpr, GDC: tl.constexpr = False, AUXCP: tl.constexpr = False):
    """The parameter sums of one side of a backward that stored its dl (DLST). Program
    (i, b*H + h, c) takes rows [i, i + 1) * rows_per_prog of (b, h) and x's columns
    [c, c + 1) * DC: pa = sum dl^T x, pb = sum dl^T x^2 over its rows (and, for c = 0,
    pc = sum dl), with the products the backward kernels would have made, added into the head's
    sums with atomics as _add_param_sums does. Its own grid, not the walk's segments: the sums
    have no order to keep, and many short programs keep the loads of dl and x in flight.
    DXPASS (DC = D, BLOCK the side's walk block): each block also makes dx = dl a - x (dl b)
    (_dl_dx, the walk's products on the walk's tiles) and stores it through dx_ptr.
    AUXCP (the causal query side's pass, where the key side reads the query side's per-row d and
    dd from the dl buffer, x's columns in one tile): once a block's dl is read, its rows' d and
    dd (aux_ptr: (B*H, 2, N) float32) go into their first two columns (docs/kernels.md,
    Version 2.26), and no copy between the passes moves them."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    c = tl.program_id(2)
    pa, pb, _ = _param_init(KP, DC, False)
    # dl's column sums elementwise, over rows once at the end: a sum across the rows of every
    # block (shuffles, shared memory) held up the pass (docs/kernels.md, Version 2.25)
    pcacc = tl.zeros((BLOCK, KP), dtype=tl.float32)
    xbase = x_ptr + (b.to(tl.int64) * N * H + h) * D + c * DC
    if DXPASS:
        a, b_, c_ = _gauss_params(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D)
        ah, al = _split(a, DXP)
        bh_, bl = _split(b_, DXP)
        dxbase = dx_ptr + (b.to(tl.int64) * N * H + h) * D
    _gdc(GDC)
    r0 = tl.program_id(0) * rows_per_prog
    r1 = tl.minimum(r0 + rows_per_prog, N)
    for start in range(r0, r1, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        rm = rows < r1
        x = tl.load(_row_ptrs(xbase, rows, H * D, DC), mask=rm[:, None], other=0.0)
        dl = tl.load(_dl_rows(dl_ptr, bh, N, rows, KP), mask=rm[:, None], other=0.0)
        pa, pb = _param_products(dl, x, pa, pb, PREC, X_EXACT, INTERP)
        pcacc += dl
        if AUXCP:
            abase = aux_ptr + bh.to(tl.int64) * 2 * N + rows
            d = tl.load(abase, mask=rm, other=0.0)
            dd = tl.load(abase + N, mask=rm, other=0.0)
            two = tl.arange(0, 2)[None, :]
            # after the products: dl reached them through shared memory behind a barrier of
            # every thread (the loop's pipelined loads, or the operands' staging), so no thread
            # writes a row before every thread has read it. (A tl.debug_barrier here stopped
            # Triton 3.6 from pipelining the loop's loads; a GPU test compares o, dq, dk, dv bit
            # for bit with the form that reads d, dd from their own buffer.)
            tl.store(dl_ptr + (bh.to(tl.int64) * N + rows.to(tl.int64))[:, None] * KP + two,
                     tl.where(two == 0, d[:, None], dd[:, None]), mask=rm[:, None])
        if DXPASS:
            dx = _dl_dx(dl, x, ah, al, bh_, bl, BLOCK, D, DXP, INTERP)
            tl.store(_row_ptrs(dxbase, rows, H * D, D), _to_out(dx, dx_ptr), mask=rm[:, None])
    kk = tl.arange(0, KP)
    cols = c * DC + tl.arange(0, DC)
    pbase = pg_ptr + h * (KP * (2 * D + 1))
    _sum_into(pbase + kk[:, None] * D + cols[None, :], pa)
    _sum_into(pbase + KP * D + kk[:, None] * D + cols[None, :], -0.5 * pb)
    if c == 0:
        _sum_into(pbase + 2 * KP * D + kk, tl.sum(pcacc, 0))


@triton.jit
def _add_param_sums(pg_ptr, h, pa, pb, pc, KP: tl.constexpr, D: tl.constexpr):
    """Add a program's partial sums dl^T x, dl^T x^2 and dl into its head's (a, b, c) gradients:
    da = sum dl^T x, db = -1/2 sum dl^T x^2, dc = sum dl (float32 atomics)."""
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    pbase = pg_ptr + h * (KP * (2 * D + 1))
    _sum_into(pbase + kk[:, None] * D + dd[None, :], pa)
    _sum_into(pbase + KP * D + kk[:, None] * D + dd[None, :], -0.5 * pb)
    _sum_into(pbase + 2 * KP * D + kk, pc)


@triton.jit
def _to_out(x, ptr):
    """Cast float32 x to ptr's element type, rounding to nearest even. Triton's interpreter
    truncates float32 -> bfloat16, which would double the output's rounding error in CPU tests,
    so there the rounding is done on the bits first (then the truncation is exact)."""
    if ptr.dtype.element_ty == tl.float32:
        y = x
    elif ptr.dtype.element_ty == tl.bfloat16 and _INTERP:
        y = _rne_bf16(x)
    else:
        y = x.to(ptr.dtype.element_ty)
    return y


@triton.jit
def _segment(N, bps, BLOCK: tl.constexpr):
    """Block range [blk0, blk1) of this program's segment (program_id(0))."""
    return _segment_at(tl.program_id(0), N, bps, BLOCK)


@triton.jit
def _segment_at(p, N, bps, BLOCK: tl.constexpr):
    """Block range [blk0, blk1) of segment p."""
    nblk = tl.cdiv(N, BLOCK)
    blk0 = p * bps
    blk1 = tl.minimum(blk0 + bps, nblk)
    return blk0, blk1


@triton.jit
def _prefetch_rows(base, row0, N, row_stride, W: tl.constexpr, ROWS: tl.constexpr,
                   INTERP: tl.constexpr):
    """Ask L2 for rows [row0, row0 + ROWS) of W elements (clamped to the N rows), one
    `prefetch.global.L2` per 128-byte line: nothing waits for it and no register holds it. A
    program issues it before its start (its head's weights), so that its first blocks' loads
    find their lines in L2 rather than in memory (docs/kernels.md, Version 2.36). No-op under
    the interpreter, which runs no PTX."""
    if not INTERP:
        bits: tl.constexpr = base.dtype.element_ty.primitive_bitwidth
        STEP: tl.constexpr = 1024 // bits                 # elements in a 128-byte line
        LINES: tl.constexpr = (W + STEP - 1) // STEP
        r = tl.minimum(row0 + tl.arange(0, ROWS), N - 1)
        ptrs = (base + r.to(tl.int64)[:, None] * row_stride
                + (tl.arange(0, LINES) * STEP)[None, :])
        tl.inline_asm_elementwise("mov.u32 $0, 0;\n\tprefetch.global.L2 [$1];", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _row_ptrs(base, rows, row_stride, W: tl.constexpr):
    cols = tl.arange(0, W)
    return base + rows.to(tl.int64)[:, None] * row_stride + cols[None, :]


@triton.jit
def _param_grad_kernel(mu_ptr, ls_ptr, mix_ptr, pg_ptr, dmu_ptr, dls_ptr, dmix_ptr, K, inv_tau,
                       KP: tl.constexpr, D: tl.constexpr, GDC: tl.constexpr = False):
    """One program per head: chain the summed gradients of (a, b, c) to mu, log_sigma, mix_logits.

    pg holds per head [pa (KP*D), pb (KP*D), pc (KP)] with pa = dL/da, pb = dL/db, pc = dL/dc.
    """
    h = tl.program_id(0)
    kk = tl.arange(0, KP)
    dd = tl.arange(0, D)
    mu, ls, mix, kmask, offs = _load_mixture(mu_ptr, ls_ptr, mix_ptr, h, K, KP, D)
    _gdc(GDC)
    base = pg_ptr + h * KP * (2 * D + 1)
    poffs = kk[:, None] * D + dd[None, :]
    pa = tl.load(base + poffs)
    pb = tl.load(base + KP * D + poffs)
    pc = tl.load(base + 2 * KP * D + kk)
    e = tl.exp(-2.0 * ls)
    dmu = (pa * e - pc[:, None] * mu * e) * inv_tau
    dls = (-2.0 * pa * mu * e - 2.0 * pb * e + pc[:, None] * (mu * mu * e - 1.0)) * inv_tau
    glsm = tl.where(kmask, pc * inv_tau, 0.0)
    mmax = tl.max(mix, 0)
    pm = tl.exp(mix - mmax)
    sm = pm / tl.sum(pm, 0)
    dmix = glsm - sm * tl.sum(glsm, 0)
    tl.store(dmu_ptr + offs, _to_out(dmu, dmu_ptr), mask=kmask[:, None])
    tl.store(dls_ptr + offs, _to_out(dls, dls_ptr), mask=kmask[:, None])
    tl.store(dmix_ptr + h * K + kk, _to_out(dmix, dmix_ptr), mask=kmask)
