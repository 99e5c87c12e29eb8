"""Sequence mixers: GMA and the peers it is benchmarked against, behind one `Mixer` contract.

Importing this package imports only the registry (no torch): code that merely lists mixers, such
as the report, stays torch-free. `Mixer`, `Shape`, `MixerLayer` and `build_layer` load on first use.
"""

from gmabench.mixers.registry import (
    MIXERS,
    MixerEntry,
    UnknownMixerError,
    availability,
    get_entry,
    list_mixers,
    load_mixer,
    mixer_names,
)

_LAZY = {"Mixer": "gmabench.mixers.base", "Shape": "gmabench.mixers.base",
         "MixerLayer": "gmabench.mixers.layer", "build_layer": "gmabench.mixers.layer"}

__all__ = ["MIXERS", "MixerEntry", "UnknownMixerError", "availability", "get_entry",
           "list_mixers", "load_mixer", "mixer_names", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
