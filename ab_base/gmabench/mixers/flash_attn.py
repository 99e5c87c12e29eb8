"""Softmax attention through the flash-attn packages: whichever generation is installed.

Tried in this order, the first that imports wins:

- flash-attn-4 ("flash-attn-4 cute"): the CuTe DSL kernels, `flash_attn.cute.flash_attn_func`
  (pip install flash-attn-4; the package ships no flash_attn/__init__.py, so `flash_attn` is a
  namespace package). Sm80 to sm120; on Hopper its own sm90 forward and backward.
- FlashAttention-3 ("flash-attn-3"): the Hopper build, top-level `flash_attn_interface`.
- FlashAttention-2 ("flash-attn-2"): `flash_attn.flash_attn_func` with the flash_attn_2_cuda extension.

All three take (B, N, H, D) tensors, which is the benchmark's own layout, so nothing is transposed.
flash-attn-4 returns (out, lse) and older FlashAttention-3 builds did too; the tuple is unwrapped.
`available_generation()` says which generation is present from the file system alone (find_spec
of top-level names and a look into the package folder), importing none of them: listing mixers
must stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from typing import Callable, Mapping

import torch

from gmabench.mixers.base import Mixer, Shape
from gmabench.mixers.softmax import softmax_flops, softmax_reference

__all__ = ["FA2", "FA3", "FA4", "GENERATIONS", "FlashAttn", "available_generation"]

FA4 = "flash-attn-4 cute"
FA3 = "flash-attn-3"
FA2 = "flash-attn-2"
GENERATIONS: tuple[str, ...] = (FA4, FA3, FA2)

# Distribution names to read each generation's version from (installed metadata, no import).
_DISTRIBUTIONS = {FA4: ("flash-attn-4",), FA3: ("flash-attn-3", "flashattn-hopper"),
                  FA2: ("flash-attn",)}
_INSTALL_HINT = "pip install flash-attn-4, or flash-attn for FlashAttention-2"
_HALF = (torch.float16, torch.bfloat16)


# ---- detection without importing -------------------------------------------------------------
def _package_dirs(name: str) -> list[str]:
    """The folders a top-level package would import from; [] when it is absent. Imports nothing."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return list(spec.submodule_search_locations or [])


def _has_top_level_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _present(generation: str) -> bool:
    if generation == FA4:
        return any(os.path.isfile(os.path.join(d, "cute", "__init__.py"))
                   for d in _package_dirs("flash_attn"))
    if generation == FA3:
        return _has_top_level_module("flash_attn_interface")
    if generation == FA2:   # a regular package (FA4 alone leaves flash_attn a namespace package)
        return any(os.path.isfile(os.path.join(d, "__init__.py"))
                   and os.path.isfile(os.path.join(d, "flash_attn_interface.py"))
                   for d in _package_dirs("flash_attn"))
    raise ValueError(f"unknown flash-attn generation {generation!r}; known: {', '.join(GENERATIONS)}")


def _version(generation: str) -> str:
    for dist in _DISTRIBUTIONS[generation]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:   # unreadable metadata must not break detection
            break
    return "unknown version"


def available_generation(only: str | None = None) -> tuple[str | None, str]:
    """(generation, version) of the first flash-attn generation present, in GENERATIONS order;
    (None, reason) when none is. `only` restricts the search to one generation. Imports nothing."""
    candidates = GENERATIONS if only is None else (only,)
    for generation in candidates:
        if _present(generation):
            return generation, _version(generation)
    if only is None:
        return None, f"no flash-attn package is installed ({_INSTALL_HINT})"
    return None, f"{only} is not installed"


def _import_func(generation: str) -> Callable:
    if generation == FA4:
        from flash_attn.cute import flash_attn_func
    elif generation == FA3:
        from flash_attn_interface import flash_attn_func
    else:
        from flash_attn import flash_attn_func
    return flash_attn_func


# ---- the mixer ----------------------------------------------------------------------------------
class FlashAttn(Mixer):
    """flash-attn's flash_attn_func: exact softmax attention, scale D^-0.5, causal or not."""

    name = "flash-attn"
    uses_components = False
    cuda_only = True
    supported_dtypes = _HALF

    def __init__(self, generation: str | None = None) -> None:
        if generation is not None and generation not in GENERATIONS:
            raise ValueError(f"unknown flash-attn generation {generation!r}; "
                             f"known: {', '.join(GENERATIONS)}")
        self.forced = generation
        self._func: Callable | None = None
        self._loaded: str | None = None          # "generation version" that forward runs
        found, version = available_generation(generation)
        self.impl = f"{found} {version}" if found else "flash-attn (not installed)"

    # ---- capabilities -------------------------------------------------------------------
    def not_supported_reasons(self, shape: Shape, dtype: torch.dtype, device: torch.device) -> list[str]:
        reasons = super().not_supported_reasons(shape, dtype, device)
        generation, detail = available_generation(self.forced)
        if generation is None:
            reasons.append(f"{self.name}: {detail}")
            return reasons
        capability = None
        if device.type == "cuda" and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability(device)
        reasons += _shape_reasons(generation, shape.D, shape.dv, capability)
        return reasons

    # ---- compute ------------------------------------------------------------------------
    def _load(self) -> Callable:
        """Import the first generation that is present and imports; remember which it was."""
        if self._func is not None:
            return self._func
        errors = []
        for generation in (GENERATIONS if self.forced is None else (self.forced,)):
            if not _present(generation):
                continue
            try:
                func = _import_func(generation)
            except Exception as exc:    # a broken install (missing CUDA extension, DSL, ...)
                errors.append(f"{generation}: {type(exc).__name__}: {exc}")
                continue
            self._func = func
            self._loaded = f"{generation} {_version(generation)}"
            self.impl = self._loaded
            return func
        detail = "; ".join(errors) if errors else f"not installed ({_INSTALL_HINT})"
        raise ImportError(f"flash-attn cannot be imported: {detail}")

    def forward(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        out = self._load()(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=causal)
        if isinstance(out, (tuple, list)):    # flash-attn-4 (and old FA3) return (out, lse)
            out = out[0]
        return out

    def reference(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> torch.Tensor:
        return softmax_reference(inputs, causal)

    def backend(self, inputs: Mapping[str, torch.Tensor], causal: bool) -> str:
        """The generation and version that runs (after a forward) or would run (before one)."""
        if self._loaded is not None:
            return self._loaded
        generation, version = available_generation(self.forced)
        return f"{generation} {version}" if generation else "none"

    def flops(self, shape: Shape) -> float:
        # 4 * B * H * N^2 * D when Dv == D, halved when causal (the count flash-attn reports).
        return softmax_flops(shape)


def _shape_reasons(generation: str, d: int, dv: int,
                   capability: tuple[int, int] | None) -> list[str]:
    """Head sizes and GPUs each generation's kernels accept (16-bit inputs)."""
    reasons = []
    major = capability[0] if capability else None
    if generation == FA4:
        if major is not None and major not in (8, 9, 10, 11, 12):
            reasons.append(f"flash-attn-4 needs compute capability 8.x to 12.x, not {major}.x")
        if d % 8 or dv % 8:
            reasons.append(f"flash-attn-4 needs head dims divisible by 8 (got D={d}, Dv={dv})")
        if major in (10, 11):
            if not (max(d, dv) <= 128 or (d, dv) in ((192, 128), (256, 256))):
                reasons.append(f"flash-attn-4 on sm{major}x takes head dims up to 128, "
                               f"(192, 128) or (256, 256), not (D={d}, Dv={dv})")
        elif not (8 <= d <= 256 and 8 <= dv <= 256):
            reasons.append(f"flash-attn-4 takes head dims 8 to 256 (got D={d}, Dv={dv})")
        return reasons
    if generation == FA3 and major is not None and major != 9:
        reasons.append(f"FlashAttention-3 needs a Hopper GPU (compute capability 9.x), not {major}.x")
    if generation == FA2 and major is not None and major < 8:
        reasons.append(f"FlashAttention-2 needs compute capability 8.0 or newer, not {major}.x")
    label = "FlashAttention-3" if generation == FA3 else "FlashAttention-2"
    if d != dv:
        reasons.append(f"{label} here needs Dv == D (got D={d}, Dv={dv})")
    if d > 256:
        reasons.append(f"{label} takes head dims up to 256 (got D={d})")
    return reasons
