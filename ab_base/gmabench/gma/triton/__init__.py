"""Fused Triton kernels for Gaussian Mixture Attention (forward and backward, bidirectional and
causal). Responsibilities are recomputed inside the kernels and never written to memory.

Under Triton's interpreter, TRITON_INTERPRET=1 must be set before this package is imported.
"""

from .autograd import GMATritonFunction, gma_triton
from .plan import PLAN_TABLE, TUNING, load_plan_file, make_plan

__all__ = ["gma_triton", "GMATritonFunction", "PLAN_TABLE", "TUNING", "load_plan_file", "make_plan"]
