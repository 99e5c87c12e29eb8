"""The public surface: gma_attention's validation and dispatch, resolve_impl/triton_available, and
the GMA nn.Module layer (shapes, gradients, causality, constructor checks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gmabench.gma.api as gma_api
from gmabench.gma import GMA, gma_attention, gma_chunked, gma_reference, resolve_impl
from gmabench.gma.api import triton_available

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- gma_attention: validation -----------------------------------------------------------------
def _valid_inputs(make_inputs):
    return make_inputs(2, 5, 3, 4, 6, 7, requires_grad=False)     # B=2 N=5 H=3 D=4 K=6 Dv=7


# (argument the message must name, how to break it)
BAD_INPUTS = [
    ("q", lambda x: x.update(q=x["q"][0])),                                   # 3-D
    ("q", lambda x: x.update(q=[1.0, 2.0])),                                  # not a tensor
    ("q", lambda x: x.update(q=x["q"].to(torch.int32), k=x["k"].to(torch.int32))),
    ("k", lambda x: x.update(k=x["k"][:, :4])),                               # N mismatch
    ("k", lambda x: x.update(k=torch.randn(2, 5, 3, 3))),                     # D mismatch
    ("v", lambda x: x.update(v=torch.randn(1, 5, 3, 7))),                     # B mismatch
    ("v", lambda x: x.update(v=torch.randn(2, 5, 2, 7))),                     # H mismatch
    ("v", lambda x: x.update(v=torch.randn(2, 5, 3))),                        # 3-D
    ("mu", lambda x: x.update(mu=torch.randn(2, 6, 4))),                      # H mismatch
    ("mu", lambda x: x.update(mu=torch.randn(3, 6, 5))),                      # D mismatch
    ("mu", lambda x: x.update(mu=torch.randn(6, 4))),                         # 2-D
    ("mu", lambda x: x.update(mu=torch.randn(3, 0, 4), log_sigma=torch.randn(3, 0, 4),
                              mix_logits=torch.randn(3, 0))),                 # K = 0
    ("log_sigma", lambda x: x.update(log_sigma=torch.randn(3, 5, 4))),        # K mismatch
    ("mix_logits", lambda x: x.update(mix_logits=torch.randn(3, 5))),         # K mismatch
    ("mix_logits", lambda x: x.update(mix_logits=torch.randn(3, 6, 1))),      # 3-D
    ("mix_logits", lambda x: x.update(mix_logits=torch.randn(2, 6))),         # H mismatch
    ("v", lambda x: x.update(v=x["v"].to(torch.int64))),                      # not floating point
    ("device", lambda x: x.update(mu=x["mu"].to("meta"))),                    # mixed devices
]


@pytest.mark.parametrize("name, breaker", BAD_INPUTS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_INPUTS)])
def test_attention_rejects_malformed_inputs(name, breaker, gma_make_inputs):
    x = _valid_inputs(gma_make_inputs)
    breaker(x)
    with pytest.raises(ValueError, match=name):
        gma_attention(**x, impl="reference")


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(eps=-1e-3), "eps"), (dict(eps=float("nan")), "eps"),
])
def test_attention_rejects_bad_scalars(kwargs, name, gma_make_inputs):
    with pytest.raises(ValueError, match=name):
        gma_attention(**_valid_inputs(gma_make_inputs), **kwargs)


def test_attention_shape_errors_show_the_shapes(gma_make_inputs):
    x = _valid_inputs(gma_make_inputs)
    x["v"] = torch.randn(2, 5, 2, 7)
    with pytest.raises(ValueError, match=r"\(2, 5, 2, 7\)") as info:
        gma_attention(**x)
    assert "(2, 5, 3, 4)" in str(info.value)          # and the q shape it should match


def test_unknown_impl_lists_the_known_ones(gma_make_inputs):
    with pytest.raises(ValueError, match="impl") as info:
        gma_attention(**_valid_inputs(gma_make_inputs), impl="flash")
    for known in ("auto", "reference", "chunked", "triton"):
        assert repr(known) in str(info.value)
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("flash", "cpu")


# ---- gma_attention: dispatch -------------------------------------------------------------------
def test_resolve_impl_on_cpu():
    assert resolve_impl("auto", "cpu", causal=True) == "chunked"
    assert resolve_impl("auto", torch.device("cpu"), causal=False) == "reference"
    for explicit in ("reference", "chunked", "triton"):
        assert resolve_impl(explicit, "cpu", causal=True) == explicit


def test_triton_is_unavailable_on_cpu():
    ok, reason = triton_available("cpu")
    assert ok is False and "CUDA" in reason


def test_triton_availability_on_cuda_follows_the_import(monkeypatch):
    def broken_import():
        raise ImportError("no module named 'triton'")

    monkeypatch.setattr(gma_api, "_import_gma_triton", broken_import)
    ok, reason = triton_available("cuda")
    assert ok is False and "cannot import" in reason and "no module named" in reason
    assert resolve_impl("auto", "cuda", causal=True) == "chunked"

    monkeypatch.setattr(gma_api, "_import_gma_triton", lambda: object())
    assert triton_available("cuda") == (True, "")
    assert resolve_impl("auto", "cuda", causal=False) == "triton"


def test_triton_impl_on_cpu_raises_a_clear_error(monkeypatch, gma_make_inputs):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        gma_attention(**_valid_inputs(gma_make_inputs), impl="triton")


def test_triton_impl_import_failure_is_a_runtime_error(monkeypatch, gma_make_inputs):
    def broken_import():
        raise ImportError("kernels missing")

    monkeypatch.setenv("TRITON_INTERPRET", "1")        # gets past the device check on CPU
    monkeypatch.setattr(gma_api, "_import_gma_triton", broken_import)
    with pytest.raises(RuntimeError, match="kernels missing"):
        gma_attention(**_valid_inputs(gma_make_inputs), impl="triton")


def test_triton_impl_forwards_its_arguments(monkeypatch, gma_make_inputs):
    calls = []

    def fake_gma_triton(q, k, v, mu, log_sigma, mix_logits, **kwargs):
        calls.append(kwargs)
        return v

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gma_api, "_import_gma_triton", lambda: fake_gma_triton)
    x = _valid_inputs(gma_make_inputs)
    out = gma_attention(**x, causal=True, temperature=0.5, eps=1e-3, impl="triton")
    assert out is x["v"]
    assert calls == [dict(causal=True, temperature=0.5, eps=1e-3)]


@pytest.fixture
def deterministic():
    def set_mode(on: bool, warn_only: bool = False):
        torch.use_deterministic_algorithms(on, warn_only=warn_only)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield set_mode
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_mode_keeps_auto_off_the_atomic_kernels(monkeypatch, deterministic):
    # Only causal inference runs without float atomics in the kernels: under
    # torch.use_deterministic_algorithms(True), "auto" takes PyTorch for everything else
    monkeypatch.setattr(gma_api, "_import_gma_triton", lambda: object())   # kernels "available"
    deterministic(True)
    assert resolve_impl("auto", "cuda", causal=True, grad=False) == "triton"
    assert resolve_impl("auto", "cuda", causal=True, grad=True) == "chunked"
    assert resolve_impl("auto", "cuda", causal=False, grad=False) == "reference"
    assert resolve_impl("triton", "cuda", causal=False) == "triton"   # explicit: unchanged
    deterministic(False)
    assert resolve_impl("auto", "cuda", causal=False, grad=True) == "triton"


def test_explicit_triton_in_deterministic_mode_raises_or_warns(monkeypatch, gma_make_inputs,
                                                                deterministic):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gma_api, "_import_gma_triton",
                        lambda: lambda q, k, v, *rest, **kw: v)
    x = _valid_inputs(gma_make_inputs)
    deterministic(True)
    with pytest.raises(RuntimeError, match="deterministic"):
        gma_attention(**x, impl="triton")
    with torch.no_grad():   # causal inference is deterministic: no complaint
        assert gma_attention(**x, causal=True, impl="triton") is x["v"]
    deterministic(True, warn_only=True)
    with pytest.warns(UserWarning, match="deterministic"):
        assert gma_attention(**x, impl="triton") is x["v"]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_attention_dispatches_to_the_named_impl(causal, gma_make_inputs):
    x = _valid_inputs(gma_make_inputs)
    reference = gma_reference(**x, causal=causal)
    chunked = gma_chunked(**x, causal=causal)
    torch.testing.assert_close(gma_attention(**x, causal=causal, impl="reference"), reference,
                               rtol=0, atol=0)
    torch.testing.assert_close(gma_attention(**x, causal=causal, impl="chunked"), chunked,
                               rtol=0, atol=0)
    auto = gma_attention(**x, causal=causal)
    torch.testing.assert_close(auto, chunked if causal else reference, rtol=0, atol=0)


def test_importing_gma_does_not_import_triton():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    code = "import sys, gmabench.gma; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---- the GMA layer -----------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("impl", ["auto", "reference", "chunked"])
def test_layer_output_shape_and_gradients(causal, impl):
    torch.manual_seed(0)
    layer = GMA(d_model=24, n_heads=3, n_components=5, causal=causal, impl=impl, bias=True)
    x = torch.randn(2, 11, 24, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 11, 24) and out.dtype == torch.float32
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


def test_layer_parameters_have_the_documented_shapes():
    layer = GMA(d_model=20, n_heads=4, n_components=3, head_dim=8)
    assert layer.head_dim == 8
    assert layer.mu.shape == (4, 3, 8) and layer.log_sigma.shape == (4, 3, 8)
    assert layer.mix_logits.shape == (4, 3)
    assert layer.q_proj.weight.shape == (32, 20) and layer.out_proj.weight.shape == (20, 32)
    assert layer.q_proj.bias is None
    assert torch.count_nonzero(layer.log_sigma) == 0 and torch.count_nonzero(layer.mix_logits) == 0
    assert layer.mu.std() > 0.1
    assert GMA(d_model=12, n_heads=3, n_components=2).head_dim == 4


def test_layer_built_on_the_meta_device_initialises_like_a_direct_one():
    # meta-device construction, to_empty, then reset_parameters() on every module that has
    # parameters of its own (as FSDP's default initialisation does): the mixture must come out
    # initialised, not left as whatever the empty memory held
    torch.manual_seed(0)
    direct = GMA(d_model=32, n_heads=4, n_components=6, causal=True)
    with torch.device("meta"):
        lazy = GMA(d_model=32, n_heads=4, n_components=6, causal=True)
    lazy = lazy.to_empty(device="cpu")
    with torch.no_grad():
        lazy.log_sigma.fill_(float("nan"))   # what empty memory may hold
        lazy.mix_logits.fill_(float("nan"))
    torch.manual_seed(0)
    for module in lazy.modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.reset_parameters()
    assert torch.equal(lazy.log_sigma, torch.zeros(4, 6, 8))
    assert torch.equal(lazy.mix_logits, torch.zeros(4, 6))
    assert torch.isfinite(lazy.mu).all() and 0.3 < float(lazy.mu.detach().std()) < 0.7
    x = torch.randn(2, 10, 32)
    assert torch.isfinite(lazy(x)).all() and lazy(x).shape == direct(x).shape


def test_layer_matches_the_functional_op():
    torch.manual_seed(1)
    layer = GMA(d_model=16, n_heads=2, n_components=4, causal=True, temperature=0.7, impl="chunked")
    x = torch.randn(2, 9, 16)
    heads = (2, 9, 2, 8)
    q, k, v = (proj(x).view(heads) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    core = gma_reference(q, k, v, layer.mu, layer.log_sigma, layer.mix_logits, causal=True,
                         temperature=0.7)
    torch.testing.assert_close(layer(x), layer.out_proj(core.reshape(2, 9, 16)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_causal_layer_does_not_look_ahead(impl):
    torch.manual_seed(2)
    layer = GMA(d_model=16, n_heads=2, n_components=4, causal=True, impl=impl)
    x = torch.randn(1, 20, 16)
    j = 12
    perturbed = x.clone()
    perturbed[:, j] += 3.0 * torch.randn(16)
    with torch.no_grad():
        before, after = layer(x), layer(perturbed)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)
    assert (after[:, j:] - before[:, j:]).abs().amax() > 1e-3


def test_bidirectional_layer_does_look_ahead():
    torch.manual_seed(3)
    layer = GMA(d_model=16, n_heads=2, n_components=4, causal=False)
    x = torch.randn(1, 20, 16)
    perturbed = x.clone()
    perturbed[:, 12] += 3.0 * torch.randn(16)
    with torch.no_grad():
        assert (layer(perturbed)[:, :12] - layer(x)[:, :12]).abs().amax() > 1e-4


@pytest.mark.parametrize("kwargs, name", [
    (dict(d_model=10, n_heads=3, n_components=2), "divisible"),
    (dict(d_model=0, n_heads=1, n_components=2), "d_model"),
    (dict(d_model=8, n_heads=0, n_components=2), "n_heads"),
    (dict(d_model=8, n_heads=2, n_components=0), "n_components"),
    (dict(d_model=8, n_heads=2, n_components=-1), "n_components"),
    (dict(d_model=8.0, n_heads=2, n_components=2), "d_model"),
    (dict(d_model=8, n_heads=2, n_components=2, head_dim=0), "head_dim"),
    (dict(d_model=8, n_heads=2, n_components=2, temperature=0.0), "temperature"),
    (dict(d_model=8, n_heads=2, n_components=2, eps=-1.0), "eps"),
    (dict(d_model=8, n_heads=2, n_components=2, impl="cuda"), "impl"),
])
def test_layer_rejects_bad_constructor_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GMA(**kwargs)


def test_layer_rejects_wrong_input_shape():
    layer = GMA(d_model=8, n_heads=2, n_components=2)
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.randn(2, 5, 9))
    with pytest.raises(ValueError, match="x must"):
        layer(torch.randn(5, 8))


def test_auto_trains_wide_shapes_in_the_kernels(monkeypatch):
    # The backward's wide form (K padded x max(D, Dv) > 8192) is a plan of the kernels, no longer a
    # reason for "auto" to train in PyTorch (docs/kernels.md, Version 2.18): resolve_impl does not
    # even ask whether a backward follows.
    monkeypatch.setattr(gma_api, "_import_gma_triton", lambda: object())
    assert resolve_impl("auto", "cuda", causal=True) == "triton"
    assert resolve_impl("auto", "cuda", causal=False) == "triton"


def test_auto_dispatch_of_a_wide_training_call(monkeypatch):
    ran = []
    monkeypatch.setattr(gma_api, "triton_available", lambda device: (True, ""))
    monkeypatch.setattr(gma_api, "_triton_interpreter_on", lambda: True)
    monkeypatch.setattr(gma_api, "_import_gma_triton",
                        lambda: lambda *a, **kw: ran.append("triton") or a[2])
    monkeypatch.setattr(gma_api, "gma_chunked", lambda *a, **kw: ran.append("chunked") or a[2])
    g = torch.Generator().manual_seed(0)
    x = {n: torch.randn(*s, generator=g) for n, s in (
        ("q", (1, 4, 1, 64)), ("k", (1, 4, 1, 64)), ("v", (1, 4, 1, 64)),
        ("mu", (1, 256, 64)), ("log_sigma", (1, 256, 64)), ("mix_logits", (1, 256)))}
    gma_attention(**x)                                   # no gradient wanted: the kernels
    x["q"].requires_grad_()
    gma_attention(**x)                                   # training at a wide shape too
    with torch.no_grad():
        gma_attention(**x)                               # inference again: the kernels
    assert ran == ["triton", "triton", "triton"]
