"""The mixer registry: pure data naming every mixer, where its class lives and what it needs.

Listing mixers or asking whether one can run imports nothing optional (no fla, no mamba_ssm, no
triton) and no mixer module: a mixer's module is imported only by `load_mixer`. Out-of-tree mixers
join through the environment: GMABENCH_MIXERS="my-mixer=mypkg.mixers:MyMixer,...".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from gmabench.mixers.base import Mixer

__all__ = ["MIXERS", "PLUGIN_VARIABLE", "MixerEntry", "UnknownMixerError", "all_entries",
           "availability", "get_entry", "list_mixers", "load_mixer", "mixer_names"]


@dataclass(frozen=True)
class MixerEntry:
    """One registered mixer: `target` is "module:Class", instantiated with `kwargs`."""

    name: str
    family: str                               # "gma", "softmax", "linear", "ssm"
    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    requires: tuple[str, ...] = ()           # importable module names the mixer needs
    requires_any: tuple[str, ...] = ()       # ... and at least one of these (alternative packages)
    cuda_only: bool = False
    k_applies: bool = True                    # does K change what the mixer computes?


_GMA = "gmabench.mixers.gma:GMAMixer"
_SDPA = "gmabench.mixers.sdpa:SDPA"

MIXERS: tuple[MixerEntry, ...] = (
    MixerEntry("gma", "gma", _GMA, {"impl": "auto"},
               "GMA, fastest implementation that runs here (triton on CUDA, else PyTorch)"),
    MixerEntry("gma-reference", "gma", _GMA, {"impl": "reference"},
               "GMA, plain PyTorch (bidir: matmuls; causal: cumsum of N x K x Dv)"),
    MixerEntry("gma-chunked", "gma", _GMA, {"impl": "chunked"},
               "GMA, chunked PyTorch (causal state passing, linear memory)"),
    MixerEntry("gma-triton", "gma", _GMA, {"impl": "triton"},
               "GMA, fused Triton kernels", requires=("triton",), cuda_only=True),
    MixerEntry("gma-triton-fast", "gma", _GMA, {"impl": "triton", "precision": "fast"},
               "GMA, fused Triton kernels with single bf16/fp16 products (faster; its rel_error "
               "shows the accuracy given up)", requires=("triton",), cuda_only=True),
    MixerEntry("gma-triton-split", "gma", _GMA, {"impl": "triton", "precision": "split"},
               "GMA, fused Triton kernels with split-bf16 products everywhere (the default before "
               "the scaled-fp16 output pass)", requires=("triton",), cuda_only=True),
    MixerEntry("gma-triton-ieee", "gma", _GMA, {"impl": "triton", "precision": "ieee"},
               "GMA, fused Triton kernels with exact float32 products and no tensor cores (the "
               "float32 default before tf32x3; the exact twin)", requires=("triton",),
               cuda_only=True),
    MixerEntry("gma-triton-fp16", "gma", _GMA, {"impl": "triton", "precision": "fp16"},
               "GMA, fused Triton kernels with scaled-fp16 products in the output pass for float16 "
               "inputs too (the default for bfloat16; the state the backward reads and the "
               "backward stay split, but for the products feeding dq, dk, dv alone)",
               requires=("triton",), cuda_only=True),
    MixerEntry("gma-fla", "gma", "gmabench.mixers.fla:GMAFLA", {},
               "GMA responsibilities fed to fla chunk_linear_attn(normalize=True), causal",
               requires=("fla", "triton"), cuda_only=True),
    MixerEntry("softmax-naive", "softmax", "gmabench.mixers.softmax:SoftmaxNaive", {},
               "softmax attention, scores materialised", k_applies=False),
    MixerEntry("sdpa", "softmax", _SDPA, {},
               "torch scaled_dot_product_attention, PyTorch's own backend choice", k_applies=False),
    MixerEntry("sdpa-flash", "softmax", _SDPA, {"backend": "flash"},
               "SDPA flash backend (FlashAttention-2 in PyTorch)", cuda_only=True, k_applies=False),
    MixerEntry("sdpa-cudnn", "softmax", _SDPA, {"backend": "cudnn"},
               "SDPA cuDNN backend", cuda_only=True, k_applies=False),
    MixerEntry("sdpa-efficient", "softmax", _SDPA, {"backend": "efficient"},
               "SDPA memory-efficient backend", cuda_only=True, k_applies=False),
    MixerEntry("sdpa-math", "softmax", _SDPA, {"backend": "math"},
               "SDPA math backend (unfused, runs anywhere)", k_applies=False),
    MixerEntry("flash-attn", "softmax", "gmabench.mixers.flash_attn:FlashAttn", {},
               "flash-attn's flash_attn_func: flash-attn-4 (CuTe), else FlashAttention-3, else -2",
               requires_any=("flash_attn", "flash_attn_interface"), cuda_only=True, k_applies=False),
    MixerEntry("linear-attention", "linear", "gmabench.mixers.linear:LinearAttention", {},
               "normalised linear attention, elu+1 features, chunked PyTorch", k_applies=False),
    MixerEntry("performer", "linear", "gmabench.mixers.performer:Performer", {},
               "Performer FAVOR+, K positive orthogonal random features"),
    MixerEntry("mamba2", "ssm", "gmabench.mixers.mamba2:Mamba2", {},
               "Mamba2 SSD (scalar decay, d_state K), chunked PyTorch"),
    MixerEntry("mamba2-ssd", "ssm", "gmabench.mixers.mamba2:Mamba2SSD", {},
               "mamba_ssm mamba_chunk_scan_combined (Mamba2 SSD Triton kernels), chunks of 256 "
               "as Mamba2 runs them", requires=("mamba_ssm", "triton", "einops"), cuda_only=True),
    MixerEntry("mamba2-ssd-chunk64", "ssm", "gmabench.mixers.mamba2:Mamba2SSD",
               {"chunk_size": 64}, "the same kernels in chunks of 64 (mamba2-ssd before 2026-11-29)",
               requires=("mamba_ssm", "triton", "einops"), cuda_only=True),
    MixerEntry("fla-linear-attention", "linear", "gmabench.mixers.fla:FLALinearAttention", {},
               "fla chunk_linear_attn, elu+1 features, normalised, causal",
               requires=("fla", "triton"), cuda_only=True, k_applies=False),
    MixerEntry("fla-simple-gla", "ssm", "gmabench.mixers.fla:FLASimpleGLA", {},
               "fla chunk_simple_gla (Mamba2-class SSD, scalar decay, d_state K), causal",
               requires=("fla", "triton"), cuda_only=True),
)

_BY_NAME = {entry.name: entry for entry in MIXERS}
PLUGIN_VARIABLE = "GMABENCH_MIXERS"    # "name=module:Class,..." adds out-of-tree mixers

# pip distribution names, for reasons a user can act on.
_PIP_NAMES = {"fla": "flash-linear-attention", "mamba_ssm": "mamba-ssm"}


class UnknownMixerError(ValueError):
    """A mixer name that is not registered."""


def _plugin_entries() -> list[MixerEntry]:
    """Entries named in $GMABENCH_MIXERS, read at each call so a test or a worker can set it."""
    spec = os.environ.get(PLUGIN_VARIABLE, "").strip()
    entries = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        if not name or ":" not in target:
            raise ValueError(f"{PLUGIN_VARIABLE}: expected 'name=module:Class', got {item!r}")
        if name in _BY_NAME:
            raise ValueError(f"{PLUGIN_VARIABLE}: {name!r} is already a registered mixer")
        entries.append(MixerEntry(name, "plugin", target, description=f"from {PLUGIN_VARIABLE}"))
    return entries


def all_entries() -> list[MixerEntry]:
    return [*MIXERS, *_plugin_entries()]


def mixer_names() -> list[str]:
    return [entry.name for entry in all_entries()]


def get_entry(name: str) -> MixerEntry:
    if name in _BY_NAME:
        return _BY_NAME[name]
    for entry in _plugin_entries():
        if entry.name == name:
            return entry
    raise UnknownMixerError(f"unknown mixer {name!r}; known mixers: {', '.join(mixer_names())}")


def load_mixer(name: str) -> "Mixer":
    """Import the mixer's class and instantiate it. Imports no optional package itself."""
    entry = get_entry(name)
    module_name, _, class_name = entry.target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    mixer = cls(**dict(entry.kwargs))
    mixer.name = entry.name      # variants share a class; the registry name is the identity
    return mixer


def _module_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):   # a broken parent package, or a bad __spec__
        return True


def availability(name: str) -> tuple[bool, str]:
    """(True, "") when the mixer can run on this machine, else (False, why). Never raises."""
    try:
        entry = get_entry(name)
    except ValueError as exc:          # an unknown name, or a malformed GMABENCH_MIXERS
        return False, str(exc)
    reasons = []
    for module in entry.requires:
        if _module_missing(module):
            pip = _PIP_NAMES.get(module, module)
            reasons.append(f"needs the Python package {module!r} (pip install {pip})")
    if entry.requires_any and all(_module_missing(module) for module in entry.requires_any):
        names = " or ".join(repr(module) for module in entry.requires_any)
        reasons.append(f"needs one of the Python packages {names}")
    if entry.cuda_only:
        try:
            import torch
            has_cuda = torch.cuda.is_available()
        except Exception as exc:  # a broken driver must not break listing
            has_cuda = False
            reasons.append(f"cannot query CUDA ({type(exc).__name__}: {exc})")
        if not has_cuda:
            reasons.append("needs CUDA (torch.cuda.is_available() is False)")
    return (not reasons), "; ".join(reasons)


def list_mixers() -> list[dict[str, Any]]:
    rows = []
    for entry in all_entries():
        available, reason = availability(entry.name)
        rows.append({"name": entry.name, "family": entry.family, "description": entry.description,
                     "k_applies": entry.k_applies, "available": available, "reason": reason})
    return rows
