"""MixerLayer: projections around any mixer core, forward and backward, parameters vs buffers."""

from __future__ import annotations

import pytest
import torch

from gmabench.mixers.layer import build_layer
from gmabench.mixers.registry import load_mixer

from .helpers import cpu_mixer_names, small_shape

CPU_MIXERS = cpu_mixer_names()


@pytest.mark.parametrize("name", CPU_MIXERS)
def test_layer_forward_backward(name):
    mixer = load_mixer(name)
    shape = small_shape(causal=mixer.supports_causal)
    layer, x = build_layer(mixer, shape, torch.float32, "cpu", torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    out = layer(x)
    assert out.shape == x.shape == (shape.B, shape.N, shape.H * shape.D)
    assert torch.isfinite(out).all()
    (out * torch.randn(out.shape)).sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    params = dict(layer.named_parameters())
    core = set(mixer.grad_inputs) - {"q", "k", "v"} - set(mixer.token_inputs)
    assert {f"core_params.{n}" for n in core} <= set(params)
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, f"gradient of {pname} is zero"


def test_layer_keeps_untrained_parameters_as_buffers_and_projects_token_inputs():
    performer, _ = build_layer(load_mixer("performer"), small_shape(True), torch.float32, "cpu")
    assert "core_buffers.proj" in dict(performer.named_buffers())
    assert not any("proj" in n and "core" in n for n, _ in performer.named_parameters())

    mamba, _ = build_layer(load_mixer("mamba2"), small_shape(True), torch.float32, "cpu")
    names = dict(mamba.named_parameters())
    assert "core_params.A_log" in names and "token_projs.dt_raw.weight" in names
    assert mamba.q_proj.out_features == small_shape(True).H * small_shape(True).K   # d_state


def test_layer_is_reproducible_from_the_generator_and_keeps_dtypes():
    shape = small_shape(True)
    runs = [build_layer(load_mixer("gma"), shape, torch.bfloat16, "cpu", torch.Generator().manual_seed(3))
            for _ in range(2)]
    (layer_a, x_a), (layer_b, x_b) = runs
    assert x_a.dtype == torch.bfloat16 and layer_a.q_proj.weight.dtype == torch.bfloat16
    assert layer_a.core_params["mu"].dtype == torch.float32
    out = layer_a(x_a)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, layer_b(x_b), rtol=0, atol=0)
