"""The contract every sequence mixer implements, and the shape of one benchmark cell.

A mixer is a small object: it draws its own inputs for a shape, runs its core on them, and
can evaluate itself exactly in float64 for accuracy checks. It knows nothing of records,
timing or reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Shape:
    """The problem one cell measures. K is n_components (or a mixer's state/feature size)."""

    B: int
    N: int
    H: int
    D: int
    K: int
    Dv: int | None = None  # value head size; None means Dv == D
    causal: bool = False

    @property
    def dv(self) -> int:
        return self.D if self.Dv is None else self.Dv


Inputs = dict[str, torch.Tensor]


def random_activations(size: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                       generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Independent tensors of 0.5 x unit normal, one per shape in `size`, reproducible from
    `generator`. On an accelerator they are drawn there, from a seed drawn from `generator`:
    drawing them on the host and copying cost seconds per cell at the paper suite's sizes
    (9 s for N=262144, H=16 on a 2-core host)."""
    if device.type == "cpu":
        draw = [torch.randn(*s, generator=generator, dtype=torch.float32) for s in size]
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        on_device = torch.Generator(device=device).manual_seed(seed)
        draw = [torch.randn(*s, generator=on_device, dtype=torch.float32, device=device) for s in size]
    return [(0.5 * t).to(device=device, dtype=dtype) for t in draw]


class Mixer:
    """Base class. Subclasses set the class attributes and override forward (and maybe more).

    Inputs are a dict of named tensors: the differentiable activations ("q", "k", "v" by
    default) and any mixer parameters (GMA's mu, log_sigma, mix_logits; Performer's random
    projection; Mamba2's decay...). `grad_inputs` names those a backward pass differentiates.
    """

    name: str = ""
    impl: str = ""                      # which implementation runs (e.g. "reference", "triton")
    uses_components: bool = False       # does K change what this mixer computes?
    supports_causal: bool = True
    supports_bidirectional: bool = True
    supported_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
    cuda_only: bool = False
    # Entries of make_params that are per-token activations of shape (B, N, H, ...), e.g. Mamba2's
    # dt: a full layer projects them from x instead of learning them as weights.
    token_inputs: tuple[str, ...] = ()

    # ---- capabilities -------------------------------------------------------------------
    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        """Readable reasons this mixer cannot run the cell; empty when it can."""
        reasons = []
        if shape.causal and not self.supports_causal:
            reasons.append(f"{self.name} has no causal form")
        if not shape.causal and not self.supports_bidirectional:
            reasons.append(f"{self.name} has no bidirectional form")
        if dtype not in self.supported_dtypes:
            reasons.append(f"{self.name} does not support {dtype}")
        if self.cuda_only and device.type != "cuda":
            reasons.append(f"{self.name} needs a CUDA device")
        return reasons

    def mode_not_supported_reasons(self, mode: str, device: torch.device,
                                   dtype: torch.dtype | None = None) -> list[str]:
        """Reasons this mixer cannot run `mode` ("fwd" or "fwd_bwd") on `device` with inputs of
        `dtype` (None: any); empty when it can."""
        return []

    # ---- inputs -------------------------------------------------------------------------
    def qk_dim(self, shape: Shape) -> int:
        """Size of the per-head q/k vectors this mixer consumes (Mamba2 uses d_state = K)."""
        return shape.D

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device: torch.device,
                    generator: torch.Generator | None = None) -> Inputs:
        """Fresh random activations (unit normal times 0.5, well conditioned) plus parameters."""
        B, N, H = shape.B, shape.N, shape.H
        dqk = self.qk_dim(shape)

        q, k, v = random_activations(((B, N, H, dqk), (B, N, H, dqk), (B, N, H, shape.dv)), dtype, device,
                                     generator)
        inputs = {"q": q, "k": k, "v": v}
        inputs.update(self.make_params(shape, device, generator))
        return inputs

    def make_params(self, shape: Shape, device: torch.device,
                    generator: torch.Generator | None = None) -> Inputs:
        """Mixer parameters (float32), e.g. GMA's mu/log_sigma/mix_logits. None by default."""
        return {}

    @property
    def grad_inputs(self) -> tuple[str, ...]:
        return ("q", "k", "v")

    # ---- compute ------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        """The mixer core: returns (B, N, H, Dv) in the input dtype."""
        raise NotImplementedError

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        """Exact float64 evaluation of the same function (for accuracy next to speed),
        differentiable in its inputs: gradients are checked against it too."""
        up = {k: t.double() for k, t in inputs.items()}
        return self.forward(up, causal)

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        """Which kernel/backend actually ran (e.g. SDPA's chosen backend). Default: impl."""
        return self.impl

    # ---- analytic cost (per call, forward) ---------------------------------------------
    def flops(self, shape: Shape) -> float | None:
        return None

    def min_bytes(self, shape: Shape, itemsize: int) -> float | None:
        """Fewest bytes a forward must move: inputs read once, output written once."""
        dqk = self.qk_dim(shape)
        return float(itemsize * shape.B * shape.N * shape.H * (2 * dqk + 2 * shape.dv))
