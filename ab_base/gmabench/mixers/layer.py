"""A full attention-style layer around any mixer core, for the runner's "layer" scope.

x (B, N, d_model) -> q, k (H heads of mixer.qk_dim) and v (H heads of Dv) projections -> mixer core
-> output projection, with d_model = H * D. The mixer's own parameters (make_params) become
nn.Parameters when the mixer differentiates them and buffers otherwise; per-token inputs such as
Mamba2's dt (`Mixer.token_inputs`) are projected from x, as the real layers do.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmabench.mixers.base import Mixer, Shape, random_activations

__all__ = ["MixerLayer", "build_layer"]


def _linear(d_in: int, d_out: int, generator: torch.Generator | None, scale: float = 1.0) -> nn.Linear:
    """Bias-free projection with N(0, scale^2 / d_in) weights: unit-scale inputs give outputs of
    about `scale`. Drawn from `generator` so a layer is reproducible, unlike nn.Linear's init."""
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=generator) * scale / math.sqrt(d_in))
    return layer


class MixerLayer(nn.Module):
    def __init__(self, mixer: Mixer, shape: Shape, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.mixer, self.causal = mixer, shape.causal
        self.n_heads, self.d_model = shape.H, shape.H * shape.D
        H, dqk, dv = shape.H, mixer.qk_dim(shape), shape.dv
        self.q_proj = _linear(self.d_model, H * dqk, generator)
        self.k_proj = _linear(self.d_model, H * dqk, generator)
        self.v_proj = _linear(self.d_model, H * dv, generator)
        self.out_proj = _linear(H * dv, self.d_model, generator)

        self.core_params = nn.ParameterDict()
        self.core_buffers = nn.Module()       # holds non-differentiated mixer parameters as buffers
        self.token_projs = nn.ModuleDict()
        self._token_shapes: dict[str, tuple[int, ...]] = {}
        for name, value in mixer.make_params(shape, torch.device("cpu"), generator).items():
            if name in mixer.token_inputs:
                # Match the distribution the core benchmark draws: mean as bias, spread as weights.
                per_token = value.shape[2:]
                proj = nn.Linear(self.d_model, math.prod(per_token))
                with torch.no_grad():
                    spread = value.std(dim=(0, 1), correction=0).flatten()[:, None]
                    proj.weight.copy_(torch.randn(proj.weight.shape, generator=generator) * spread
                                      / math.sqrt(self.d_model))
                    proj.bias.copy_(value.mean(dim=(0, 1)).flatten())
                self.token_projs[name] = proj
                self._token_shapes[name] = tuple(per_token)
            elif name in mixer.grad_inputs:
                self.core_params[name] = nn.Parameter(value)
            else:
                self.core_buffers.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H = self.n_heads
        inputs = {"q": self.q_proj(x).view(B, N, H, -1), "k": self.k_proj(x).view(B, N, H, -1),
                  "v": self.v_proj(x).view(B, N, H, -1)}
        inputs.update(self.core_params.items())
        inputs.update(self.core_buffers.named_buffers())
        for name, proj in self.token_projs.items():
            inputs[name] = proj(x).view(B, N, *self._token_shapes[name]).float()
        out = self.mixer.forward(inputs, self.causal)
        return self.out_proj(out.reshape(B, N, -1))


def build_layer(mixer: Mixer, shape: Shape, dtype: torch.dtype, device: torch.device | str,
                generator: torch.Generator | None = None) -> tuple[MixerLayer, torch.Tensor]:
    """A MixerLayer for `shape` and an input x (B, N, H * D) of unit scale times 0.5.

    Projections are in `dtype`; mixer parameters stay float32 (the mixers accumulate in float32
    anyway). x does not require grad: call x.requires_grad_() to time the input gradient too.
    """
    device = torch.device(device)
    layer = MixerLayer(mixer, shape, generator).to(device)
    for module in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj, layer.token_projs):
        module.to(dtype=dtype)
    (x,) = random_activations(((shape.B, shape.N, layer.d_model),), dtype, device, generator)
    return layer, x
