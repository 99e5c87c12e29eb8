"""`GMA`: the Gaussian Mixture Attention layer, an nn.Module with projections around the GMA core.

x (B, N, d_model) -> q, k, v in H heads of size head_dim -> gma_attention -> output projection.
The mixture parameters mu, log_sigma and mix_logits are learned with the rest of the layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmabench.gma.api import IMPLS, gma_attention

__all__ = ["GMA"]


def _require_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class GMA(nn.Module):
    """Multi-head Gaussian Mixture Attention layer (SPEC-gma.md, "The GMA layer")."""

    def __init__(self, d_model: int, n_heads: int, n_components: int, causal: bool = False,
                 head_dim: int | None = None, temperature: float = 1.0, eps: float = 1e-6,
                 impl: str = "auto", bias: bool = False) -> None:
        super().__init__()
        _require_positive_int("d_model", d_model)
        _require_positive_int("n_heads", n_heads)
        _require_positive_int("n_components", n_components)
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}) "
                                 f"when head_dim is not given")
            head_dim = d_model // n_heads
        _require_positive_int("head_dim", head_dim)
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(repr(i) for i in IMPLS)}; got {impl!r}")

        self.d_model, self.n_heads, self.n_components = d_model, n_heads, n_components
        self.head_dim, self.causal = head_dim, bool(causal)
        self.temperature, self.eps, self.impl = float(temperature), float(eps), impl

        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.mu = nn.Parameter(torch.empty(n_heads, n_components, head_dim))
        self.log_sigma = nn.Parameter(torch.empty(n_heads, n_components, head_dim))
        self.mix_logits = nn.Parameter(torch.empty(n_heads, n_components))
        self.reset_mixture_parameters()

    def reset_mixture_parameters(self) -> None:
        # Means spread at the scale of the projected q/k, unit widths and uniform weights, so the
        # components start distinct but no component starts out dominant.
        with torch.no_grad():
            self.mu.normal_(0.0, 0.5)
            self.log_sigma.zero_()
            self.mix_logits.zero_()

    def reset_parameters(self) -> None:
        """The layer's own parameters (the mixture), by the name that a meta-device
        initialisation calls on every module (the projections reset their own)."""
        self.reset_mixture_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, N, d_model={self.d_model}); got {tuple(x.shape)}")
        B, N, _ = x.shape
        heads = (B, N, self.n_heads, self.head_dim)
        q = self.q_proj(x).view(heads)
        k = self.k_proj(x).view(heads)
        v = self.v_proj(x).view(heads)
        o = gma_attention(q, k, v, self.mu, self.log_sigma, self.mix_logits, causal=self.causal,
                          temperature=self.temperature, eps=self.eps, impl=self.impl)
        return self.out_proj(o.reshape(B, N, self.n_heads * self.head_dim))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_components={self.n_components}, "
                f"head_dim={self.head_dim}, causal={self.causal}, temperature={self.temperature}, "
                f"impl={self.impl!r}")
