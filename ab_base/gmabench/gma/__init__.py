"""The GMA op: exact reference, chunked PyTorch, the `gma_attention` entry point and the `GMA` layer.

Triton kernels live in `gmabench.gma.triton` and are imported only when impl="triton" (or "auto"
on CUDA) asks for them, so importing this package never imports triton.
"""

from gmabench.gma.api import gma_attention, resolve_impl, triton_available
from gmabench.gma.chunked import gma_chunked
from gmabench.gma.layer import GMA
from gmabench.gma.reference import gma_reference, gma_responsibilities, gma_spec_float64

__all__ = [
    "GMA",
    "gma_attention",
    "gma_chunked",
    "gma_reference",
    "gma_responsibilities",
    "gma_spec_float64",
    "resolve_impl",
    "triton_available",
]
