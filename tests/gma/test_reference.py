"""gma_spec_float64 (the yardstick) and gma_reference / gma_responsibilities against it.

The yardstick is first checked against independent forms of the SPEC (explicit Normal densities and
the N x N affinity), then gma_reference is compared with it for outputs and all six gradients.
"""

from __future__ import annotations

import pytest
import torch

from gmabench.gma import (gma_attention, gma_chunked, gma_reference, gma_responsibilities,
                          gma_spec_float64)

# (B, N, H, D, K, Dv, temperature): N=1, K=1, Dv != D, several heads, batch 2, temperature != 1.
SHAPES = [
    pytest.param((1, 1, 1, 4, 3, 4, 1.0), id="N1"),
    pytest.param((2, 9, 2, 4, 1, 4, 1.0), id="K1"),
    pytest.param((2, 33, 2, 8, 5, 12, 0.7), id="Dv12-tau0.7"),
    pytest.param((1, 48, 4, 16, 16, 8, 2.0), id="H4-K16-tau2"),
    pytest.param((2, 20, 3, 6, 7, 3, 1.0), id="B2-H3"),
]

F32_TOL = 1e-5       # float32 accumulation against float64: measured errors are ~1e-6
BF16_TOL = 2e-2      # bfloat16 inputs/outputs: rounding alone is ~4e-3
# Inputs and grad_out are O(0.5), so informative gradients have norms near 1. At N = 1,
# o = v * den / (den + eps) and the gradients for q, k and the mixture parameters exist only through
# eps (norms ~1e-3 down to 1e-7), where float32 rounding of den / (den + eps) is all one measures;
# below this norm the check becomes absolute (tol * NORM_FLOOR).
NORM_FLOOR = 0.1


def _normal_responsibilities(x, mu, log_sigma, mix_logits, temperature):
    """r(x) from torch.distributions, independent of both the spec and the matmul form."""
    x, mu, log_sigma, mix_logits = (t.double() for t in (x, mu, log_sigma, mix_logits))
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    log_lik = normal.log_prob(x[:, :, :, None, :]).sum(-1) + torch.log_softmax(mix_logits, -1)
    return torch.softmax(log_lik / temperature, dim=-1)


# ---- the yardstick itself ----------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_spec_matches_dense_affinity_form(causal, gma_make_inputs, gma_rel_err):
    x = gma_make_inputs(2, 13, 2, 5, 4, 6, requires_grad=False)
    tau, eps = 0.8, 1e-6
    r_q = _normal_responsibilities(x["q"], x["mu"], x["log_sigma"], x["mix_logits"], tau)
    r_k = _normal_responsibilities(x["k"], x["mu"], x["log_sigma"], x["mix_logits"], tau)
    affinity = torch.einsum("bihk,bjhk->bhij", r_q, r_k)                  # A = R_q R_k^T
    if causal:
        affinity = affinity.tril()
    num = torch.einsum("bhij,bjhv->bihv", affinity, x["v"].double())
    den = affinity.sum(-1).transpose(1, 2)
    dense = num / (den + eps)[..., None]

    spec = gma_spec_float64(**x, causal=causal, temperature=tau, eps=eps)
    assert spec.dtype == torch.float64
    assert gma_rel_err(spec, dense) < 1e-12


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_spec_with_one_component_is_a_mean_of_values(causal, gma_make_inputs):
    # K = 1 makes every responsibility 1, so GMA reduces to a (running) mean of v.
    x = gma_make_inputs(1, 6, 1, 3, 1, 2, requires_grad=False)
    out = gma_spec_float64(**x, causal=causal, eps=0.0)
    v = x["v"].double()
    if causal:
        expected = v.cumsum(1) / torch.arange(1, 7, dtype=torch.float64)[None, :, None, None]
    else:
        expected = v.mean(1, keepdim=True).expand_as(v)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ---- responsibilities --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_responsibilities_match_normal_densities(dtype, gma_make_inputs, gma_rel_err):
    x = gma_make_inputs(2, 11, 3, 6, 5, dtype=dtype, requires_grad=False)
    r = gma_responsibilities(x["q"], x["mu"], x["log_sigma"], x["mix_logits"], temperature=1.5)
    assert r.shape == (2, 11, 3, 5)
    assert r.dtype == torch.float32
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 11, 3), rtol=0, atol=1e-6)
    expected = _normal_responsibilities(x["q"], x["mu"], x["log_sigma"], x["mix_logits"], 1.5)
    assert gma_rel_err(r, expected) < F32_TOL


# ---- gma_reference against the yardstick -------------------------------------------------------
def _compare_with_spec(fn, shape, causal, dtype, tol, make_inputs, run_with_grads, rel_err, **kwargs):
    B, N, H, D, K, Dv, tau = shape
    x = make_inputs(B, N, H, D, K, Dv, dtype=dtype, seed=B * 1000 + N)
    grad_out = 0.5 * torch.randn(B, N, H, Dv, generator=torch.Generator().manual_seed(7))
    out, grads = run_with_grads(fn, x, grad_out, causal=causal, temperature=tau, **kwargs)
    ref, ref_grads = run_with_grads(gma_spec_float64, x, grad_out, causal=causal, temperature=tau)
    assert out.dtype == dtype and out.shape == (B, N, H, Dv)
    errors = {"out": rel_err(out, ref, NORM_FLOOR)}
    errors.update({name: rel_err(g, ref_grads[name], NORM_FLOOR) for name, g in grads.items()})
    assert grads["q"].dtype == dtype and grads["mu"].dtype == torch.float32
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_reference_float32_matches_spec(shape, causal, gma_make_inputs, gma_run_with_grads,
                                        gma_rel_err):
    _compare_with_spec(gma_reference, shape, causal, torch.float32, F32_TOL,
                       gma_make_inputs, gma_run_with_grads, gma_rel_err)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_reference_bfloat16_matches_spec(shape, causal, gma_make_inputs, gma_run_with_grads,
                                         gma_rel_err):
    _compare_with_spec(gma_reference, shape, causal, torch.bfloat16, BF16_TOL,
                       gma_make_inputs, gma_run_with_grads, gma_rel_err)


def test_reference_accumulates_bfloat16_sums_in_float32(gma_make_inputs, gma_rel_err):
    # The SPEC's numerics rule: a long causal sum must not be carried in bfloat16.
    x = gma_make_inputs(1, 512, 1, 8, 4, 8, dtype=torch.bfloat16, requires_grad=False)
    out = gma_reference(**x, causal=True)
    assert gma_rel_err(out, gma_spec_float64(**x, causal=True)) < BF16_TOL


def test_reference_keeps_float64_inputs_in_float64(gma_make_inputs, gma_rel_err):
    x = {n: t.double() for n, t in gma_make_inputs(2, 10, 2, 4, 3, requires_grad=False).items()}
    for causal in (False, True):
        out = gma_reference(**x, causal=causal)
        assert out.dtype == torch.float64
        assert gma_rel_err(out, gma_spec_float64(**x, causal=causal)) < 1e-12


def test_eps_enters_the_denominator(gma_make_inputs):
    x = gma_make_inputs(1, 5, 1, 4, 3, requires_grad=False)
    assert not torch.allclose(gma_reference(**x, eps=1e-6), gma_reference(**x, eps=1.0))
    torch.testing.assert_close(gma_reference(**x, eps=0.5),
                               gma_spec_float64(**x, eps=0.5).float(), rtol=1e-5, atol=1e-6)


# ---- robustness: extreme inputs stay finite for every implementation ---------------------------
IMPLS = {
    "spec": gma_spec_float64,
    "reference": gma_reference,
    "chunked": lambda *a, **kw: gma_chunked(*a, chunk_size=16, **kw),
    "attention-auto": gma_attention,
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_extreme_inputs_give_finite_outputs_and_grads(impl, causal, dtype, gma_make_inputs,
                                                      gma_run_with_grads):
    x = gma_make_inputs(2, 40, 2, 8, 6, dtype=dtype, requires_grad=False)
    with torch.no_grad():
        x["q"] *= 20
        x["k"] *= 20
        x["log_sigma"].fill_(-4.0)           # sigma ~ 0.02: nearly one-hot responsibilities
        x["mix_logits"] *= 20
    x = {n: t.requires_grad_() for n, t in x.items()}
    grad_out = torch.randn(2, 40, 2, 8)
    out, grads = gma_run_with_grads(IMPLS[impl], x, grad_out, causal=causal, temperature=0.5)
    assert torch.isfinite(out).all()
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"non-finite gradient for {name}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_extreme_inputs_finite_on_triton(causal, gma_make_inputs):
    # the fused kernels take D in {16, 32, 64, 128}
    x = {n: t.detach().cuda() for n, t in gma_make_inputs(2, 40, 2, 16, 6).items()}
    x["q"] *= 20
    x["k"] *= 20
    x["log_sigma"].fill_(-4.0)
    out = gma_attention(**x, causal=causal, impl="triton")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_autocast_does_not_change_the_pytorch_implementations(causal):
    # The SPEC's float32 logits, softmax and sums hold inside torch.autocast too: without the
    # guard, bfloat16 autocast ran the einsums in bfloat16 (error 3e-7 -> 5e-3 on float32 inputs)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 300, 2, 32, generator=g) * 0.5 for _ in range(3))
    mu = torch.randn(2, 16, 32, generator=g) * 0.5
    ls = torch.randn(2, 16, 32, generator=g) * 0.1
    mix = torch.randn(2, 16, generator=g)
    calls = [lambda: gma_reference(q, k, v, mu, ls, mix, causal=causal),
             lambda: gma_chunked(q=q, k=k, v=v, mu=mu, log_sigma=ls, mix_logits=mix, causal=causal),
             lambda: gma_attention(q, k, v, mu, ls, mix, causal=causal)]
    for call in calls:
        plain = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = call()
        assert inside.dtype == torch.float32 and torch.equal(inside, plain)
