"""Mixers that run flash-linear-attention's (fla) Triton kernels; causal only, CUDA only.

- `fla-linear-attention`: elu+1 features, then fla's chunk_linear_attn(normalize=True).
- `gma-fla`: GMA responsibilities (float32, then cast to the input dtype) as the features of the
  same kernel: GMA computed by an off-the-shelf linear-attention kernel.
- `fla-simple-gla`: chunk_simple_gla with decay g = dt * A and keys k * dt, which is exactly the
  Mamba2 SSD recurrence of `mamba2`, so that mixer's sequential loop is its reference.

fla scales q by `scale` (default D^-1/2); these mixers pass scale=1.0. fla's normaliser adds 1e-10
to the denominator instead of an eps of 1e-6, so these mixers use eps = 1e-10 in their references.
fla is imported only inside forward: this module imports without it.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Mapping

import torch

from gmabench.mixers.base import Shape
from gmabench.mixers.gma import GMAMixer
from gmabench.mixers.linear import LinearAttention, elu_features
from gmabench.mixers.mamba2 import Mamba2, decay_inputs

__all__ = ["FLALinearAttention", "FLASimpleGLA", "GMAFLA"]

_FLA_EPS = 1e-10    # the constant fla's normaliser adds to the denominator


def _fla_linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from fla.ops.linear_attn import chunk_linear_attn
    out, _ = chunk_linear_attn(q, k, v, scale=1.0, normalize=True)
    return out


def _crash_reasons(features: int, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
    """Seen on an H200 (fla 0.6.0, Triton 3.6.0): forward+backward with bfloat16 inputs, 32 features
    and Dv = 64 died of an illegal memory access inside fla, which poisons the process's CUDA
    context for every later cell; 32/32, 64/32 and 64/64 ran. Refused in both modes for that reason,
    and for float16 too (not isolated: it failed only after the bfloat16 crash)."""
    if (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and features < shape.dv
            and torch.cuda.get_device_capability(device)[0] == 9):
        return [f"fla's chunk_linear_attn crashed (illegal memory access) on Hopper with 16-bit "
                f"inputs and fewer features ({features}) than Dv ({shape.dv})"]
    return []


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else None


def _fla_version() -> tuple[int, int, int] | None:
    """The installed fla's version (fla-core, or flash-linear-attention before that split), read
    from package metadata: fla itself is not imported."""
    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return _version_tuple(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class FLALinearAttention(LinearAttention):
    name = "fla-linear-attention"
    impl = "fla"
    cuda_only = True
    supports_bidirectional = False
    eps = _FLA_EPS

    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        reasons = super().not_supported_reasons(shape, dtype, device)
        return reasons + _crash_reasons(shape.D, shape, dtype, device)

    def mode_not_supported_reasons(self, mode: str, device: torch.device,
                                   dtype: torch.dtype | None = None) -> list[str]:
        """Measured on an H200 with fla 0.6.0 (results/2026-11-29-h200-competitor-tests): with
        float16 inputs the backward's dq and dk are wrong (relative errors 2.5 and 0.30 against
        float64 at N=300, B=2, H=4, D=64; PyTorch's twin 3e-4) while the output and dv are right,
        so a timing of it would time a wrong computation. The cause is fla's normalisation, in
        PyTorch in the inputs' dtype: its backward squares the denominator, which overflows
        float16 once it exceeds 255.9 (with elu+1 features at D=64, after a few tokens), so the
        denominator's term of dq and dk is lost (`scripts/fla_norm_sim.py` reproduces the errors
        on the CPU: docs/competitors.md). Later fla versions are not refused: the GPU twin test
        checks them."""
        version = _fla_version()
        if (mode == "fwd_bwd" and device.type == "cuda" and dtype == torch.float16
                and (version is None or version <= (0, 6, 0))):
            shown = ".".join(map(str, version)) if version else "unknown"
            return [f"fla's chunk_linear_attn backward returns wrong dq and dk with float16 inputs "
                    f"and elu+1 features: its normaliser squares the denominator in float16, which "
                    f"overflows above 255.9 (measured with fla 0.6.0; installed: {shown})"]
        return []

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        phi_q, phi_k = (elu_features(x.float()).to(x.dtype) for x in (q, k))
        return _fla_linear_attn(phi_q, phi_k, v)


class GMAFLA(GMAMixer):
    name = "gma-fla"
    cuda_only = True
    supports_bidirectional = False
    eps = _FLA_EPS

    def __init__(self) -> None:
        self.requested_impl = self.impl = "fla"

    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        reasons = super().not_supported_reasons(shape, dtype, device)
        return reasons + _crash_reasons(shape.K, shape, dtype, device)

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        return "fla"

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        from gmabench.gma import gma_responsibilities
        v = inputs["v"]
        params = (inputs["mu"], inputs["log_sigma"], inputs["mix_logits"])
        r_q, r_k = (gma_responsibilities(inputs[name], *params).to(v.dtype) for name in ("q", "k"))
        return _fla_linear_attn(r_q, r_k, v)


def _triton_version() -> tuple[int, int, int] | None:
    try:
        import triton
    except Exception:
        return None
    return _version_tuple(getattr(triton, "__version__", ""))


class FLASimpleGLA(Mamba2):
    name = "fla-simple-gla"
    impl = "fla"
    cuda_only = True

    def mode_not_supported_reasons(self, mode: str, device: torch.device,
                                   dtype: torch.dtype | None = None) -> list[str]:
        if mode != "fwd_bwd" or device.type != "cuda":
            return []
        # fla raises here itself (its issue #640: wrong gradients from these Triton versions).
        version = _triton_version()
        hopper = torch.cuda.get_device_capability(device)[0] == 9
        if hopper and version is not None and (3, 4, 0) <= version < (3, 7, 1):
            return [f"fla's gated backward refuses Triton < 3.7.1 on Hopper "
                    f"(installed: triton {'.'.join(map(str, version))})"]
        return []

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        from fla.ops.simple_gla import chunk_simple_gla
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        dt, A = decay_inputs(inputs, torch.float32)
        k_dt = (k.float() * dt[..., None]).to(k.dtype)
        out, _ = chunk_simple_gla(q, k_dt, v, g=dt * A, scale=1.0)
        return out
