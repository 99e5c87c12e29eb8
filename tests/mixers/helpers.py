"""Shared helpers for the mixer tests: the small CPU shape, fresh inputs, relative error, grads."""

from __future__ import annotations

from typing import Mapping

import torch

from gmabench.mixers.base import Mixer, Shape
from gmabench.mixers.registry import MIXERS, availability

SMALL = dict(B=2, N=37, H=2, D=16, K=8)


def cpu_mixer_names() -> list[str]:
    """Every mixer that can run on CPU here (an entry needing a missing package is left out)."""
    return [e.name for e in MIXERS if not e.cuda_only and availability(e.name)[0]]


def small_shape(causal: bool, **overrides) -> Shape:
    return Shape(**{**SMALL, **overrides}, causal=causal)


def fresh_inputs(mixer: Mixer, shape: Shape, dtype: torch.dtype = torch.float32, seed: int = 0,
                 device: str = "cpu") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return mixer.make_inputs(shape, dtype, torch.device(device), gen)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm()).item()


def grads_of(mixer: Mixer, inputs: Mapping[str, torch.Tensor], causal: bool,
             grad_out: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and the gradients of <out, grad_out> for every grad input of the mixer."""
    leaves = {name: inputs[name].detach().clone().requires_grad_(True) for name in mixer.grad_inputs}
    out = mixer.forward({**inputs, **leaves}, causal)
    wide = torch.promote_types(out.dtype, grad_out.dtype)
    loss = (out.to(wide) * grad_out.to(wide)).sum()
    grads = torch.autograd.grad(loss, [leaves[name] for name in mixer.grad_inputs])
    return out.detach(), dict(zip(mixer.grad_inputs, grads))
