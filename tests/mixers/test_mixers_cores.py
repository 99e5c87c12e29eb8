"""Every mixer that runs on CPU: forward and backward, its float64 reference, causality, dtypes.

Mixers with a chunk size run with chunks of 16 here, so N = 37 spans three chunks, the last one
padded: the chunk-to-chunk paths are exercised, not only the intra-chunk ones.
"""

from __future__ import annotations

import pytest
import torch

from gmabench.mixers.base import Shape
from gmabench.mixers.registry import MIXERS, load_mixer

from .helpers import cpu_mixer_names, fresh_inputs, grads_of, rel_err, small_shape

CPU = torch.device("cpu")
CPU_MIXERS = cpu_mixer_names()


def cpu_mixer(name: str):
    mixer = load_mixer(name)
    if hasattr(mixer, "chunk_size"):
        mixer.chunk_size = 16
    return mixer


def runnable(name: str, causal: bool, **shape_overrides):
    mixer = cpu_mixer(name)
    shape = small_shape(causal, **shape_overrides)
    reasons = mixer.not_supported_reasons(shape, torch.float32, CPU)
    if reasons:
        assert not causal and not mixer.supports_bidirectional, reasons
        pytest.skip("; ".join(reasons))
    return mixer, shape


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("name", CPU_MIXERS)
def test_forward_backward_shapes_and_gradients(name, causal):
    mixer, shape = runnable(name, causal)
    inputs = fresh_inputs(mixer, shape)
    grad_out = torch.randn(shape.B, shape.N, shape.H, shape.dv)
    out, grads = grads_of(mixer, inputs, causal, grad_out)
    assert out.shape == (shape.B, shape.N, shape.H, shape.dv)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert set(grads) == set(mixer.grad_inputs) >= {"q", "k", "v"}
    for name_, grad in grads.items():
        assert grad.shape == inputs[name_].shape, name_
        assert torch.isfinite(grad).all(), name_
        assert grad.abs().max() > 0, f"gradient of {name_} is zero"


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("name", CPU_MIXERS)
def test_forward_matches_float64_reference(name, causal):
    mixer, shape = runnable(name, causal, Dv=12)      # Dv != D catches swapped head sizes
    inputs = fresh_inputs(mixer, shape, seed=1)
    ref = mixer.reference(inputs, causal)
    assert ref.dtype == torch.float64
    assert ref.shape == (shape.B, shape.N, shape.H, 12)
    assert rel_err(mixer.forward(inputs, causal), ref) < 1e-4


@pytest.mark.parametrize("name", CPU_MIXERS)
def test_bfloat16_inputs_give_bfloat16_outputs_close_to_reference(name):
    mixer, shape = runnable(name, True)
    inputs = fresh_inputs(mixer, shape, dtype=torch.bfloat16, seed=2)
    out = mixer.forward(inputs, True)
    assert out.dtype == torch.bfloat16
    # bfloat16 rounding of inputs and output alone is ~4e-3; float32 accumulation keeps it there.
    assert rel_err(out, mixer.reference(inputs, True)) < 2e-2


@pytest.mark.parametrize("name", [n for n in CPU_MIXERS if load_mixer(n).supports_causal])
def test_causal_output_ignores_later_tokens(name):
    mixer, shape = runnable(name, True)
    inputs = fresh_inputs(mixer, shape, seed=3)
    i = 20
    perturbed = dict(inputs)
    gen = torch.Generator().manual_seed(4)
    for key, t in inputs.items():
        if t.shape[:2] == (shape.B, shape.N):          # per-token inputs: q, k, v, Mamba2's dt
            noise = torch.randn(t.shape, generator=gen).to(t.dtype)
            perturbed[key] = torch.cat([t[:, :i + 1], t[:, i + 1:] + noise[:, i + 1:]], dim=1)
    before, after = mixer.forward(inputs, True), mixer.forward(perturbed, True)
    torch.testing.assert_close(after[:, :i + 1], before[:, :i + 1], rtol=1e-5, atol=1e-6)
    assert (after[:, i + 1:] - before[:, i + 1:]).abs().max() > 1e-3   # the perturbation was real


@pytest.mark.parametrize("name", CPU_MIXERS)
def test_extreme_inputs_give_finite_outputs(name):
    mixer, shape = runnable(name, True)
    inputs = fresh_inputs(mixer, shape, seed=5)
    inputs["q"], inputs["k"] = 40 * inputs["q"], 40 * inputs["k"]
    assert torch.isfinite(mixer.forward(inputs, True)).all()


@pytest.mark.parametrize("name", CPU_MIXERS)
def test_flops_are_positive_and_grow_with_n(name):
    mixer = cpu_mixer(name)
    short, long = small_shape(True, N=1024), small_shape(True, N=4096)
    assert 0 < mixer.flops(short) < mixer.flops(long)


def test_softmax_flops_halve_when_causal_and_linear_ones_do_not():
    softmax, gma = load_mixer("softmax-naive"), load_mixer("gma")
    assert softmax.flops(small_shape(True)) * 2 == softmax.flops(small_shape(False))
    assert gma.flops(small_shape(True)) == gma.flops(small_shape(False))


def test_gma_reports_the_implementation_that_ran():
    mixer = load_mixer("gma")
    assert mixer.impl == "auto"
    for causal, expected in ((True, "chunked"), (False, "reference")):
        shape = small_shape(causal)
        inputs = fresh_inputs(mixer, shape)
        assert mixer.backend(inputs, causal) == expected
        mixer.forward(inputs, causal)
        assert mixer.impl == expected


def test_cuda_only_mixers_refuse_cpu_with_a_reason():
    shape = small_shape(True)
    for entry in MIXERS:
        if entry.cuda_only:
            reasons = load_mixer(entry.name).not_supported_reasons(shape, torch.bfloat16, CPU)
            assert any("needs a CUDA device" in r for r in reasons), entry.name


def test_mamba2_refuses_bidirectional_with_a_reason():
    reasons = load_mixer("mamba2").not_supported_reasons(small_shape(False), torch.float32, CPU)
    assert reasons == ["mamba2 has no bidirectional form"]


def test_mode_reasons_are_empty_by_default_and_off_cuda():
    for name in ("gma", "sdpa", "fla-simple-gla", "fla-linear-attention"):
        assert load_mixer(name).mode_not_supported_reasons("fwd_bwd", CPU) == []
        assert load_mixer(name).mode_not_supported_reasons("fwd_bwd", CPU, torch.float16) == []


def test_fla_linear_attention_refuses_float16_training_up_to_the_measured_version(monkeypatch):
    # fla 0.6.0's backward gave wrong dq and dk with float16 inputs on an H200
    # (results/2026-11-29-h200-competitor-tests); nothing else is refused, and a later fla runs.
    from gmabench.mixers import fla
    mixer, cuda = load_mixer("fla-linear-attention"), torch.device("cuda")
    monkeypatch.setattr(fla, "_fla_version", lambda: (0, 6, 0))
    reasons = mixer.mode_not_supported_reasons("fwd_bwd", cuda, torch.float16)
    assert len(reasons) == 1 and "wrong dq and dk with float16" in reasons[0]
    assert "installed: 0.6.0" in reasons[0]
    for mode, dtype in [("fwd", torch.float16), ("fwd_bwd", torch.bfloat16),
                        ("fwd_bwd", torch.float32), ("fwd_bwd", None)]:
        assert mixer.mode_not_supported_reasons(mode, cuda, dtype) == [], (mode, dtype)
    monkeypatch.setattr(fla, "_fla_version", lambda: (0, 6, 1))
    assert mixer.mode_not_supported_reasons("fwd_bwd", cuda, torch.float16) == []
    assert load_mixer("gma-fla").mode_not_supported_reasons("fwd_bwd", cuda, torch.float16) == []


def test_fla_version_is_read_from_either_distribution(monkeypatch):
    import importlib.metadata as md
    from gmabench.mixers import fla
    installed = {"flash-linear-attention": "0.5.2"}

    def version(dist):
        if dist not in installed:
            raise md.PackageNotFoundError(dist)
        return installed[dist]
    monkeypatch.setattr(md, "version", version)
    assert fla._fla_version() == (0, 5, 2)
    installed["fla-core"] = "0.6.0"
    assert fla._fla_version() == (0, 6, 0)
    installed.clear()
    assert fla._fla_version() is None


@pytest.mark.parametrize("causal", [False, True])
def test_gma_triton_fast_computes_gma(causal):
    """The single-product variant runs the same function (under the CPU interpreter here)."""
    from gmabench.mixers.registry import load_mixer
    mixer = load_mixer("gma-triton-fast")
    shape = Shape(B=1, N=37, H=2, D=16, K=8, causal=causal)
    inputs = mixer.make_inputs(shape, torch.bfloat16, torch.device("cpu"), torch.Generator().manual_seed(5))
    out = mixer.forward(inputs, causal)
    ref = mixer.reference(inputs, causal)
    assert mixer.impl == "triton-fast" and out.dtype == torch.bfloat16
    err = (torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref)).item()
    assert err < 2e-2


def test_precision_is_only_for_the_fused_kernels():
    from gmabench.mixers.gma import GMAMixer
    with pytest.raises(ValueError, match="impl='triton' only"):
        GMAMixer(impl="chunked", precision="fast")


def test_gma_resolves_its_implementation_once_not_per_timed_call(monkeypatch):
    import gmabench.gma
    calls = []
    real = gmabench.gma.resolve_impl
    monkeypatch.setattr(gmabench.gma, "resolve_impl", lambda *a, **k: calls.append(a) or real(*a, **k))
    mixer = load_mixer("gma")
    shape = Shape(B=1, N=16, H=1, D=8, K=4, causal=True)
    inputs = mixer.make_inputs(shape, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(1))
    for _ in range(3):
        mixer.forward(inputs, True)
    mixer.forward(inputs, False)
    assert len(calls) == 2 and mixer.impl == "reference"  # once per causality; CPU bidir -> reference
