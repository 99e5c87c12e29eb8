"""Performer (FAVOR+, Choromanski et al. 2021): softmax attention approximated by K positive
orthogonal random features, then normalised linear attention on those features.

    x' = x * D^(-1/4),   phi(x') = exp(w_r . x' - |x'|^2 / 2) / sqrt(m),   r = 1..m,  m = K

so that E[phi(q') . phi(k')] = exp(q . k / sqrt(D)). The random projection w (H, m, D) is drawn
in make_params from the generator (deterministic) and is not trained.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from gmabench.mixers.base import Inputs, Mixer, Shape
from gmabench.mixers.linear import accumulation_dtype, normalised_linear_attention, normalised_linear_flops

__all__ = ["Performer", "orthogonal_features"]


def orthogonal_features(H: int, m: int, D: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, m, D): per head, blocks of D orthogonal directions, each row scaled to the norm of an
    independent Gaussian vector, so rows are marginally N(0, I) but mutually orthogonal per block."""
    heads = []
    for _ in range(H):
        blocks = []
        for _ in range(-(-m // D)):
            gaussian = torch.randn(D, D, generator=generator, dtype=torch.float64)
            q, r = torch.linalg.qr(gaussian)
            # Fixing the signs by diag(R) makes q Haar-distributed; raw QR output is biased.
            blocks.append((q * torch.sign(torch.diagonal(r))).T)
        rows = torch.cat(blocks)[:m]
        norms = torch.randn(m, D, generator=generator, dtype=torch.float64).norm(dim=1)
        heads.append(rows * norms[:, None])
    return torch.stack(heads).float()


class Performer(Mixer):
    name = "performer"
    impl = "pytorch"
    uses_components = True
    eps: float = 1e-6

    def __init__(self, chunk_size: int = 64) -> None:
        self.chunk_size = chunk_size

    def make_params(self, shape: Shape, device: torch.device,
                    generator: torch.Generator | None = None) -> Inputs:
        return {"proj": orthogonal_features(shape.H, shape.K, shape.D, generator).to(device)}

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        acc = accumulation_dtype(q, k, v)
        proj = inputs["proj"].to(acc)
        m, D = proj.shape[1], proj.shape[2]

        def logits(x: torch.Tensor) -> torch.Tensor:        # (B, N, H, D) -> (B, N, H, m)
            x = x.to(acc) * D ** -0.25
            return torch.einsum("bnhd,hmd->bnhm", x, proj) - 0.5 * (x * x).sum(-1, keepdim=True)

        lq, lk = logits(q), logits(k)
        # Stabilisers against overflow: per query token, and one per (batch, head) for all keys
        # (a per-key one would not cancel). Both are constants that cancel in the ratio, eps
        # included: eps is rescaled to match, so o_i stays exactly causal and stabiliser-free.
        cq = lq.amax(-1, keepdim=True).detach()
        ck = lk.amax(dim=(1, 3), keepdim=True).detach()
        phi_q = torch.exp(lq - cq) / math.sqrt(m)
        phi_k = torch.exp(lk - ck) / math.sqrt(m)
        finfo = torch.finfo(acc)
        eps = (self.eps * torch.exp(-(cq + ck))).squeeze(-1).clamp(finfo.tiny, finfo.max)
        out = normalised_linear_attention(phi_q, phi_k, v.to(acc), causal=causal, eps=eps,
                                          chunk_size=self.chunk_size)
        return out.to(v.dtype)

    def flops(self, shape: Shape) -> float:
        m = shape.K
        features = 2 * shape.B * shape.N * shape.H * (2 * shape.D * m + 3 * shape.D + 3 * m)
        return float(features) + normalised_linear_flops(shape, m)
