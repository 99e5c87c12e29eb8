"""Shared helpers for the GMA tests: fresh random inputs, relative error, forward+backward runs.

They are exposed as fixtures (`gma_rel_err`, `gma_make_inputs`, `gma_run_with_grads`) so that any
test module under tests/gma can use them without importing this file.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

GMA_INPUT_NAMES = ("q", "k", "v", "mu", "log_sigma", "mix_logits")


def rel_err(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """||actual - expected|| / max(||expected||, floor), computed in float64.

    `floor` turns the check absolute for tensors that are (nearly) zero, e.g. gradients that only
    exist through eps; with floor 0 an exactly-zero expected tensor gives the absolute error.
    """
    actual, expected = actual.detach().double(), expected.detach().double()
    diff = (actual - expected).norm().item()
    scale = max(expected.norm().item(), floor)
    return diff / scale if scale > 0 else diff


def make_gma_inputs(B: int, N: int, H: int, D: int, K: int, Dv: int | None = None, *,
                    dtype: torch.dtype = torch.float32, seed: int = 0,
                    requires_grad: bool = True) -> dict[str, torch.Tensor]:
    """Well-conditioned random GMA inputs: unit normal times 0.5, never zeros.

    q, k, v are in `dtype`; mu, log_sigma and mix_logits stay float32 like layer parameters.
    """
    gen = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv

    def randn(*size: int) -> torch.Tensor:
        return 0.5 * torch.randn(*size, generator=gen)

    inputs = {
        "q": randn(B, N, H, D).to(dtype), "k": randn(B, N, H, D).to(dtype),
        "v": randn(B, N, H, Dv).to(dtype),
        "mu": randn(H, K, D), "log_sigma": randn(H, K, D), "mix_logits": randn(H, K),
    }
    return {name: t.requires_grad_(requires_grad) for name, t in inputs.items()}


def run_with_grads(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor],
                   grad_out: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Call fn(**inputs, **kwargs) and backpropagate <out, grad_out>; returns (out, grads by name).

    The product is taken in the wider of out's and grad_out's dtypes, so the same grad_out can be
    used for a float64 yardstick and a low-precision implementation.
    """
    out = fn(*(inputs[name] for name in GMA_INPUT_NAMES), **kwargs)
    wide = torch.promote_types(out.dtype, grad_out.dtype)
    loss = (out.to(wide) * grad_out.to(wide)).sum()
    grads = torch.autograd.grad(loss, [inputs[name] for name in GMA_INPUT_NAMES])
    return out.detach(), dict(zip(GMA_INPUT_NAMES, grads))


@pytest.fixture
def gma_rel_err():
    return rel_err


@pytest.fixture
def gma_make_inputs():
    return make_gma_inputs


@pytest.fixture
def gma_run_with_grads():
    return run_with_grads
