"""`gma_attention`: the one entry point to GMA, with input validation and implementation choice.

Implementations: "reference" (plain PyTorch), "chunked" (linear-memory causal PyTorch), "triton"
(fused kernels in `gmabench.gma.triton`, imported only when asked for, so importing gmabench never
needs triton) and "auto", which picks the fastest one that can run on the inputs' device.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from gmabench.gma.chunked import gma_chunked
from gmabench.gma.reference import gma_reference

__all__ = ["IMPLS", "gma_attention", "resolve_impl", "triton_available"]

IMPLS: tuple[str, ...] = ("auto", "reference", "chunked", "triton")


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(repr(i) for i in IMPLS)}; got {impl!r}")


def _triton_interpreter_on() -> bool:
    # TRITON_INTERPRET=1 runs Triton kernels on CPU tensors, which is how kernels are tested without a GPU.
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _import_gma_triton():
    from gmabench.gma.triton import gma_triton
    return gma_triton


def triton_available(device: torch.device | str) -> tuple[bool, str]:
    """(True, "") when the fused Triton kernels can run on `device`, else (False, the reason)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"the Triton GMA kernels need a CUDA device, got {device.type!r}"
    try:
        _import_gma_triton()
    except Exception as exc:  # triton can fail in many ways (missing, wrong CUDA, bad driver)
        return False, f"cannot import gmabench.gma.triton ({type(exc).__name__}: {exc})"
    return True, ""


def triton_deterministic(causal: bool, grad: bool) -> bool:
    """Whether the fused kernels give the same bits call after call: only causal inference does
    (its segments' totals are summed in a fixed order); the bidirectional state and every
    backward's parameter sums are float32 atomic adds, in whatever order they arrive."""
    return causal and not grad


def resolve_impl(impl: str, device: torch.device | str, causal: bool = False,
                 grad: bool = True) -> str:
    """The concrete implementation `impl` means on `device`: "auto" becomes "triton" on CUDA when
    the kernels import, otherwise "chunked" for causal and "reference" for bidirectional GMA (a
    shape whose kernels exceed the GPU's shared memory then runs through gma_chunked inside
    gma_triton, with a warning). Training too, at every shape: from Version 2.4 to 2.17 the
    wide shapes (plan.wide_training) trained in gma_chunked, then 1.9-2.4x faster; since their
    backward loads weights made once per head, the kernels train them 2.0x (bidirectional) and
    1.2x (causal) faster than gma_chunked, at a sixth of its memory or less
    (results/2026-11-30-h200-wide-auto-2, -3; docs/kernels.md, Version 2.18). With
    torch.use_deterministic_algorithms(True), "auto" takes the kernels only where they are
    deterministic (causal inference; `grad`: whether a backward may follow). Explicit names are
    returned unchanged (after checking they exist)."""
    _check_impl(impl)
    if impl != "auto":
        return impl
    if triton_available(device)[0] and (not torch.are_deterministic_algorithms_enabled()
                                        or triton_deterministic(causal, grad)):
        return "triton"
    return "chunked" if causal else "reference"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _validate(q, k, v, mu, log_sigma, mix_logits, temperature, eps) -> None:
    named = {"q": q, "k": k, "v": v, "mu": mu, "log_sigma": log_sigma, "mix_logits": mix_logits}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")

    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, N, H, D); got shape {_shape(q)}")
    B, N, H, D = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the same shape as q (B, N, H, D) = {_shape(q)}; "
                         f"got shape {_shape(k)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, N, H, Dv) = ({B}, {N}, {H}, Dv) to match q "
                         f"{_shape(q)}; got shape {_shape(v)}")
    if mu.dim() != 3 or mu.shape[0] != H or mu.shape[2] != D:
        raise ValueError(f"mu must have shape (H, K, D) = ({H}, K, {D}) to match q {_shape(q)}; "
                         f"got shape {_shape(mu)}")
    K = mu.shape[1]
    if K < 1:
        raise ValueError(f"mu must have at least one component (K >= 1); got shape {_shape(mu)}")
    if D < 1:
        raise ValueError(f"q must have head size D >= 1; got shape {_shape(q)}")
    if log_sigma.shape != mu.shape:
        raise ValueError(f"log_sigma must have the same shape as mu (H, K, D) = {_shape(mu)}; "
                         f"got shape {_shape(log_sigma)}")
    if mix_logits.shape != (H, K):
        raise ValueError(f"mix_logits must have shape (H, K) = ({H}, {K}) to match mu "
                         f"{_shape(mu)}; got shape {_shape(mix_logits)}")

    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"q, k, v, mu, log_sigma and mix_logits must be on one device; got {listing}")

    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")


def gma_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mu: torch.Tensor,
                  log_sigma: torch.Tensor, mix_logits: torch.Tensor, *, causal: bool = False,
                  temperature: float = 1.0, eps: float = 1e-6, impl: str = "auto") -> torch.Tensor:
    """Gaussian Mixture Attention (SPEC-gma.md). Returns (B, N, H, Dv) in v.dtype.

    q, k: (B, N, H, D); v: (B, N, H, Dv); mu, log_sigma: (H, K, D); mix_logits: (H, K).
    impl: "auto" | "reference" | "chunked" | "triton" (see `resolve_impl`).
    Raises ValueError for malformed inputs, RuntimeError when impl="triton" cannot run.
    """
    _check_impl(impl)
    _validate(q, k, v, mu, log_sigma, mix_logits, temperature, eps)
    kwargs = dict(causal=bool(causal), temperature=float(temperature), eps=float(eps))

    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, mu, log_sigma, mix_logits))
    chosen = resolve_impl(impl, q.device, causal=bool(causal), grad=grad)
    if chosen == "reference":
        return gma_reference(q, k, v, mu, log_sigma, mix_logits, **kwargs)
    if chosen == "chunked":
        return gma_chunked(q, k, v, mu, log_sigma, mix_logits, **kwargs)

    # chosen == "triton"
    if q.device.type != "cuda" and not _triton_interpreter_on():
        raise RuntimeError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1); the inputs are "
                           f"on {q.device}. Use impl='reference' or 'chunked' on this device.")
    try:
        gma_triton = _import_gma_triton()
    except Exception as exc:
        raise RuntimeError(f"impl='triton' is unavailable: importing gmabench.gma.triton failed "
                           f"({type(exc).__name__}: {exc})") from exc
    if torch.are_deterministic_algorithms_enabled() and not triton_deterministic(bool(causal), grad):
        # as PyTorch's own nondeterministic ops do: raise, or warn in warn_only mode
        message = ("impl='triton' does not have a deterministic implementation here (float32 "
                   "atomic sums: the bidirectional state and every backward's parameter sums; "
                   "only causal inference is deterministic), but torch.use_deterministic_algorithms"
                   "(True) is set. Use impl='auto' (it then picks PyTorch) or 'chunked'.")
        if not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=2)
    return gma_triton(q, k, v, mu, log_sigma, mix_logits, **kwargs)
