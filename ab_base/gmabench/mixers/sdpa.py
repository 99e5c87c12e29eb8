"""torch.nn.functional.scaled_dot_product_attention, with PyTorch's own backend choice or one forced.

`sdpa` lets PyTorch pick and `backend()` reports what it picked. `sdpa-flash`, `sdpa-cudnn`,
`sdpa-efficient` and `sdpa-math` run with only that backend enabled, so an input the backend
refuses raises instead of silently falling back; `not_supported_reasons` turns the refusal into a
readable skip beforehand, using PyTorch's own eligibility checks and their debug messages.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gmabench.mixers.base import Mixer, Shape
from gmabench.mixers.softmax import softmax_flops, softmax_reference

__all__ = ["BACKENDS", "SDPA", "only_backend"]

BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
_NAME_OF = {int(enum): name for name, enum in BACKENDS.items()}
# PyTorch's eligibility check per fused backend (can_use_cudnn_attention is missing in old torch).
_CAN_USE = {"flash": "can_use_flash_attention", "efficient": "can_use_efficient_attention",
            "cudnn": "can_use_cudnn_attention"}
_HALF = (torch.float16, torch.bfloat16)


def _flag_accessors():
    """(getter, setter) per SDPA backend flag, the same flags sdpa_kernel toggles."""
    names = getattr(torch.nn.attention, "_backend_names", None)
    if not isinstance(names, dict):
        return None
    try:
        return {getattr(SDPBackend, enum_name): (getattr(torch._C, f"_get_{flag}_sdp_enabled"),
                                                 getattr(torch._C, f"_set_sdp_use_{flag}"))
                for flag, enum_name in names.items()}
    except AttributeError:
        return None


_FLAGS = _flag_accessors()


class only_backend:
    """sdpa_kernel([backend]) at an eighth of its cost (1.3 us against 10 us, measured on CPU):
    it runs inside every timed call, where 10 us is a third of a flash forward at N = 1024.
    Not reentrant; an SDPA mixer keeps one and reuses it."""

    def __init__(self, backend: SDPBackend) -> None:
        self.fallback = sdpa_kernel([backend]) if _FLAGS is None else None
        if _FLAGS is not None:
            self.getters = [getter for getter, _ in _FLAGS.values()]
            self.setters = [setter for _, setter in _FLAGS.values()]
            self.wanted = [enum == backend for enum in _FLAGS]

    def __enter__(self) -> None:
        if self.fallback is not None:
            return self.fallback.__enter__()
        self.previous = [getter() for getter in self.getters]
        for setter, on in zip(self.setters, self.wanted):
            setter(on)

    def __exit__(self, *exc) -> None:
        if self.fallback is not None:
            return self.fallback.__exit__(*exc)
        for setter, on in zip(self.setters, self.previous):
            setter(on)


def _bhnd(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(inputs[name].transpose(1, 2) for name in ("q", "k", "v"))


def _sdpa_params(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    Params = torch.backends.cuda.SDPAParams
    try:
        return Params(q, k, v, None, 0.0, causal, False)   # torch >= 2.5 takes enable_gqa
    except TypeError:
        return Params(q, k, v, None, 0.0, causal)


def _probe_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> str:
    """The first enabled backend, in PyTorch's priority order, whose eligibility check accepts."""
    try:
        order = [int(b) for b in torch._C._get_sdp_priority_order()]
    except AttributeError:   # the order PyTorch used before it became configurable
        order = [int(BACKENDS[n]) for n in ("flash", "efficient", "math")]
    enabled = {"flash": torch.backends.cuda.flash_sdp_enabled(),
               "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
               "math": torch.backends.cuda.math_sdp_enabled(),
               "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: False)()}
    params = _sdpa_params(q, k, v, causal)
    for code in order:
        name = _NAME_OF.get(code)
        if name is None or not enabled[name]:
            continue
        if name == "math":
            return name
        check = getattr(torch.backends.cuda, _CAN_USE[name], None)
        if check is not None and check(params, False):
            return name
    return "none"


class SDPA(Mixer):
    uses_components = False

    def __init__(self, backend: str | None = None) -> None:
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.forced = backend
        self._only = None if backend is None else only_backend(BACKENDS[backend])
        self.name = "sdpa" if backend is None else f"sdpa-{backend}"
        self.impl = self.name
        self.cuda_only = backend in ("flash", "efficient", "cudnn")
        if backend in ("flash", "cudnn"):
            self.supported_dtypes = _HALF

    # ---- capabilities -------------------------------------------------------------------
    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        reasons = super().not_supported_reasons(shape, dtype, device)
        if reasons or self.forced in (None, "math") or device.type != "cuda":
            return reasons
        return self._cuda_refusal(shape, dtype, device)

    def _cuda_refusal(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        """Ask PyTorch's own eligibility check, and keep its debug messages as the reason."""
        check = getattr(torch.backends.cuda, _CAN_USE[self.forced], None)
        if check is None:
            return [f"this torch has no torch.backends.cuda.{_CAN_USE[self.forced]}"]
        B, N, H = shape.B, shape.N, shape.H
        q, k = (torch.empty(B, N, H, shape.D, dtype=dtype, device=device).transpose(1, 2)
                for _ in range(2))
        v = torch.empty(B, N, H, shape.dv, dtype=dtype, device=device).transpose(1, 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with self._only:
                ok = check(_sdpa_params(q, k, v, shape.causal), True)
        if ok:
            return []
        why = "; ".join(str(w.message).strip() for w in caught) or "no reason given"
        return [f"PyTorch refuses the {self.forced} backend for these inputs: {why}"]

    # ---- compute ------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        q, k, v = _bhnd(inputs)
        if self.forced is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)
        with self._only:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        return softmax_reference(inputs, causal)

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        """The backend that runs for these inputs (a forced one is the only one enabled)."""
        if self.forced is not None:
            return self.forced
        q, k, v = _bhnd(inputs)
        choose = getattr(torch, "_fused_sdp_choice", None)   # the dispatcher's own decision
        if choose is not None:
            name = _NAME_OF.get(int(choose(q, k, v, None, 0.0, causal)), "none")
        elif q.device.type == "cuda":
            name = _probe_choice(q, k, v, causal)
        else:
            return "cpu-math-or-flash"
        return name if q.device.type == "cuda" else f"cpu-{name}"

    def flops(self, shape: Shape) -> float:
        return softmax_flops(shape)
