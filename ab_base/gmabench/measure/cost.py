"""Analytic cost of a timed call, from the mixer's forward cost model.

A backward pass is counted as twice the forward's FLOPs (the usual convention: two products per
forward product). The fewest bytes of a forward read q, k, v once and write o once; a backward
also reads q, k, v and the output gradient and writes dq, dk, dv.
"""

from __future__ import annotations

from gmabench.mixers.base import Mixer, Shape


def call_flops(mixer: Mixer, shape: Shape, mode: str) -> float | None:
    f = mixer.flops(shape)
    if f is None:
        return None
    return f if mode == "fwd" else 3.0 * f


def call_min_bytes(mixer: Mixer, shape: Shape, itemsize: int, mode: str) -> float | None:
    fwd = mixer.min_bytes(shape, itemsize)
    if fwd is None or mode == "fwd":
        return fwd
    dqk, dv = mixer.qk_dim(shape), shape.dv
    bwd = itemsize * shape.B * shape.N * shape.H * (4 * dqk + 3 * dv)
    return fwd + bwd
