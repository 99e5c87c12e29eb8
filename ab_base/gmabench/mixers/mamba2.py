"""Mamba2's SSD mixer (scalar decay per head and step), in chunked PyTorch and through mamba_ssm.

With C = q, B = k (both of size d_state = K), x = v, dt = softplus(dt_raw), A = -exp(A_log):

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T        (h_t: K x Dv per head)
    y_t = C_t^T h_t

It is causal by construction. dt_raw (B, N, H) is an input, not a weight: in Mamba2 dt comes from
the token, so it is drawn per token here, differentiated like q, k, v, and a layer projects it from
x (`token_inputs`). The skip term D and the gate z of the full Mamba2 block are not part of the
mixer core and are left out.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Mapping

import torch
import torch.nn.functional as F

from gmabench.mixers.base import Inputs, Mixer, Shape

__all__ = ["Mamba2", "Mamba2SSD", "decay_inputs", "load_mamba_ssd_combined", "ssd_chunked", "ssd_sequential"]


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., L) -> (..., L, L): out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.
    Summed directly rather than as a difference of cumsums, which loses precision."""
    L = a.shape[-1]
    ones = torch.ones(L, L, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, L).masked_fill(~ones.tril(-1), 0.0)  # [t, j]: a_t, t > j
    return terms.cumsum(dim=-2).masked_fill(~ones.tril(), float("-inf"))


def decay_inputs(inputs: Mapping[str, torch.Tensor], acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    dt = F.softplus(inputs["dt_raw"].to(acc))                              # (B, N, H)
    A = -torch.exp(inputs["A_log"].to(acc))                                # (H,)
    return dt, A


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 64) -> torch.Tensor:
    """SSD in chunks: masked products inside each chunk, states passed between chunks.

    x (b, n, h, p), dt (b, n, h), A (h,), B and C (b, n, h, k), all in the accumulation dtype.
    Memory: (n / chunk) states of k x p per head plus chunk x chunk decay blocks, never one state
    per token. The chunk-to-chunk pass is a loop, as the recurrence is sequential there.
    """
    b, n, h, p = x.shape
    L = chunk_size
    n_chunks = -(-n // L)
    pad = n_chunks * L - n   # padded steps have dt = 0: no decay and no input

    def chunked(t: torch.Tensor) -> torch.Tensor:           # (b, n, h, X) -> (b, h, nc, L, X)
        t = F.pad(t, (0, 0, 0, 0, 0, pad))
        return t.view(b, n_chunks, L, h, t.shape[-1]).permute(0, 3, 1, 2, 4)

    log_decay = chunked((dt * A)[..., None])[..., 0]          # (b, h, nc, L)
    x_c, B_c, C_c = chunked(x * dt[..., None]), chunked(B), chunked(C)
    decay_cs = log_decay.cumsum(-1)

    within = (C_c @ B_c.transpose(-1, -2)) * torch.exp(_segsum(log_decay))
    y = within @ x_c                                          # (b, h, nc, L, p)

    to_end = torch.exp(decay_cs[..., -1:] - decay_cs)         # decay from step j to chunk end
    chunk_states = (B_c * to_end[..., None]).transpose(-1, -2) @ x_c     # (b, h, nc, k, p)
    chunk_decay = torch.exp(decay_cs[..., -1])                # (b, h, nc)
    state = x.new_zeros(b, h, B.shape[-1], p)
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, :, c]
    entering = torch.stack(entering, dim=2)                   # state before each chunk

    y = y + torch.exp(decay_cs)[..., None] * (C_c @ entering)
    return y.permute(0, 2, 3, 1, 4).reshape(b, n_chunks * L, h, p)[:, :n]


def ssd_sequential(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> torch.Tensor:
    """The recurrence token by token: slow, and obviously the definition."""
    b, n, h, p = x.shape
    state = x.new_zeros(b, h, B.shape[-1], p)
    ys = []
    for t in range(n):
        decay = torch.exp(dt[:, t] * A)[..., None, None]                  # (b, h, 1, 1)
        write = (dt[:, t, :, None] * B[:, t])[..., None] * x[:, t, :, None, :]
        state = decay * state + write
        ys.append(torch.einsum("bhk,bhkp->bhp", C[:, t], state))
    return torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)


class Mamba2(Mixer):
    """Mamba2 SSD core in chunked PyTorch, float32 accumulation. d_state = K is the q/k size."""

    name = "mamba2"
    impl = "pytorch"
    uses_components = True
    supports_bidirectional = False
    token_inputs = ("dt_raw",)

    def __init__(self, chunk_size: int = 64) -> None:
        self.chunk_size = chunk_size

    def qk_dim(self, shape: Shape) -> int:
        return shape.K

    def make_params(self, shape: Shape, device: torch.device,
                    generator: torch.Generator | None = None) -> Inputs:
        # A in [1, 16] as Mamba2 initialises it; dt = softplus(N(-2.5, 0.5^2)) is mostly 0.03-0.2.
        A = 1.0 + 15.0 * torch.rand(shape.H, generator=generator)
        dt_raw = 0.5 * torch.randn(shape.B, shape.N, shape.H, generator=generator) - 2.5
        return {"A_log": torch.log(A).to(device), "dt_raw": dt_raw.to(device)}

    @property
    def grad_inputs(self) -> tuple[str, ...]:
        return ("q", "k", "v", "dt_raw", "A_log")

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        acc = torch.float64 if v.dtype == torch.float64 else torch.float32
        dt, A = decay_inputs(inputs, acc)
        y = ssd_chunked(v.to(acc), dt, A, k.to(acc), q.to(acc), chunk_size=self.chunk_size)
        return y.to(v.dtype)

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        up = {name: t.double() for name, t in inputs.items()}
        dt, A = decay_inputs(up, torch.float64)
        return ssd_sequential(up["v"], dt, A, up["k"], up["q"])

    def flops(self, shape: Shape) -> float:
        # Recurrent form per token and head: decay, write and read a K x Dv state.
        return float(shape.B * shape.N * shape.H * (5 * shape.K * shape.dv + 3 * shape.K))


# ---- mamba_ssm ---------------------------------------------------------------------------------
def load_mamba_ssd_combined() -> ModuleType:
    """mamba_ssm.ops.triton.ssd_combined, without running mamba_ssm/__init__.py.

    That __init__ imports compiled CUDA extensions (selective_scan_cuda, causal_conv1d) which the
    Triton SSD kernels do not need and which a Triton-only install lacks. The parent packages are
    registered as bare modules whose __path__ points at the real folders, so the submodule and its
    siblings import normally while the parents' __init__ files are skipped.
    """
    name = "mamba_ssm.ops.triton.ssd_combined"
    if name in sys.modules:
        return sys.modules[name]
    if "mamba_ssm" not in sys.modules:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("mamba_ssm is not installed (pip install mamba-ssm)")
        root = list(spec.submodule_search_locations)
        for package, path in (("mamba_ssm", root),
                              ("mamba_ssm.ops", [f"{p}/ops" for p in root]),
                              ("mamba_ssm.ops.triton", [f"{p}/ops/triton" for p in root])):
            # origin gives the bare module a __file__ (its unexecuted __init__.py): code that asks
            # inspect where a module lives (flash-attn-4's CuTe DSL does, for every module) would
            # otherwise take it for a built-in and raise TypeError.
            bare = importlib.machinery.ModuleSpec(package, None, origin=f"{path[0]}/__init__.py",
                                                  is_package=True)
            bare.has_location = True
            bare.submodule_search_locations = path
            sys.modules[package] = importlib.util.module_from_spec(bare)
    return importlib.import_module(name)


class Mamba2SSD(Mamba2):
    """The same function through mamba_ssm's fused Triton kernels (mamba_chunk_scan_combined),
    in chunks of 256 tokens by default: what mamba_ssm's Mamba2 module passes them. Chunks of 64
    (registered as mamba2-ssd-chunk64, this mixer's chunking before 2026-11-29) stop at 4096 x 16
    chunk-head pairs: N=262144 with H=16 asks mamba_ssm's _bmm_chunk_fwd for a grid of
    nchunks * ngroups = 65536 in its third dimension, over CUDA's 65535 ("invalid argument")."""

    name = "mamba2-ssd"
    impl = "mamba_ssm"
    cuda_only = True

    def __init__(self, chunk_size: int = 256) -> None:
        super().__init__(chunk_size)

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        return f"mamba_ssm, chunks of {self.chunk_size}"

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        scan = load_mamba_ssd_combined().mamba_chunk_scan_combined
        A = -torch.exp(inputs["A_log"].float())
        # softplus is fused into the kernel (dt_softplus=True), as Mamba2 itself calls it.
        return scan(inputs["v"], inputs["dt_raw"], A, inputs["k"], inputs["q"],
                    chunk_size=self.chunk_size, D=None, z=None, dt_softplus=True)
