"""Fused Triton kernels for Gaussian Mixture Attention (forward and backward, bidirectional and
causal). Responsibilities are recomputed inside the kernels and never written to memory.

Under Triton's interpreter, TRITON_INTERPRET=1 must be set before this package is imported.
"""

from .autograd import TUNING, GMATritonFunction, gma_triton, make_plan

__all__ = ["gma_triton", "GMATritonFunction", "TUNING", "make_plan"]
