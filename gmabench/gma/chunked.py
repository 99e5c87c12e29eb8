"""Chunked causal GMA in pure PyTorch: linear memory without a fused kernel.

Causal GMA is normalised linear attention with feature map r, so it splits the sequence into
chunks of C tokens: each chunk summarises its keys in a (K x Dv) state and a K-vector of slot
masses, an exclusive prefix over chunks carries the past, and the tokens inside a chunk see each
other through a masked (C x C) product. No (N, K, Dv) tensor is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gmabench.gma.reference import (_accumulation_dtype, gma_reference, gma_responsibilities,
                                    spec_numerics)

__all__ = ["gma_chunked"]


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the entries strictly before each index along dim (a shifted cumsum).

    Shifting rather than subtracting x from the inclusive sum avoids cancellation error.
    """
    inclusive = torch.cumsum(x, dim=dim)
    head = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([head, inclusive.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


@spec_numerics
def gma_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mu: torch.Tensor,
                log_sigma: torch.Tensor, mix_logits: torch.Tensor, *, causal: bool = False,
                temperature: float = 1.0, eps: float = 1e-6, chunk_size: int = 64) -> torch.Tensor:
    """GMA with chunked causal prefix sums; output (B, N, H, Dv) in v.dtype.

    Causal memory (activations kept for backward, per batch element and head):
    O(N K + N C + (N / C) K Dv) -- responsibilities, the masked intra-chunk (C x C) blocks, and one
    (K x Dv) state per chunk. With C fixed that is O(N K + (N/C) K Dv), against O(N K Dv) for the
    cumsum form in `gma_reference`. Any N works: the tail is zero-padded to a whole chunk, and padded
    positions only feed later (also padded) positions, which are dropped.

    Bidirectional GMA has no prefix to chunk, so it delegates to `gma_reference`.
    Accumulation is float32 (float64 for float64 inputs); differentiable by autograd.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, N, H, _ = q.shape
    if not causal or N == 0:
        return gma_reference(q, k, v, mu, log_sigma, mix_logits, causal=causal,
                             temperature=temperature, eps=eps)

    acc = _accumulation_dtype(q, k, v, mu, log_sigma, mix_logits)
    r_q = gma_responsibilities(q, mu, log_sigma, mix_logits, temperature).to(acc)
    r_k = gma_responsibilities(k, mu, log_sigma, mix_logits, temperature).to(acc)
    v_acc = v.to(acc)
    K, Dv = r_q.shape[-1], v.shape[-1]

    C = min(chunk_size, N)                 # a chunk longer than the sequence is one chunk
    n_chunks = -(-N // C)
    pad = n_chunks * C - N
    if pad:
        # F.pad's spec runs from the last dim backwards; (0, 0, 0, 0, 0, pad) pads dim 1 (N).
        r_q = F.pad(r_q, (0, 0, 0, 0, 0, pad))
        r_k = F.pad(r_k, (0, 0, 0, 0, 0, pad))
        v_acc = F.pad(v_acc, (0, 0, 0, 0, 0, pad))
    r_q = r_q.reshape(B, n_chunks, C, H, K)
    r_k = r_k.reshape(B, n_chunks, C, H, K)
    v_acc = v_acc.reshape(B, n_chunks, C, H, Dv)

    # Past chunks: per-chunk states, then what all earlier chunks contributed.
    chunk_memory = torch.einsum("bcthk,bcthv->bchkv", r_k, v_acc)           # (B, nC, H, K, Dv)
    chunk_mass = r_k.sum(dim=2)                                              # (B, nC, H, K)
    past_memory = _exclusive_cumsum(chunk_memory, dim=1)
    past_mass = _exclusive_cumsum(chunk_mass, dim=1)
    num = torch.einsum("bcthk,bchkv->bcthv", r_q, past_memory)
    den = torch.einsum("bcthk,bchk->bcth", r_q, past_mass)

    # Within a chunk: token t sees tokens s <= t through the masked affinity r(q_t).r(k_s).
    affinity = torch.einsum("bcthk,bcshk->bchts", r_q, r_k)                  # (B, nC, H, C, C)
    causal_mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    affinity = affinity.masked_fill(~causal_mask, 0.0)
    num = num + torch.einsum("bchts,bcshv->bcthv", affinity, v_acc)
    den = den + affinity.sum(dim=-1).permute(0, 1, 3, 2)                     # (B, nC, C, H)

    out = num / (den + eps)[..., None]
    out = out.reshape(B, n_chunks * C, H, Dv)[:, :N]
    return out.to(v.dtype)
