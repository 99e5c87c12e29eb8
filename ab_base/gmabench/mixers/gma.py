"""Gaussian Mixture Attention as a mixer: `gma_attention` with a chosen implementation.

One class serves `gma` (impl "auto"), `gma-reference`, `gma-chunked` and `gma-triton`. The GMA
op itself lives in gmabench.gma and is imported on first use.
"""

from __future__ import annotations

from typing import Mapping

import torch

from gmabench.mixers.base import Inputs, Mixer, Shape
from gmabench.mixers.linear import normalised_linear_flops

__all__ = ["GMAMixer", "gma_flops"]


def gma_flops(shape: Shape) -> float:
    """Responsibilities of q and k in the matmul form (x . a and (x*x) . b, then a softmax over K),
    plus normalised linear attention on K features."""
    B, N, H, D, K = shape.B, shape.N, shape.H, shape.D, shape.K
    responsibilities = 2 * B * N * H * (4 * D * K + D + 5 * K)
    return float(responsibilities) + normalised_linear_flops(shape, K)


class GMAMixer(Mixer):
    uses_components = True
    eps: float = 1e-6

    def __init__(self, impl: str = "auto", precision: str | None = None) -> None:
        self.requested_impl = impl
        self.impl = impl     # "auto" becomes the implementation that ran after the first forward
        self.name = "gma" if impl == "auto" else f"gma-{impl}"
        self.cuda_only = impl == "triton"
        # The fused kernels' product precision ("split", "fast", "fp16", "tf32x3", "ieee"); None:
        # their default.
        if precision is not None and impl != "triton":
            raise ValueError(f"precision applies to impl='triton' only, not {impl!r}")
        self.precision = precision
        self._resolved: dict[tuple, str] = {}   # (device type, causal) -> impl

    def make_params(self, shape: Shape, device: torch.device,
                    generator: torch.Generator | None = None) -> Inputs:
        H, K, D = shape.H, shape.K, shape.D

        def randn(*size: int, scale: float) -> torch.Tensor:
            return (scale * torch.randn(*size, generator=generator)).to(device)

        return {"mu": randn(H, K, D, scale=0.5), "log_sigma": randn(H, K, D, scale=0.1),
                "mix_logits": randn(H, K, scale=0.1)}

    @property
    def grad_inputs(self) -> tuple[str, ...]:
        return ("q", "k", "v", "mu", "log_sigma", "mix_logits")

    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        reasons = super().not_supported_reasons(shape, dtype, device)
        if self.requested_impl == "triton" and not reasons:
            from gmabench.gma import triton_available
            ok, why = triton_available(device)
            if not ok:
                reasons.append(why)
        return reasons

    def _resolve(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        # Resolved once per device type and causality: forward runs in timed loops, and "auto"
        # would otherwise try the Triton import on every call.
        key = (inputs["q"].device.type, bool(causal))
        if key not in self._resolved:
            from gmabench.gma import resolve_impl
            self._resolved[key] = resolve_impl(self.requested_impl, inputs["q"].device, causal)
        return self._resolved[key]

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        impl = self._resolve(inputs, causal)
        return self._backend_triton(inputs, causal) if impl == "triton" else impl

    def _backend_triton(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        # The fused kernels: their product precision, where their launch plans came from and
        # which launch path runs them (launch.py's cached launches or Triton's own).
        from gmabench.gma.triton import launch, plan
        from gmabench.gma.triton.autograd import fallback_note, precision_name
        precision = precision_name(inputs["q"].dtype, self.precision,
                                   (inputs["mu"].shape[1], inputs["q"].shape[-1],
                                    inputs["v"].shape[-1]))
        if precision == "fp16":   # the output pass only, when a backward follows
            precision = "fp16 (training: state and backward split, dq/dk/dv products fp16)"
        launches = "cached" if launch.ENABLED else "triton"
        note = fallback_note(inputs["q"], inputs["v"], inputs["mu"], causal)
        return (f"triton {precision}, plans: {plan.PLAN_SOURCE}, launches: {launches}"
                + (f"; {note}" if note else ""))

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        from gmabench.gma import gma_attention
        args = [inputs[name] for name in ("q", "k", "v", "mu", "log_sigma", "mix_logits")]
        if self.precision is not None:
            from gmabench.gma.triton import gma_triton
            self.impl = f"triton-{self.precision}"
            return gma_triton(*args, causal=causal, eps=self.eps, precision=self.precision)
        # Pass the concrete name on, so gma_attention does not resolve "auto" again.
        self.impl = self._resolve(inputs, causal)
        return gma_attention(*args, causal=causal, eps=self.eps, impl=self.impl)

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        from gmabench.gma import gma_spec_float64
        return gma_spec_float64(*(inputs[name] for name in
                                  ("q", "k", "v", "mu", "log_sigma", "mix_logits")),
                                causal=causal, eps=self.eps)

    def flops(self, shape: Shape) -> float:
        return gma_flops(shape)
