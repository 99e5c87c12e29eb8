"""Why fla's normalised linear attention returns coarse or wrong dq and dk in 16-bit: a CPU model.

fla 0.6.0's `chunk_linear_attn(normalize=True)` (the `fla-linear-attention` mixer) runs the
unnormalised attention in its Triton kernels and the normalisation in PyTorch, on tensors of the
inputs' dtype, with a hand-written backward: the key cumsum k_cum, denom = q.k_cum, o / denom, and
backward terms do / denom and -(do . o_un) / (denom * denom), the last multiplied by k_cum (dq)
and by q (the cumsum behind dk). This script models that path and nothing else:

- the kernels as exact float64 products rounded once to the dtype (as a float32-accumulating
  kernel writing 16-bit outputs does at best), so any error found is not theirs;
- the normalisation step by step in the dtype, as PyTorch evaluates it there;
- elu+1 features as the mixer makes them (float32, then the dtype);

and compares dq, dk, dv against float64 autograd of the same function, on the inputs of a
gmabench accuracy check (1024 tokens, 0.5 * randn rounded to the dtype). Run:

    python scripts/fla_norm_sim.py [--tokens 1024 --heads 16 --dim 64]

It prints the relative errors per dtype, and the part of the float16 rows whose denom * denom
overflowed (float16's largest value is 65504, so any denominator above 255.9 overflows).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def _causal_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.float64).tril()


def _attn_un(fq, fk, v):
    """Unnormalised causal linear attention per head, float64: (B, N, H, D) -> (B, N, H, Dv)."""
    scores = torch.einsum("bnhd,bmhd->bhnm", fq, fk) * _causal_mask(fq.shape[1])
    return torch.einsum("bhnm,bmhe->bnhe", scores, v)


def _attn_un_grads(fq, fk, v, do):
    """The kernels' backward: exact gradients of _attn_un for the output gradient do, float64."""
    mask = _causal_mask(fq.shape[1])
    dp = torch.einsum("bnhe,bmhe->bhnm", do, v) * mask
    scores = torch.einsum("bnhd,bmhd->bhnm", fq, fk) * mask
    dfq = torch.einsum("bhnm,bmhd->bnhd", dp, fk)
    dfk = torch.einsum("bhnm,bnhd->bmhd", dp, fq)
    dv = torch.einsum("bhnm,bnhe->bmhe", scores, do)
    return dfq, dfk, dv


def exact_grads(q, k, v, do):
    """float64 autograd of elu+1 features, normalised causal linear attention (eps 1e-10)."""
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    denom = (fq * fk.cumsum(1)).sum(-1, keepdim=True) + 1e-10
    o = _attn_un(fq, fk, v) / denom
    return torch.autograd.grad(o, (q, k, v), do.double())


def modelled_grads(q, k, v, do, dtype):
    """The same gradients as the path above computes them in `dtype` (module docstring)."""
    fq, fk = ((F.elu(x.float()) + 1).to(dtype) for x in (q, k))
    o_un = _attn_un(fq.double(), fk.double(), v.double()).to(dtype)
    k_cum = fk.float().cumsum(1).to(dtype)               # float32 accumulation, dtype output
    denom = (fq * k_cum).sum(-1, keepdim=True) + 1e-10   # elementwise in dtype, sum accumulated
    do = do.to(dtype)
    d_o_in = do / denom
    ddenom = -(do * o_un).sum(-1, keepdim=True) / (denom * denom)
    dfq_norm = ddenom * k_cum
    dk_cum = ddenom * fq
    dfk_norm = dk_cum.float().flip(1).cumsum(1).flip(1).to(dtype)   # the reverse cumsum
    dfq_un, dfk_un, dv = (g.to(dtype) for g in _attn_un_grads(fq.double(), fk.double(),
                                                               v.double(), d_o_in.double()))
    dfq, dfk = dfq_un + dfq_norm, dfk_un + dfk_norm       # autograd sums the two in dtype
    # elu+1 backward as the mixer's float32 features take it, back to the inputs' dtype
    dq, dk = ((g.float() * torch.where(x.float() > 0, 1.0, torch.exp(x.float()))).to(dtype)
              for g, x in ((dfq, q), (dfk, k)))
    overflow = torch.isinf((denom * denom).float()).float().mean().item()
    return (dq, dk, dv), overflow


def rel(a, b) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    shape = (1, args.tokens, args.heads, args.dim)
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v, do = ((0.5 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(4))
        exact = exact_grads(q, k, v, do)
        (dq, dk, dv), overflow = modelled_grads(q, k, v, do, dtype)
        print(f"{str(dtype)[6:]:>8}: relative error dq {rel(dq, exact[0]):.3g}, dk {rel(dk, exact[1]):.3g}, "
              f"dv {rel(dv, exact[2]):.3g}; rows whose denom*denom overflowed: {overflow:.1%}")


if __name__ == "__main__":
    main()
