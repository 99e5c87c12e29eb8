"""Fast forms against slow, obviously-right ones: softmax vs SDPA, chunked linear attention vs the
O(N^2) masked form, chunked Mamba2 SSD vs the token loop, Performer vs softmax at large K.
Outputs and gradients, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from gmabench.mixers.base import Shape
from gmabench.mixers.linear import elu_features, normalised_linear_attention
from gmabench.mixers.mamba2 import Mamba2, ssd_sequential
from gmabench.mixers.registry import load_mixer
from gmabench.mixers.sdpa import BACKENDS, only_backend

from .helpers import fresh_inputs, grads_of, rel_err, small_shape

F32_TOL = 1e-5   # float32 against float32 or float64 of the same function: measured ~1e-7


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_softmax_naive_sdpa_math_and_sdpa_agree(causal):
    shape = small_shape(causal, Dv=12)
    mixers = [load_mixer(n) for n in ("softmax-naive", "sdpa-math", "sdpa")]
    inputs = fresh_inputs(mixers[0], shape, seed=10)
    grad_out = torch.randn(shape.B, shape.N, shape.H, shape.dv)
    (out0, grads0), *others = [grads_of(m, inputs, causal, grad_out) for m in mixers]
    for out, grads in others:
        assert rel_err(out, out0) < F32_TOL
        for name in ("q", "k", "v"):
            assert rel_err(grads[name], grads0[name]) < F32_TOL, name


def test_sdpa_backend_is_reported_honestly_on_cpu():
    sdpa, math_ = load_mixer("sdpa"), load_mixer("sdpa-math")
    inputs = fresh_inputs(sdpa, small_shape(True))
    assert sdpa.backend(inputs, True) in ("cpu-flash", "cpu-math", "cpu-efficient", "cpu-math-or-flash")
    assert math_.backend(inputs, True) == "math"


def test_only_backend_enables_exactly_one_backend_and_restores_the_flags():
    cuda = torch.backends.cuda
    getters = {"flash": cuda.flash_sdp_enabled, "efficient": cuda.mem_efficient_sdp_enabled,
               "math": cuda.math_sdp_enabled, "cudnn": cuda.cudnn_sdp_enabled}
    before = {name: get() for name, get in getters.items()}
    q = torch.randn(1, 2, 8, 16)
    with only_backend(BACKENDS["math"]):
        assert {name: get() for name, get in getters.items()} == {
            "flash": False, "efficient": False, "math": True, "cudnn": False}
        assert torch._fused_sdp_choice(q, q, q) == int(BACKENDS["math"])
    assert {name: get() for name, get in getters.items()} == before


def _masked_linear_attention(q, k, v, causal, eps):
    """O(N^2): the (N x N) affinity phi(q) phi(k)^T, masked, normalised row by row."""
    phi_q, phi_k = elu_features(q), elu_features(k)
    scores = torch.einsum("bihf,bjhf->bhij", phi_q, phi_k)
    if causal:
        scores = torch.tril(scores)
    num = torch.einsum("bhij,bjhd->bihd", scores, v)
    return num / (scores.sum(-1).transpose(1, 2)[..., None] + eps)


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_linear_attention_matches_the_masked_quadratic_form(causal, chunk_size):
    mixer = load_mixer("linear-attention")
    mixer.chunk_size = chunk_size
    shape = small_shape(causal, Dv=12)
    inputs = fresh_inputs(mixer, shape, seed=11)
    grad_out = torch.randn(shape.B, shape.N, shape.H, shape.dv, dtype=torch.float64)
    out, grads = grads_of(mixer, inputs, causal, grad_out)

    leaves = {n: inputs[n].double().requires_grad_(True) for n in ("q", "k", "v")}
    expected = _masked_linear_attention(*leaves.values(), causal, mixer.eps)
    expected_grads = torch.autograd.grad((expected * grad_out).sum(), list(leaves.values()))
    assert rel_err(out, expected) < F32_TOL
    for name, g in zip(leaves, expected_grads):
        assert rel_err(grads[name], g) < F32_TOL, name


def test_normalised_linear_attention_takes_a_per_token_eps():
    gen = torch.Generator().manual_seed(12)
    phi_q, phi_k = (torch.rand(1, 9, 2, 4, generator=gen) for _ in range(2))
    v = torch.randn(1, 9, 2, 3, generator=gen)
    eps = torch.rand(1, 9, 2, generator=gen)
    for causal in (False, True):
        out = normalised_linear_attention(phi_q, phi_k, v, causal=causal, eps=eps, chunk_size=4)
        scores = torch.einsum("bihf,bjhf->bhij", phi_q, phi_k)
        scores = torch.tril(scores) if causal else scores
        den = scores.sum(-1).transpose(1, 2) + eps
        torch.testing.assert_close(out, torch.einsum("bhij,bjhd->bihd", scores, v) / den[..., None])


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_mamba2_chunked_matches_the_sequential_loop(chunk_size):
    mixer = Mamba2(chunk_size=chunk_size)
    shape = small_shape(True, Dv=12)
    inputs = fresh_inputs(mixer, shape, seed=13)
    grad_out = torch.randn(shape.B, shape.N, shape.H, shape.dv, dtype=torch.float64)
    out, grads = grads_of(mixer, inputs, True, grad_out)

    leaves = {n: inputs[n].double().requires_grad_(True) for n in mixer.grad_inputs}
    dt = torch.nn.functional.softplus(leaves["dt_raw"])
    expected = ssd_sequential(leaves["v"], dt, -torch.exp(leaves["A_log"]), leaves["k"], leaves["q"])
    expected_grads = torch.autograd.grad((expected * grad_out).sum(), list(leaves.values()))
    assert rel_err(out, expected) < F32_TOL
    for name, g in zip(leaves, expected_grads):
        assert rel_err(grads[name], g) < F32_TOL, name


def test_mamba2_long_decay_stays_finite_and_matches():
    # Strong decay over many chunks: exp of large negative cumsums must not overflow anywhere.
    mixer = Mamba2(chunk_size=8)
    shape = Shape(B=1, N=200, H=2, D=8, K=4, causal=True)
    inputs = fresh_inputs(mixer, shape, seed=14)
    inputs["dt_raw"] = inputs["dt_raw"] + 4.0            # dt ~ 1.5, decay up to exp(-24) a step
    out = mixer.forward(inputs, True)
    assert torch.isfinite(out).all()
    assert rel_err(out, mixer.reference(inputs, True)) < F32_TOL


def test_performer_with_many_features_approximates_softmax_attention():
    performer, softmax = load_mixer("performer"), load_mixer("softmax-naive")
    errors = {}
    for K in (8, 8192):
        shape = Shape(B=1, N=37, H=2, D=16, K=K, causal=False)
        inputs = fresh_inputs(performer, shape, seed=15)
        errors[K] = rel_err(performer.forward(inputs, False), softmax.reference(inputs, False))
    assert errors[8192] < 0.05
    assert errors[8192] < errors[8]


def test_performer_features_are_orthogonal_per_block_and_reproducible():
    from gmabench.mixers.performer import orthogonal_features
    w = orthogonal_features(2, 24, 8, torch.Generator().manual_seed(0))
    assert w.shape == (2, 24, 8)
    block = w[0, :8]
    gram = block @ block.T
    torch.testing.assert_close(gram - torch.diag(torch.diagonal(gram)), torch.zeros(8, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(w, orthogonal_features(2, 24, 8, torch.Generator().manual_seed(0)))
