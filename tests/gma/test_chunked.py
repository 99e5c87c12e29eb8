"""gma_chunked against the float64 yardstick and gma_reference, plus its memory property.

The chunked causal form must give the same function (outputs and all six gradients) for any N and
chunk size, and must keep far fewer activations for backward than the cumsum form of gma_reference.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from gmabench.gma import gma_chunked, gma_reference, gma_spec_float64

F32_TOL = 1e-5
BF16_TOL = 2e-2
NORM_FLOOR = 0.1    # see test_reference.py: gradients that only exist through eps are checked absolutely

# (N, chunk_size): N a multiple of C, N not a multiple, C larger than N, C = 1, N = 1.
LENGTHS = [
    pytest.param(64, 16, id="N64-C16"),
    pytest.param(100, 16, id="N100-C16-ragged"),
    pytest.param(130, 64, id="N130-C64-ragged"),
    pytest.param(37, 256, id="N37-C256-one-chunk"),
    pytest.param(9, 1, id="N9-C1"),
    pytest.param(1, 64, id="N1"),
]


def _errors(out, grads, ref, ref_grads, rel_err) -> dict[str, float]:
    errors = {"out": rel_err(out, ref, NORM_FLOOR)}
    errors.update({name: rel_err(g, ref_grads[name], NORM_FLOOR) for name, g in grads.items()})
    return errors


@pytest.mark.parametrize("N, chunk_size", LENGTHS)
def test_chunked_causal_matches_spec_and_reference(N, chunk_size, gma_make_inputs,
                                                   gma_run_with_grads, gma_rel_err):
    B, H, D, K, Dv, tau = 2, 2, 8, 6, 5, 0.9
    x = gma_make_inputs(B, N, H, D, K, Dv, seed=N)
    grad_out = 0.5 * torch.randn(B, N, H, Dv, generator=torch.Generator().manual_seed(3))
    kw = dict(causal=True, temperature=tau)
    out, grads = gma_run_with_grads(gma_chunked, x, grad_out, chunk_size=chunk_size, **kw)
    spec, spec_grads = gma_run_with_grads(gma_spec_float64, x, grad_out, **kw)
    ref, ref_grads = gma_run_with_grads(gma_reference, x, grad_out, **kw)

    assert out.shape == (B, N, H, Dv) and out.dtype == torch.float32
    vs_spec = _errors(out, grads, spec, spec_grads, gma_rel_err)
    assert max(vs_spec.values()) < F32_TOL, vs_spec
    vs_reference = _errors(out, grads, ref, ref_grads, gma_rel_err)
    assert max(vs_reference.values()) < F32_TOL, vs_reference


@pytest.mark.parametrize("N, chunk_size", [(100, 16), (64, 64)])
def test_chunked_bfloat16_matches_spec(N, chunk_size, gma_make_inputs, gma_run_with_grads,
                                       gma_rel_err):
    x = gma_make_inputs(1, N, 3, 8, 4, dtype=torch.bfloat16, seed=11)
    grad_out = 0.5 * torch.randn(1, N, 3, 8, generator=torch.Generator().manual_seed(5))
    out, grads = gma_run_with_grads(gma_chunked, x, grad_out, causal=True, chunk_size=chunk_size)
    spec, spec_grads = gma_run_with_grads(gma_spec_float64, x, grad_out, causal=True)
    assert out.dtype == torch.bfloat16 and grads["q"].dtype == torch.bfloat16
    errors = _errors(out, grads, spec, spec_grads, gma_rel_err)
    assert max(errors.values()) < BF16_TOL, errors


def test_chunked_does_not_depend_on_chunk_size(gma_make_inputs):
    x = gma_make_inputs(1, 50, 2, 4, 3, requires_grad=False)
    outs = [gma_chunked(**x, causal=True, chunk_size=c) for c in (1, 7, 16, 50, 128)]
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-6)


def test_chunked_bidirectional_is_the_reference(gma_make_inputs):
    x = gma_make_inputs(2, 30, 2, 4, 3, 6, requires_grad=False)
    torch.testing.assert_close(gma_chunked(**x, causal=False, chunk_size=8),
                               gma_reference(**x, causal=False), rtol=0, atol=0)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_chunked_rejects_bad_chunk_size(chunk_size, gma_make_inputs):
    x = gma_make_inputs(1, 4, 1, 2, 2, requires_grad=False)
    with pytest.raises(ValueError, match="chunk_size"):
        gma_chunked(**x, causal=True, chunk_size=chunk_size)


# ---- memory: bytes saved for backward ----------------------------------------------------------
def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for backward while running fn()."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    # Keep `out` (and so the graph and its saved storages) alive until every pointer is counted,
    # so that no freed storage can be reused under a pointer already seen.
    total = sum(storages.values())
    del out
    return total


def _saved_bytes_for(fn, make_inputs, N: int, K: int = 32, Dv: int = 64, D: int = 16, **kw) -> int:
    x = make_inputs(1, N, 1, D, K, Dv)
    return saved_tensor_bytes(lambda: fn(**x, causal=True, **kw))


def test_chunked_saves_far_less_than_the_cumsum_reference(gma_make_inputs):
    N, K, Dv = 512, 32, 64
    reference_bytes = _saved_bytes_for(gma_reference, gma_make_inputs, N, K, Dv)
    chunked_bytes = _saved_bytes_for(gma_chunked, gma_make_inputs, N, K, Dv, chunk_size=64)
    # The reference keeps the (N, K, Dv) prefix sums in float32.
    assert reference_bytes >= N * K * Dv * 4
    assert chunked_bytes * 5 < reference_bytes, (chunked_bytes, reference_bytes)


def test_chunked_saved_memory_grows_linearly_in_N(gma_make_inputs):
    sizes = [_saved_bytes_for(gma_chunked, gma_make_inputs, N, chunk_size=64) for N in (512, 1024, 2048)]
    for smaller, larger in zip(sizes, sizes[1:]):
        assert 1.7 < larger / smaller < 2.3, sizes
