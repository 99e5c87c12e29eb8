"""Accuracy next to speed: a cell's output, and for training cells its gradients, against the
mixer's float64 reference on a short sample of fresh inputs.

The gradients are those of one random output gradient (drawn in float32, cast to the input
dtype, and given to the reference as the same values in float64), taken for every input the
mixer's backward differentiates (`Mixer.grad_inputs`). A gradient the mixer does not return
counts as zero. Each error is relative to the reference's norm, or absolute where the reference
is exactly zero (GMA's q, k and mixture gradients at K = 1, where the one slot always gets
weight one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gmabench.mixers.base import Inputs, Mixer, Shape

__all__ = ["Accuracy", "measure_accuracy", "relative_error"]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; ||out - ref|| where ref is exactly zero."""
    out, ref = out.double(), ref.double()
    err = float(torch.linalg.vector_norm(out - ref))
    norm = float(torch.linalg.vector_norm(ref))
    return err / norm if norm > 0 else err


@dataclass
class Accuracy:
    rel_error: float
    tokens: int
    grad_rel_errors: dict[str, float] = field(default_factory=dict)   # empty: forward only

    @property
    def grad_rel_error(self) -> float | None:
        """The largest gradient error, or None when no gradient was checked."""
        return max(self.grad_rel_errors.values()) if self.grad_rel_errors else None


def _training_errors(mixer: Mixer, inputs: Inputs, causal: bool, generator: torch.Generator,
                     tokens: int) -> Accuracy:
    """The output's error and each gradient's, from one forward and backward of the mixer and
    one of its reference: the output is the training forward's, the one a fwd_bwd cell times."""
    names = [name for name in mixer.grad_inputs if name in inputs]
    leaves = {k: t.detach().requires_grad_(k in names) for k, t in inputs.items()}
    out = mixer.forward(leaves, causal)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float32)
    grad_out = grad_out.to(device=out.device, dtype=out.dtype)
    got = torch.autograd.grad(out, [leaves[n] for n in names], grad_out, allow_unused=True)
    out = out.detach()
    exact = {k: t.detach().double().requires_grad_(k in names) for k, t in inputs.items()}
    ref = mixer.reference(exact, causal)
    if not ref.requires_grad:
        raise RuntimeError(f"{mixer.name}: its reference is not differentiable in {names}")
    want = torch.autograd.grad(ref, [exact[n] for n in names], grad_out.double(),
                               allow_unused=True)
    errors = {}
    for name, g, w in zip(names, got, want):
        zero = torch.zeros_like(exact[name])
        errors[name] = relative_error(zero if g is None else g, zero if w is None else w)
    return Accuracy(relative_error(out, ref.detach()), tokens, errors)


def measure_accuracy(mixer: Mixer, shape: Shape, dtype: torch.dtype, device: torch.device,
                     tokens: int, seed: int, gradients: bool) -> Accuracy:
    """The cell's errors on B=1 and the first `tokens` tokens (fewer when N is shorter), inputs
    drawn from `seed`; with `gradients`, those of the backward too, and the output's error is then
    the training forward's (a mixer may compute its output otherwise when a backward follows)."""
    n = min(shape.N, tokens)
    small = Shape(B=1, N=n, H=shape.H, D=shape.D, K=shape.K, Dv=shape.Dv, causal=shape.causal)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = mixer.make_inputs(small, dtype, device, gen)
    if gradients:
        return _training_errors(mixer, inputs, shape.causal, gen, n)
    with torch.no_grad():
        out = mixer.forward(inputs, shape.causal)
        ref = mixer.reference(inputs, shape.causal)
    return Accuracy(relative_error(out, ref), n)
