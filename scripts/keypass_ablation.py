"""On a GPU: where the key pass's time goes, by timing it against ablated forms of itself.

The key pass (bidir.py `_state_kernel`, inference precision "fp16") took 365-375 us at N=131072,
B=1, H=16, D=Dv=K=64 whatever its block, depth or precision (results/2026-11-29-h200-stages), three
times the 126 us its 537 MB need at the copy rate. (Its first ablation, with the masses summed
over the columns every block, is results/2026-11-29-h200-keypass; this form mirrors the kernel
since.) Each form below is the same loop over the same
grid and plan with parts taken out; the differences attribute the time:

    loads      the loads of k and v alone (each tile summed into a register accumulator)
    softmax    + the logits (two scaled-fp16 products) and the softmax, the masses kept
    full       + the value product R^T V: the key pass itself (a check of the harness)
    noxscale   full, x converted to float16 without its power-of-two tile scale
    novscale   full, v likewise
    nomass     full without the masses (R summed elementwise, columns summed at the end)
    bare       full without either scale or the masses
    nosoftmax  full with R = the logits themselves (no max, exp2, sum or normalisation)
    nologits   full with R = |k| (no logit products, no softmax)

    python3 scripts/keypass_ablation.py --out DIR    (writes DIR/keypass_ablation.json)

`_state_kernel` itself is timed in its scaled form (RAW16 off): since docs/kernels.md Version 2.9
gmabench's calls convert k and v to float16 without tile scales where that loses nothing, which
is what the noxscale and novscale forms measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gmabench.gma.triton.bidir import _state_kernel  # noqa: E402
from gmabench.gma.triton.common import (LOG2E, _dot16, _fwd_weights, _mm, _resp,  # noqa: E402
                                        _row_ptrs, _segment, _split)
from gmabench.gma.triton.plan import make_plan  # noqa: E402

FORMS = {  # name: (STEP, XSCALE, VSCALE, MASS, SOFT): SOFT 1 softmax, 0 the logits, -1 |k|
    "loads": (0, 1, 1, 1, 1), "softmax": (1, 1, 1, 1, 1), "full": (2, 1, 1, 1, 1),
    "noxscale": (2, 0, 1, 1, 1), "novscale": (2, 1, 0, 1, 1), "nomass": (2, 1, 1, 0, 1),
    "bare": (2, 0, 0, 0, 1), "nosoftmax": (2, 1, 1, 1, 0), "nologits": (2, 1, 1, 1, -1),
}


@triton.jit
def _ablated_kernel(k_ptr, v_ptr, mu_ptr, ls_ptr, mix_ptr, st_ptr, N, H, K, inv_tau, bps,
                    D: tl.constexpr, DV: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr,
                    STEP: tl.constexpr, XSCALE: tl.constexpr, VSCALE: tl.constexpr,
                    MASS: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    c2, a2h, a2l, b2h, b2l = _fwd_weights(mu_ptr, ls_ptr, mix_ptr, h, K, inv_tau, KP, D, 3)
    blk0, blk1 = _segment(N, bps, BLOCK)
    xbase = k_ptr + (b.to(tl.int64) * N * H + h) * D
    vbase = v_ptr + (b.to(tl.int64) * N * H + h) * DV
    S = tl.zeros((KP, DV), dtype=tl.float32)
    sacc = tl.zeros((BLOCK, KP), dtype=tl.float32)
    acc = tl.zeros((BLOCK, D), dtype=tl.float32)
    for blk in range(blk0, blk1):
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rm = rows < N
        x = tl.load(_row_ptrs(xbase, rows, H * D, D), mask=rm[:, None], other=0.0)
        v = tl.load(_row_ptrs(vbase, rows, H * DV, DV), mask=rm[:, None], other=0.0)
        if STEP == 0:
            acc += x.to(tl.float32) + v.to(tl.float32)
        else:
            if SOFT == -1:
                r = tl.abs(x.to(tl.float32))
            elif SOFT == 0:
                xh, xs = _split(x, 3)
                l2 = _mm(xh, xs, a2h, a2l, tl.zeros((BLOCK, KP), dtype=tl.float32) + c2[None, :],
                         3, False, False, INTERP)
                r = _mm(xh * xh, xs * xs, b2h, b2l, l2, 3, False, False, INTERP) * 1e-3
            elif XSCALE:
                r = _resp(x, rm, c2, a2h, a2l, b2h, b2l, BLOCK, KP, 3, False, INTERP)
            else:
                x16 = x.to(tl.float16)
                l2 = _dot16(x16, a2h, tl.zeros((BLOCK, KP), dtype=tl.float32), INTERP) * a2l
                l2 += _dot16(x16 * x16, b2h, tl.zeros((BLOCK, KP), dtype=tl.float32), INTERP) * b2l
                l2 += c2[None, :]
                p = tl.exp2(l2 - tl.max(l2, 1)[:, None])
                r = tl.where(rm[:, None], p * (1.0 / tl.sum(p, 1))[:, None], 0.0)
            if MASS:
                sacc += r
            if STEP == 1:
                acc += v.to(tl.float32)
            else:
                rth = tl.trans(r).to(tl.float16)
                if VSCALE:
                    vh, vl = _split(v, 3)
                else:
                    vh = v.to(tl.float16)
                    vl = 1.0
                S = _mm(rth, 1.0, vh, vl, S, 3, False, False, INTERP)
    kk = tl.arange(0, KP)
    ee = tl.arange(0, DV)
    base = st_ptr + (bh * tl.num_programs(0) + pid).to(tl.int64) * (KP * (DV + 1))
    S += tl.sum(tl.sum(acc, 1), 0) * LOG2E   # keeps the loads of the reduced forms alive
    s = tl.sum(sacc, 0)
    tl.store(base + kk[:, None] * DV + ee[None, :], S)
    tl.store(base + KP * DV + kk, s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--n", type=int, default=131072)
    args = ap.parse_args()
    B, N, H, D, K = 1, args.n, 16, 64, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    k = (0.5 * torch.randn(B, N, H, D, generator=g, device="cuda")).to(torch.bfloat16)
    v = (0.5 * torch.randn(B, N, H, D, generator=g, device="cuda")).to(torch.bfloat16)
    mu = 0.5 * torch.randn(H, K, D, generator=g, device="cuda")
    ls = 0.1 * torch.randn(H, K, D, generator=g, device="cuda")
    mix = torch.randn(H, K, generator=g, device="cuda")
    pl = make_plan(B, N, H, K, D, D, False, k.device, grad=False)
    grid = (pl.P, B * H)
    st = torch.zeros(B * H * pl.P * pl.KP * (D + 1), device="cuda")
    opts = dict(num_warps=pl.warps_fwd, num_stages=pl.stages_key)
    common = dict(D=D, DV=D, KP=pl.KP, BLOCK=pl.BLOCK_KEY, INTERP=False)
    rows = []

    def time_it(name, fn):
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        gbs = 2 * k.numel() * 2 / (ms * 1e-3) / 1e9   # bytes of k and v
        rows.append({"form": name, "us": ms * 1e3, "GB_per_s": gbs})
        print(f"{name:10s} {ms * 1e3:8.1f} us  ({gbs:.0f} GB/s of k and v)", flush=True)

    def kernel():
        _state_kernel[grid](k, v, mu, ls, mix, st, N, H, K, 1.0, pl.bps_key, PREC=3, X_EXACT=True,
                            ATOMIC=False, **common, **opts)

    time_it("kernel", kernel)   # first and last: the clocks may still be rising at first
    full = None
    for name, (step, xs, vs, mass, soft) in FORMS.items():
        def call(step=step, xs=xs, vs=vs, mass=mass, soft=soft):
            _ablated_kernel[grid](k, v, mu, ls, mix, st, N, H, K, 1.0, pl.bps_key, STEP=step,
                                  XSCALE=xs, VSCALE=vs, MASS=mass, SOFT=soft, **common, **opts)
        time_it(name, call)
        if name == "full":
            torch.cuda.synchronize()
            full = st.clone()
    time_it("kernel", kernel)
    # the harness's full form computes what the key pass does (same slots, plain stores)
    kernel()
    torch.cuda.synchronize()
    same = bool(torch.equal(full, st))
    print("full form == key pass:", same)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "keypass_ablation.json"), "w") as fh:
        json.dump({"N": N, "B": B, "H": H, "D": D, "K": K, "plan": pl.__dict__, "device":
                   torch.cuda.get_device_name(), "triton": triton.__version__,
                   "full_equals_kernel": same, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
