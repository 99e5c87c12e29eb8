"""The flash-attn mixer: generation detection without imports, refusals on CPU, the tuple that
flash-attn-4 returns, and (on a GPU with flash-attn installed) agreement with float64 softmax.

Fake flash-attn packages are written under tmp_path and put first on sys.path; the modules they
add to sys.modules are removed after each test so the next one sees the real environment again.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from gmabench.mixers import flash_attn as fa
from gmabench.mixers.base import Shape
from gmabench.mixers.flash_attn import FA2, FA3, FA4, FlashAttn, available_generation
from gmabench.mixers.softmax import softmax_attention

from .helpers import fresh_inputs, rel_err

CPU = torch.device("cpu")
REAL_GENERATION, _ = available_generation()

# A flash_attn_func for the fakes: plain softmax attention on (B, N, H, D), recording its call.
_FAKE_FUNC = """
import torch
CALLS = []

def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kwargs):
    CALLS.append({"softmax_scale": softmax_scale, "causal": causal, **kwargs})
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) * softmax_scale
    if causal:
        n = q.shape[1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2).to(q.dtype)
    return RET
"""


def _write(path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _fake_tree(root, *, fa4=False, fa3=False, fa2=False, fa4_broken=False, versions=True):
    """Fake generations under root: FA4 as a namespace package flash_attn/cute (as the wheel
    ships it), FA3 as a top-level flash_attn_interface, FA2 as a regular flash_attn package."""
    if fa4:
        body = "raise ImportError('fake: no CuTe DSL')" if fa4_broken else _FAKE_FUNC.replace("RET", "out, lse")
        _write(root / "flash_attn" / "cute" / "__init__.py", body)
        if versions:
            _write(root / "flash_attn_4-4.0.0b36.dist-info" / "METADATA",
                   "Metadata-Version: 2.1\nName: flash-attn-4\nVersion: 4.0.0b36\n")
    if fa3:
        _write(root / "flash_attn_interface.py", _FAKE_FUNC.replace("RET", "out"))
    if fa2:
        _write(root / "flash_attn" / "__init__.py",
               "from flash_attn.flash_attn_interface import flash_attn_func\n")
        _write(root / "flash_attn" / "flash_attn_interface.py", _FAKE_FUNC.replace("RET", "out"))
        if versions:
            _write(root / "flash_attn-2.8.3.dist-info" / "METADATA",
                   "Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A folder first on sys.path; flash-attn modules imported meanwhile are forgotten afterwards."""
    names = ("flash_attn", "flash_attn_interface")
    before = {m for m in sys.modules if m.split(".")[0] in names}
    for m in before:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for m in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[m]
    importlib.invalidate_caches()


# ---- the real environment (no flash-attn on the CPU test machine) ---------------------------
@pytest.mark.skipif(REAL_GENERATION is not None, reason="a flash-attn package is installed here")
def test_nothing_installed_is_reported_without_importing():
    generation, reason = available_generation()
    assert generation is None and "no flash-attn package is installed" in reason
    assert "flash_attn" not in sys.modules and "flash_attn_interface" not in sys.modules
    mixer = FlashAttn()
    assert mixer.impl == "flash-attn (not installed)"
    assert mixer.backend({}, False) == "none"
    with pytest.raises(ImportError, match="not installed"):
        mixer.forward(fresh_inputs(mixer, Shape(B=1, N=8, H=1, D=16, K=1), torch.bfloat16), False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without CUDA")
def test_cpu_reasons_name_device_dtype_and_package():
    mixer = FlashAttn()
    shape = Shape(B=1, N=64, H=2, D=64, K=8)
    reasons = " | ".join(mixer.not_supported_reasons(shape, torch.float32, CPU))
    assert "needs a CUDA device" in reasons
    assert "does not support torch.float32" in reasons
    if REAL_GENERATION is None:
        assert "no flash-attn package is installed" in reasons
    half = mixer.not_supported_reasons(shape, torch.bfloat16, CPU)
    assert not any("does not support" in r for r in half)


def test_class_attributes_and_flops():
    mixer = FlashAttn()
    assert (mixer.name, mixer.cuda_only, mixer.uses_components) == ("flash-attn", True, False)
    assert set(mixer.supported_dtypes) == {torch.float16, torch.bfloat16}
    shape = Shape(B=2, N=128, H=4, D=64, K=1)
    assert mixer.flops(shape) == 4 * 2 * 4 * 128 * 128 * 64
    causal = Shape(B=2, N=128, H=4, D=64, K=1, causal=True)
    assert mixer.flops(causal) == mixer.flops(shape) / 2
    with pytest.raises(ValueError, match="unknown flash-attn generation"):
        FlashAttn("flash-attn-9")


def test_reference_is_float64_softmax():
    mixer = FlashAttn()
    shape = Shape(B=2, N=19, H=2, D=16, K=1, Dv=12)
    inputs = fresh_inputs(mixer, shape, torch.bfloat16, seed=4)
    for causal in (False, True):
        ref = mixer.reference(inputs, causal)
        assert ref.dtype == torch.float64 and ref.shape == (2, 19, 2, 12)
        up = [inputs[n].double() for n in ("q", "k", "v")]
        assert torch.equal(ref, softmax_attention(*up, causal))


# ---- detection order, with fake packages -------------------------------------------------------
@pytest.mark.parametrize("present, expected, version", [
    (dict(fa4=True, fa3=True, fa2=True), FA4, "4.0.0b36"),
    (dict(fa3=True, fa2=True), FA3, "unknown version"),
    (dict(fa2=True), FA2, "2.8.3"),
    (dict(fa4=True), FA4, "4.0.0b36"),
])
def test_detection_order_without_importing(fake_site, present, expected, version):
    _fake_tree(fake_site, **present)
    assert available_generation() == (expected, version)
    assert FlashAttn().impl == f"{expected} {version}"
    assert "flash_attn" not in sys.modules and "flash_attn_interface" not in sys.modules


def test_detection_of_one_forced_generation(fake_site):
    _fake_tree(fake_site, fa2=True)
    assert available_generation(FA2) == (FA2, "2.8.3")
    generation, reason = available_generation(FA4)
    assert generation is None and FA4 in reason
    reasons = FlashAttn(FA4).not_supported_reasons(Shape(B=1, N=8, H=1, D=64, K=1),
                                                   torch.bfloat16, CPU)
    assert any("not installed" in r for r in reasons)


def test_fa4_tuple_is_unwrapped_and_arguments_are_passed(fake_site):
    _fake_tree(fake_site, fa4=True)
    mixer = FlashAttn()
    shape = Shape(B=2, N=23, H=3, D=16, K=1, Dv=8)
    inputs = fresh_inputs(mixer, shape, torch.bfloat16, seed=5)
    for causal in (False, True):
        out = mixer.forward(inputs, causal)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 23, 3, 8)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, mixer.reference(inputs, causal)) < 1e-2
    calls = sys.modules["flash_attn.cute"].CALLS
    assert [c["causal"] for c in calls] == [False, True]
    assert all(c["softmax_scale"] == pytest.approx(16 ** -0.5) for c in calls)
    assert mixer.backend(inputs, False) == f"{FA4} 4.0.0b36" == mixer.impl


def test_broken_fa4_falls_back_to_the_next_generation(fake_site):
    _fake_tree(fake_site, fa4=True, fa2=True, fa4_broken=True)
    assert available_generation()[0] == FA4          # present on disk ...
    mixer = FlashAttn()
    inputs = fresh_inputs(mixer, Shape(B=1, N=9, H=1, D=8, K=1), torch.float16, seed=6)
    out = mixer.forward(inputs, True)                # ... but FlashAttention-2 is what runs
    assert mixer.backend(inputs, True) == f"{FA2} 2.8.3"
    assert rel_err(out, mixer.reference(inputs, True)) < 1e-2


def test_forced_generation_that_fails_to_import_says_why(fake_site):
    _fake_tree(fake_site, fa4=True, fa4_broken=True)
    with pytest.raises(ImportError, match="fake: no CuTe DSL"):
        FlashAttn(FA4).forward(fresh_inputs(FlashAttn(), Shape(B=1, N=4, H=1, D=8, K=1),
                                            torch.float16), False)


# ---- head-size and GPU refusals (generation simulated) -----------------------------------------
@pytest.mark.parametrize("generation, d, dv, capability, fragment", [
    (FA4, 64, 64, (9, 0), None),
    (FA4, 256, 256, (9, 0), None),
    (FA4, 60, 64, (9, 0), "divisible by 8"),
    (FA4, 512, 512, (9, 0), "8 to 256"),
    (FA4, 192, 192, (10, 0), "up to 128"),
    (FA4, 192, 128, (10, 0), None),
    (FA4, 64, 64, (7, 5), "8.x to 12.x"),
    (FA3, 128, 128, (9, 0), None),
    (FA3, 128, 128, (8, 0), "Hopper"),
    (FA3, 128, 64, (9, 0), "Dv == D"),
    (FA2, 320, 320, (8, 0), "up to 256"),
    (FA2, 64, 64, (7, 5), "8.0 or newer"),
    (FA2, 64, 64, None, None),
])
def test_shape_reasons(generation, d, dv, capability, fragment):
    reasons = fa._shape_reasons(generation, d, dv, capability)
    if fragment is None:
        assert reasons == []
    else:
        assert any(fragment in r for r in reasons), reasons


def test_reasons_use_the_detected_generation(monkeypatch):
    monkeypatch.setattr(fa, "available_generation", lambda only=None: (FA2, "2.8.3"))
    reasons = FlashAttn().not_supported_reasons(Shape(B=1, N=8, H=1, D=64, K=1, Dv=32),
                                                torch.bfloat16, CPU)
    assert any("Dv == D" in r for r in reasons) and any("CUDA device" in r for r in reasons)


# ---- GPU: agreement with float64 softmax attention, forward and backward ------------------------
# Tolerances (relative Frobenius error against float64 on the same 16-bit inputs): the output is
# rounded to 16 bits and P is rounded before the P.V product, ~0.3% measured for flash-attn-4 vs
# cuDNN; 1e-2 forward. Gradients pass through two more rounded products: 2e-2.
FWD_TOL = 1e-2
BWD_TOL = 2e-2


# flash-attn-4 compiles a kernel set per (dtype, causal, D) at first use, seconds each: four cases
# cover every value of each parameter twice instead of all eight combinations.
GPU_CASES = [(torch.bfloat16, False, 64), (torch.bfloat16, True, 128),
             (torch.float16, True, 64), (torch.float16, False, 128)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, causal, d", GPU_CASES,
                         ids=["bf16-bidir-64", "bf16-causal-128", "fp16-causal-64", "fp16-bidir-128"])
def test_gpu_matches_float64_softmax_forward_and_backward(dtype, causal, d):
    mixer = FlashAttn()
    if mixer.backend({}, causal) == "none":
        pytest.skip("no flash-attn package is installed")
    device = torch.device("cuda")
    shape = Shape(B=2, N=333, H=4, D=d, K=1, causal=causal)      # N not a multiple of any tile
    reasons = mixer.not_supported_reasons(shape, dtype, device)
    if reasons:
        pytest.skip("; ".join(reasons))
    inputs = fresh_inputs(mixer, shape, dtype, seed=7, device="cuda")
    leaves = {n: inputs[n].detach().clone().requires_grad_(True) for n in ("q", "k", "v")}
    out = mixer.forward(leaves, causal)
    assert out.dtype == dtype and out.shape == (2, 333, 4, d)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(8)).to(device, dtype)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)

    ref_leaves = {n: inputs[n].detach().double().requires_grad_(True) for n in ("q", "k", "v")}
    ref = softmax_attention(*ref_leaves.values(), causal)
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), grad_out.double())

    assert rel_err(out, ref) < FWD_TOL, mixer.backend(inputs, causal)
    for name, g, r in zip(leaves, grads, ref_grads):
        assert g.dtype == dtype
        assert rel_err(g, r) < BWD_TOL, (name, mixer.backend(inputs, causal))
    assert mixer.backend(inputs, causal).split(" ")[0] in ("flash-attn-4", "flash-attn-3",
                                                            "flash-attn-2")
