"""Normalised linear attention with elu+1 features (Katharopoulos et al. 2020), in plain PyTorch.

    o_i = phi(q_i)^T S_i / (phi(q_i) . z_i + eps),   S_i = sum_j phi(k_j) v_j^T,  z_i = sum_j phi(k_j)

with j <= i (causal) or all j (bidirectional). `normalised_linear_attention` is shared with the
Performer and GMA-through-fla mixers: it takes any non-negative features.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from gmabench.mixers.base import Mixer, Shape

__all__ = ["LinearAttention", "accumulation_dtype", "elu_features", "normalised_linear_attention",
           "normalised_linear_flops"]


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for any low-precision input; float64 inputs (references) are never narrowed."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def elu_features(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def normalised_linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, *,
                                causal: bool, eps: float | torch.Tensor = 1e-6,
                                chunk_size: int = 64) -> torch.Tensor:
    """phi_q, phi_k (B, N, H, F) non-negative features, v (B, N, H, Dv), all in the accumulation
    dtype. eps is a float or a (B, N, H) tensor. Returns (B, N, H, Dv) in that dtype.

    The causal form works chunk by chunk: masked (C x C) products inside a chunk plus the prefix
    state of earlier chunks, so it stores (N / C) states of F x Dv, never one per token.
    """
    eps = eps[..., None] if isinstance(eps, torch.Tensor) else eps
    if not causal:
        state = torch.einsum("bnhf,bnhd->bhfd", phi_k, v)
        num = torch.einsum("bnhf,bhfd->bnhd", phi_q, state)
        den = torch.einsum("bnhf,bhf->bnh", phi_q, phi_k.sum(dim=1))
        return num / (den[..., None] + eps)

    B, N, H, Fdim = phi_q.shape
    Dv = v.shape[-1]
    n_chunks = -(-N // chunk_size)
    pad = n_chunks * chunk_size - N   # zero features add nothing to any sum

    def chunked(t: torch.Tensor) -> torch.Tensor:          # (B, N, H, X) -> (B, H, nc, C, X)
        t = F.pad(t, (0, 0, 0, 0, 0, pad))
        return t.view(B, n_chunks, chunk_size, H, t.shape[-1]).permute(0, 3, 1, 2, 4)

    q_c, k_c, v_c = chunked(phi_q), chunked(phi_k), chunked(v)
    scores = torch.tril(q_c @ k_c.transpose(-1, -2))        # (B, H, nc, C, C), j <= i in chunk
    num = scores @ v_c
    den = scores.sum(-1)

    chunk_state = k_c.transpose(-1, -2) @ v_c               # (B, H, nc, F, Dv)
    chunk_mass = k_c.sum(-2)                                 # (B, H, nc, F)
    # Exclusive prefix over chunks (chunk c sees chunks < c), shifted rather than subtracted.
    state = F.pad(torch.cumsum(chunk_state, dim=2)[:, :, :-1], (0, 0, 0, 0, 1, 0))
    mass = F.pad(torch.cumsum(chunk_mass, dim=2)[:, :, :-1], (0, 0, 1, 0))
    num = num + q_c @ state
    den = den + (q_c @ mass[..., None]).squeeze(-1)

    num = num.permute(0, 2, 3, 1, 4).reshape(B, n_chunks * chunk_size, H, Dv)[:, :N]
    den = den.permute(0, 2, 3, 1).reshape(B, n_chunks * chunk_size, H)[:, :N]
    return num / (den[..., None] + eps)


def normalised_linear_flops(shape: Shape, features: int) -> float:
    """Forward FLOPs of normalised linear attention with `features` features, counted in its
    recurrent form (write and read a features x Dv state per token), whatever the chunking."""
    per_token = 4 * features * shape.dv + 3 * features + shape.dv
    return float(shape.B * shape.H * shape.N * per_token)


class LinearAttention(Mixer):
    """Normalised linear attention with elu+1 features; feature size is the head size D."""

    name = "linear-attention"
    impl = "pytorch"
    uses_components = False
    eps: float = 1e-6

    def __init__(self, chunk_size: int = 64) -> None:
        self.chunk_size = chunk_size

    def compute(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        """The PyTorch form, accumulating in float32 (float64 for float64 inputs)."""
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        acc = accumulation_dtype(q, k, v)
        out = normalised_linear_attention(
            elu_features(q.to(acc)), elu_features(k.to(acc)), v.to(acc),
            causal=causal, eps=self.eps, chunk_size=self.chunk_size)
        return out.to(v.dtype)

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        return self.compute(inputs, causal)

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        return self.compute({k: t.double() for k, t in inputs.items()}, causal)

    def flops(self, shape: Shape) -> float:
        return 6.0 * shape.B * shape.N * shape.H * shape.D + normalised_linear_flops(shape, shape.D)
