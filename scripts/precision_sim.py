"""Which operand precision can GMA's forward products take and stay within the SPEC bound?

Simulates the fused kernels' forward in float64 with each product's operands rounded as a
precision mode would round them (float32 accumulation is closer to exact than any operand
rounding here, so float64 sums stand in for it), and prints the relative output error against
gma_spec_float64 next to gma_reference's (the SPEC bound is 2x that plus a small floor).

    python scripts/precision_sim.py [--n 2048] [--heads 4] [--k 64] [--d 64] [--seed 0]

Logit operand modes: exact, split (bf16 hi + lo pairs), fp16 (single float16, scaled into range),
bf16 (single bfloat16 = the kernels' "fast"). Value modes (R_k^T V, R_q M): the same, where fp16
scales M by its largest entry first. Inputs are bf16-valued 0.5 * randn, as in the tests.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gmabench.gma.reference import gma_reference, gma_spec_float64  # noqa: E402


def bf(x):
    return x.to(torch.bfloat16).double()


def f16(x):
    return x.to(torch.float16).double()


def split(x):
    hi = bf(x)
    return hi + bf(x - hi)


ROUND = {"exact": lambda x: x, "split": split, "fp16": f16, "bf16": bf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    B, N, H, D, K = 1, args.n, args.heads, args.d, args.k
    q, k, v = (bf(0.5 * torch.randn(B, N, H, D, dtype=torch.float64)) for _ in range(3))
    mu = 0.5 * torch.randn(H, K, D, dtype=torch.float64)
    ls = 0.1 * torch.randn(H, K, D, dtype=torch.float64)
    mix = 0.5 * torch.randn(H, K, dtype=torch.float64)
    exact = gma_spec_float64(q, k, v, mu, ls, mix)

    def rel(x):
        return ((x - exact).norm() / exact.norm()).item()

    half = [t.to(torch.bfloat16) for t in (q, k, v)]
    print(f"gma_reference (float32, bf16 in/out): {rel(gma_reference(*half, mu.float(), ls.float(), mix.float()).double()):.3e}")

    e = torch.exp(-2 * ls)
    a_w, b_w = (mu * e).transpose(1, 2), (-0.5 * e).transpose(1, 2)        # (H, D, K)
    c = torch.log_softmax(mix, -1) - ls.sum(-1) - 0.5 * (mu * mu * e).sum(-1)

    def resp(x, mode):
        rnd = ROUND[mode]
        logits = (c + torch.einsum("bnhd,hdk->bnhk", rnd(x), rnd(a_w))
                  + torch.einsum("bnhd,hdk->bnhk", rnd(x * x), rnd(b_w)))
        return torch.softmax(logits, -1)

    def output(logit_mode, value_mode):
        rnd = ROUND[value_mode]
        rq, rk = resp(q, logit_mode), resp(k, logit_mode)
        memory = torch.einsum("bnhk,bnhv->bhkv", rnd(rk), rnd(v))
        scale = memory.abs().amax()
        num = torch.einsum("bnhk,bhkv->bnhv", rnd(rq), rnd(memory / scale)) * scale
        den = torch.einsum("bnhk,bhk->bnh", rq, rk.sum(1)) + 1e-6
        return bf(num / den[..., None])                  # the kernel's output rounding

    for logit_mode in ROUND:
        for value_mode in ROUND:
            print(f"logits {logit_mode:6s} values {value_mode:6s}: {rel(output(logit_mode, value_mode)):.3e}")


if __name__ == "__main__":
    main()
