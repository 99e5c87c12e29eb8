"""Softmax attention with the N x N score matrix materialised: the O(N^2)-memory baseline.

This is what attention looks like written without a fused kernel, and (in float64) the reference
every SDPA backend is checked against.
"""

from __future__ import annotations

from typing import Mapping

import torch

from gmabench.mixers.base import Mixer, Shape

__all__ = ["SoftmaxNaive", "softmax_attention", "softmax_flops", "softmax_reference"]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D), masked) v for (B, N, H, D) inputs; returns (B, N, H, Dv) in v.dtype.

    Scores stay in the input dtype (that is the memory being measured); the softmax runs in float32
    (float64 for float64 inputs).
    """
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))   # (B, H, N, D)
    scores = (qh @ kh.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        N = q.shape[1]
        future = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return (probs.to(v.dtype) @ vh).transpose(1, 2)


def softmax_reference(inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
    """Exact float64 softmax attention of q, k, v: the reference of every softmax mixer."""
    q, k, v = (inputs[name].double() for name in ("q", "k", "v"))
    return softmax_attention(q, k, v, causal)


def softmax_flops(shape: Shape) -> float:
    """The two matmuls (q k^T and P v); causal counts the lower triangle only, as flash-attn does."""
    flops = 2.0 * shape.B * shape.H * shape.N * shape.N * (shape.D + shape.dv)
    return flops / 2 if shape.causal else flops


class SoftmaxNaive(Mixer):
    name = "softmax-naive"
    impl = "pytorch"
    uses_components = False

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        return softmax_attention(inputs["q"], inputs["k"], inputs["v"], causal)

    def flops(self, shape: Shape) -> float:
        return softmax_flops(shape)
