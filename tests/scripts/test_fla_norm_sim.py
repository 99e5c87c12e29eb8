"""The CPU model of fla's 16-bit normalisation (docs/competitors.md) against the exact gradients."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "fla_norm_sim", Path(__file__).resolve().parents[2] / "scripts" / "fla_norm_sim.py")
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def _inputs(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn((1, 96, 4, 64), generator=gen)).to(dtype) for _ in range(4)]


def test_the_model_in_float64_matches_autograd():
    # the modelled path in float64 matches float64 autograd to the float32 rounding of its
    # features and key cumsum (as the mixer makes them): the 16-bit errors it reports come from
    # the dtype, not from the model
    q, k, v, do = _inputs(torch.float64, 1)
    exact = sim.exact_grads(q, k, v, do)
    grads, overflow = sim.modelled_grads(q, k, v, do, torch.float64)
    assert overflow == 0.0
    assert max(sim.rel(g, e) for g, e in zip(grads, exact)) < 1e-6


def test_bfloat16_dq_is_coarser_than_dv_and_float16_loses_the_denominator_term():
    for seed in (0, 1):
        q, k, v, do = _inputs(torch.bfloat16, seed)
        (dq, dk, dv), overflow = sim.modelled_grads(q, k, v, do, torch.bfloat16)
        exact = sim.exact_grads(q, k, v, do)
        e_dq, e_dv = sim.rel(dq, exact[0]), sim.rel(dv, exact[2])
        assert overflow == 0.0 and e_dv < 5e-3 and e_dq > 3 * e_dv
        q, k, v, do = _inputs(torch.float16, seed)
        (dq, dk, dv), overflow = sim.modelled_grads(q, k, v, do, torch.float16)
        exact = sim.exact_grads(q, k, v, do)
        assert overflow > 0.9 and sim.rel(dq, exact[0]) > 1.0 and sim.rel(dv, exact[2]) < 1e-3
