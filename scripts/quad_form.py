"""On a GPU: is causal GMA at small N faster in its quadratic form, attention without the exponential?

Causal GMA is o_i = sum_{j<=i} A_ij v_j / (sum_{j<=i} A_ij + eps) with A = R_q R_k^T (SPEC), so
at small N it can be computed as flash attention computes softmax attention: per block of
queries, a loop over the key blocks at or before it, A's tile and A V accumulated in float32,
no state and no scan. It takes the O(N^2 (K + Dv)) products of softmax attention at head size K
instead of the chunk walk's O(N K (D + Dv)), but it has no chain from one block to the next:
every program is independent, and the tile loop has no exponential, running max or rescale.
The fused chunk walk loses the causal forward at N=2048 to flash-attn-4 (docs/kernels.md, "What
bounds the misses"); this script times the quadratic form there, replayed from a CUDA graph after
an L2 flush as gmabench's cells are, against gma's call and PyTorch's SDPA backends:

    call          gma_attention(..., causal=True, impl="triton") under no_grad
    sdpa_flash    torch SDPA, flash backend, causal (q, k, v of the same shape)
    sdpa_cudnn    torch SDPA, cuDNN backend, causal
    quad_BMxBN_wW_sS[_raw]  two launches: _resp_kernel (per BN-token block, its rows' R_q
                  and R_k in float16 and v as float16 scaled by a power of two per block),
                  then _quad_kernel (per BM-query block, heaviest first) with W warps and S
                  pipeline stages; _raw: v in float16 without its scale (the product
                  accumulated in place; wrong for v beyond float16's range, a form to time)
    quad_..._resp, quad_..._quad  (--parts) one launch of the two alone
    weights, store  (--parts) _resp_kernel's grid (64-token blocks) making only its head's
                  weights, or only storing one value: the start's cost and a launch's replayed

    python3 scripts/quad_form.py --out DIR [--n 2048] [--reps 3] [--parts]

writes DIR/quad_form.json. Under TRITON_INTERPRET=1 (no GPU) it times nothing and checks each
form against the float64 formula (interpreter_check; a test runs it).
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
from gmabench.gma.triton.common import (INTERPRET, _dot16, _fp16_scaled,  # noqa: E402
                                        _fwd_weights, _gdc, _pow2_scale, _resp_p, _row_ptrs,
                                        _to_out)


@triton.jit
def _resp_kernel(q_ptr, k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, rq_ptr, rk_ptr, v16_ptr, vs_ptr,
                 N, H, K, inv_tau, D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr,
                 BLOCK: tl.constexpr, RAW: tl.constexpr, INTERP: tl.constexpr,
                 GDC: tl.constexpr):
    """Rows [blk, blk + 1) * BLOCK of (b, h): r(q) and r(k) as float16 (B*H, N, KP), v / 2^e as
    float16 (B*H, N, DV) and 2^e (B*H, blocks) with 2^e the power of two at or above max|v| of
    the block (RAW: v as it is, 2^e = 1). Logits in scaled float16 products (precision "fp16",
    as the walk's)."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, 3)
    _gdc(GDC)
    rows = blk * BLOCK + tl.arange(0, BLOCK)
    rm = rows < N
    off = b.to(tl.int64) * N * H + h
    xq = tl.load(_row_ptrs(q_ptr + off * D, rows, H * D, D), mask=rm[:, None], other=0.0)
    xk = tl.load(_row_ptrs(k_ptr + off * D, rows, H * D, D), mask=rm[:, None], other=0.0)
    v = tl.load(_row_ptrs(v_ptr + off * DV, rows, H * DV, DV), mask=rm[:, None], other=0.0)
    pq, pqs = _resp_p(xq, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, 3, False, INTERP)
    pk, pks = _resp_p(xk, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, 3, False, INTERP)
    kk = tl.arange(0, KP)
    rbase = (bh.to(tl.int64) * N + rows.to(tl.int64))[:, None]
    tl.store(rq_ptr + rbase * KP + kk[None, :], (pq * (1.0 / pqs)[:, None]).to(tl.float16),
             mask=rm[:, None])
    tl.store(rk_ptr + rbase * KP + kk[None, :], (pk * (1.0 / pks)[:, None]).to(tl.float16),
             mask=rm[:, None])
    if RAW:
        vs = 1.0
        inv = 1.0
    else:
        vs, inv = _pow2_scale(v)
    tl.store(v16_ptr + rbase * DV + tl.arange(0, DV)[None, :], _fp16_scaled(v, inv),
             mask=rm[:, None])
    tl.store(vs_ptr + bh * tl.num_programs(0) + blk, vs)


@triton.jit
def _weights_kernel(mu_ptr, ls_ptr, mix_ptr, out_ptr, H, K, inv_tau, D: tl.constexpr,
                    KP: tl.constexpr, WEIGHTS: tl.constexpr):
    """_resp_kernel's grid doing only its head's weights (WEIGHTS) or nothing but one store:
    what those cost replayed (--parts)."""
    if WEIGHTS:
        c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, tl.program_id(1) % H, K,
                                              inv_tau, KP, D, 3)
        x = tl.sum(c2, 0) + a2l + b2l + tl.sum(tl.sum(a2h.to(tl.float32) + b2h.to(tl.float32),
                                                      1), 0)
    else:
        x = inv_tau
    tl.store(out_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), x)


@triton.jit
def _quad_tile(rq, rk_ptr, v16_ptr, vs_ptr, bh, j, rows, acc, den, N, nkb,
               DV: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, DIAG: tl.constexpr,
               RAW: tl.constexpr, INTERP: tl.constexpr):
    """acc += A V and den += rowsum(A) for key block j (A = R_q R_k^T, causal mask if DIAG)."""
    cols = j * BN + tl.arange(0, BN)
    cb = (bh.to(tl.int64) * N + cols.to(tl.int64))[:, None]
    if DIAG:
        cm = cols < N
        rk = tl.load(rk_ptr + cb * KP + tl.arange(0, KP)[None, :], mask=cm[:, None], other=0.0)
        vv = tl.load(v16_ptr + cb * DV + tl.arange(0, DV)[None, :], mask=cm[:, None], other=0.0)
    else:
        rk = tl.load(rk_ptr + cb * KP + tl.arange(0, KP)[None, :])
        vv = tl.load(v16_ptr + cb * DV + tl.arange(0, DV)[None, :])
    A = _dot16(rq, tl.trans(rk), tl.zeros((rq.shape[0], BN), dtype=tl.float32), INTERP)
    if DIAG:
        A = tl.where(cols[None, :] <= rows[:, None], A, 0.0)
    den += tl.sum(A, 1)
    if RAW:
        acc = _dot16(A.to(tl.float16), vv, acc, INTERP)
    else:
        vs = tl.load(vs_ptr + bh * nkb + j)
        acc += vs * _dot16(A.to(tl.float16), vv, tl.zeros(acc.shape, dtype=tl.float32), INTERP)
    return acc, den


@triton.jit
def _quad_kernel(rq_ptr, rk_ptr, v16_ptr, vs_ptr, o_ptr, N, H, eps, nqb, nkb,
                 DV: tl.constexpr, KP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                 RAW: tl.constexpr, INTERP: tl.constexpr, GDC: tl.constexpr,
                 NST: tl.constexpr = None):
    """o for the queries [i, i + 1) * BM of (b, h), i = nqb - 1 - program_id(1) (the longest
    loops first): the key blocks wholly before them, then those that meet them, masked."""
    bh = tl.program_id(0)
    i = nqb - 1 - tl.program_id(1)
    b = bh // H
    h = bh % H
    _gdc(GDC)
    rows = i * BM + tl.arange(0, BM)
    rm = rows < N
    rq = tl.load(rq_ptr + (bh.to(tl.int64) * N + rows.to(tl.int64))[:, None] * KP
                 + tl.arange(0, KP)[None, :], mask=rm[:, None], other=0.0)
    acc = tl.zeros((BM, DV), dtype=tl.float32)
    den = tl.zeros((BM,), dtype=tl.float32)
    full = (i * BM) // BN                     # key blocks that end at or before row i * BM
    last = tl.cdiv(tl.minimum((i + 1) * BM, N), BN)
    for j in tl.range(0, full, num_stages=NST):
        acc, den = _quad_tile(rq, rk_ptr, v16_ptr, vs_ptr, bh, j, rows, acc, den, N, nkb, DV, KP,
                              BN, False, RAW, INTERP)
    for j in range(full, last):
        acc, den = _quad_tile(rq, rk_ptr, v16_ptr, vs_ptr, bh, j, rows, acc, den, N, nkb, DV, KP,
                              BN, True, RAW, INTERP)
    o = acc * (1.0 / (den + eps))[:, None]
    obase = o_ptr + (b.to(tl.int64) * N * H + h) * DV
    tl.store(_row_ptrs(obase, rows, H * DV, DV), _to_out(o, o_ptr), mask=rm[:, None])


# (BM, BN, warps, stages, raw)
CONFIGS = [(64, 64, 4, 2, False), (64, 64, 4, 3, False), (64, 64, 4, 2, True),
           (128, 64, 8, 2, False), (128, 64, 4, 2, False), (64, 128, 4, 2, False),
           (128, 128, 8, 2, False), (128, 64, 8, 3, False), (128, 64, 8, 2, True)]


def config_name(BM, BN, W, S, raw):
    return f"quad_{BM}x{BN}_w{W}_s{S}" + ("_raw" if raw else "")


def launcher(tensors, BM, BN, warps, stages, raw, tau=1.0, eps=1e-6, part="both"):
    """A function running the quadratic form on these tensors with one configuration; part
    "resp" or "quad": that launch alone (after one run of both has filled the buffers)."""
    q, k, v, mu, ls, mix = tensors
    B, N, H, D = q.shape
    DV = v.shape[-1]
    K = mu.shape[1]
    KP = max(16, triton.next_power_of_2(K))
    nkb = triton.cdiv(N, BN)
    nqb = triton.cdiv(N, BM)
    dev = q.device
    rq = torch.empty(B * H, N, KP, device=dev, dtype=torch.float16)
    rk = torch.empty_like(rq)
    v16 = torch.empty(B * H, N, DV, device=dev, dtype=torch.float16)
    vs = torch.empty(B * H, nkb, device=dev, dtype=torch.float32)
    o = torch.empty_like(v)
    pdl = {} if INTERPRET else {"launch_pdl": True}

    def run(part=part):
        if part == "quad":
            return quad()
        _resp_kernel[(nkb, B * H)](q, k, v, mu, ls, mix, rq, rk, v16, vs, N, H, K, 1.0 / tau,
                                   D=D, DV=DV, KP=KP, BLOCK=BN, RAW=raw, INTERP=INTERPRET,
                                   GDC=not INTERPRET, num_warps=4)
        return o if part == "resp" else quad()

    def quad():
        _quad_kernel[(B * H, nqb)](rq, rk, v16, vs, o, N, H, eps, nqb, nkb, DV=DV, KP=KP, BM=BM,
                                   BN=BN, RAW=raw, INTERP=INTERPRET, GDC=not INTERPRET,
                                   NST=stages, num_warps=warps, **pdl)
        return o
    if part != "both":
        run("both")
    return run


def interpreter_check(N=100, H=2) -> int:
    """Under the interpreter, each configuration (at 16- and 32-token blocks, N not a multiple of
    either) against the float64 formula, within the SPEC's bound (twice gma_reference's error).
    0 if so, else 1."""
    from gmabench.gma.reference import gma_reference, gma_spec_float64
    ts = inputs(N, H=H, K=20)
    exact = gma_spec_float64(*ts, causal=True)
    bound = 2 * rel_err(gma_reference(*ts, causal=True), exact)
    bad = []
    for BM, BN, raw in ((16, 16, False), (32, 16, False), (16, 32, False), (16, 16, True)):
        err = rel_err(launcher(ts, BM, BN, 4, 2, raw)(), exact)
        name = config_name(BM, BN, 4, 2, raw)
        check_line(name, err, bound)
        if not err <= bound:
            bad.append(name)
    return verdict(bad)


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--parts", action="store_true",
                    help="also time each launch of the 64x128 and 64x64_s3 forms alone")
    args = ap.parse_args()
    if INTERPRET:
        raise SystemExit(interpreter_check())

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gmabench.gma.api import gma_attention
    dev = torch.device("cuda")
    ts = inputs(args.n, device=dev)
    q, k, v = (t.transpose(1, 2) for t in ts[:3])   # SDPA's (B, H, N, D)

    def sdpa(backend):
        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fn

    runs = {"call": lambda: gma_attention(*ts, causal=True, impl="triton"),
            "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    for cfg in CONFIGS:
        runs[config_name(*cfg)] = launcher(ts, *cfg)
    for cfg in (CONFIGS[5], CONFIGS[1]) if args.parts else ():
        for part in ("resp", "quad"):
            runs[f"{config_name(*cfg)}_{part}"] = launcher(ts, *cfg, part=part)
    if args.parts:
        sink = torch.empty(16 * triton.cdiv(args.n, 64), device=dev)
        for name, weights in (("weights", True), ("store", False)):
            runs[name] = (lambda w: lambda: _weights_kernel[(triton.cdiv(args.n, 64), 16)](
                *ts[3:], sink, 16, 64, 1.0, D=64, KP=64, WEIGHTS=w, num_warps=4))(weights)
    errors = {}
    with torch.no_grad():
        want = runs["call"]().clone()
        for name, fn in runs.items():
            if (name.startswith("quad") or name == "call") and not name.endswith("_resp"):
                errors[name] = rel_err(fn().clone(), want)
        times = time_interleaved(runs, dev, args.reps)
    print_times(times, errors)
    write_json(args.out, "quad_form.json", {"N": args.n, "B": 1, "H": 16, "D": 64, "K": 64,
                                            "dtype": "bfloat16", "us": times,
                                            "max_err_vs_call": errors})


if __name__ == "__main__":
    main()
