"""Exact and plain-PyTorch evaluations of Gaussian Mixture Attention (docs: SPEC-gma.md).

Three functions live here:

- `gma_spec_float64`: the SPEC formula in float64, written straight from its definition. It is the
  yardstick every test and accuracy check compares against; it favours clarity over speed.
- `gma_responsibilities`: r(x) via the matmul form, accumulated in float32 (other mixers reuse it).
- `gma_reference`: the plain matmul-form baseline with float32 accumulation. Its causal form
  materialises an (N, K, Dv) prefix-sum tensor; `gma.chunked` is the memory-lean alternative.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["gma_spec_float64", "gma_responsibilities", "gma_reference"]


def spec_numerics(fn):
    """Run fn with torch.autocast off on its first tensor argument's device: the SPEC's numerics (float32
    logits, softmax and sums, whatever the inputs) hold inside an autocast region too, where the
    einsums would otherwise run in bfloat16 or float16 (gma_reference's error on float32 inputs
    under bfloat16 autocast: 3e-7 -> 5e-3). Outside autocast, one check per call."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        x = next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        if not torch.is_autocast_enabled(x.device.type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, unless some input is already float64 (then never narrow it)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ---- the yardstick ----------------------------------------------------------------------------
@spec_numerics
def gma_spec_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mu: torch.Tensor,
                     log_sigma: torch.Tensor, mix_logits: torch.Tensor, *, causal: bool = False,
                     temperature: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """GMA evaluated in float64 exactly as SPEC-gma.md writes it. Returns (B, N, H, Dv) float64.

    Responsibilities use the squared-distance form of l_k(x) (not the expanded matmul form that
    fast code uses), and the causal form walks the sequence with explicit running sums, so this
    shares no algebraic shortcut with the implementations it checks. Differentiable in all inputs.
    """
    q, k, v, mu, log_sigma, mix_logits = (
        t.to(torch.float64) for t in (q, k, v, mu, log_sigma, mix_logits))
    log_pi = torch.log_softmax(mix_logits, dim=-1)                         # (H, K)
    sigma = torch.exp(log_sigma)                                           # (H, K, D)

    def responsibilities(x: torch.Tensor) -> torch.Tensor:                 # (B, N, H, D) -> (B, N, H, K)
        diff = x[:, :, :, None, :] - mu                                    # (B, N, H, K, D)
        log_lik = (log_pi - log_sigma.sum(-1)
                   - 0.5 * (diff ** 2 / sigma ** 2).sum(-1))
        return torch.softmax(log_lik / temperature, dim=-1)

    r_q, r_k = responsibilities(q), responsibilities(k)

    if not causal:
        memory = torch.einsum("bjhk,bjhv->bhkv", r_k, v)                   # M = R_k^T V
        mass = r_k.sum(dim=1)                                              # s = R_k^T 1
        num = torch.einsum("bihk,bhkv->bihv", r_q, memory)
        den = torch.einsum("bihk,bhk->bih", r_q, mass)
        return num / (den + eps)[..., None]

    B, N, H, K = r_k.shape
    memory = v.new_zeros(B, H, K, v.shape[-1])                             # M_i, built token by token
    mass = v.new_zeros(B, H, K)                                            # s_i
    outputs = []
    for i in range(N):
        memory = memory + r_k[:, i, :, :, None] * v[:, i, :, None, :]
        mass = mass + r_k[:, i]
        num = torch.einsum("bhk,bhkv->bhv", r_q[:, i], memory)
        den = (r_q[:, i] * mass).sum(-1)
        outputs.append(num / (den + eps)[..., None])
    if not outputs:
        return v.new_zeros(v.shape)
    return torch.stack(outputs, dim=1)


# ---- float32-accumulating building blocks ------------------------------------------------------
@spec_numerics
def gma_responsibilities(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                         mix_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """r(x) for x (B, N, H, D): a (B, N, H, K) probability vector over the K components.

    Uses the matmul form l_k(x) = c_k + x.a_k - 1/2 (x*x).b_k and computes in float32 whatever
    x's dtype (float64 stays float64), because the SPEC requires float32 logits and softmax.
    """
    acc = _accumulation_dtype(x, mu, log_sigma, mix_logits)
    x, mu, log_sigma, mix_logits = (t.to(acc) for t in (x, mu, log_sigma, mix_logits))
    precision = torch.exp(-2.0 * log_sigma)                                # b = 1 / sigma^2, (H, K, D)
    a = mu * precision
    c = (torch.log_softmax(mix_logits, dim=-1) - log_sigma.sum(-1)
         - 0.5 * (mu * mu * precision).sum(-1))                            # (H, K)
    log_lik = (c + torch.einsum("bnhd,hkd->bnhk", x, a)
               - 0.5 * torch.einsum("bnhd,hkd->bnhk", x * x, precision))
    return torch.softmax(log_lik / temperature, dim=-1)


@spec_numerics
def gma_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mu: torch.Tensor,
                  log_sigma: torch.Tensor, mix_logits: torch.Tensor, *, causal: bool = False,
                  temperature: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Plain-PyTorch GMA: float32 accumulation, output (B, N, H, Dv) in v.dtype.

    Memory: bidirectional keeps O(N K) activations (R_q, R_k); causal additionally keeps the
    (N, K, Dv) prefix sums of r(k_j) v_j^T, the cost that `gma_chunked` avoids.
    """
    acc = _accumulation_dtype(q, k, v, mu, log_sigma, mix_logits)
    r_q = gma_responsibilities(q, mu, log_sigma, mix_logits, temperature).to(acc)
    r_k = gma_responsibilities(k, mu, log_sigma, mix_logits, temperature).to(acc)
    v_acc = v.to(acc)

    if causal:
        memory = torch.cumsum(r_k[..., None] * v_acc[..., None, :], dim=1)   # (B, N, H, K, Dv)
        mass = torch.cumsum(r_k, dim=1)                                      # (B, N, H, K)
        num = torch.einsum("bnhk,bnhkv->bnhv", r_q, memory)
        den = (r_q * mass).sum(-1)
    else:
        memory = torch.einsum("bnhk,bnhv->bhkv", r_k, v_acc)
        mass = r_k.sum(dim=1)
        num = torch.einsum("bnhk,bhkv->bnhv", r_q, memory)
        den = torch.einsum("bnhk,bhk->bnh", r_q, mass)
    return (num / (den + eps)[..., None]).to(v.dtype)
