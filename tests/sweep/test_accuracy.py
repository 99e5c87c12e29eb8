"""Accuracy next to speed: output and gradient errors against each mixer's float64 reference."""

import pytest
import torch

from gmabench.mixers.base import Shape
from gmabench.mixers.registry import load_mixer
from gmabench.sweep.accuracy import measure_accuracy, relative_error
from tests.mixers.helpers import cpu_mixer_names
from tests.sweep.fault_mixers import DetachedReference, TrainsOtherwise, WrongValueGradient

CPU = torch.device("cpu")


def _shape(causal, **kw):
    return Shape(**{**dict(B=2, N=48, H=2, D=16, K=4, Dv=8), **kw}, causal=causal)


def test_relative_error_is_relative_and_absolute_against_an_exact_zero():
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([0.0, 2e-15]), torch.zeros(2)) == pytest.approx(2e-15)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", cpu_mixer_names())
def test_every_cpu_mixer_gets_each_gradient_checked_in_float32(name, causal):
    mixer = load_mixer(name)
    shape = _shape(causal)
    if mixer.not_supported_reasons(shape, torch.float32, CPU):
        pytest.skip("; ".join(mixer.not_supported_reasons(shape, torch.float32, CPU)))
    acc = measure_accuracy(mixer, shape, torch.float32, CPU, tokens=32, seed=11, gradients=True)
    assert acc.tokens == 32
    assert set(acc.grad_rel_errors) == set(mixer.grad_inputs)
    # float32 with float32 (or wider) accumulation: within a few ulps of float64, every gradient
    assert acc.rel_error < 1e-5 and acc.grad_rel_error < 1e-5, acc.grad_rel_errors
    assert acc.grad_rel_error == max(acc.grad_rel_errors.values())


def test_bfloat16_gradients_err_at_the_dtypes_rounding():
    acc = measure_accuracy(load_mixer("gma"), _shape(True, D=32, K=8, Dv=32), torch.bfloat16, CPU,
                           tokens=48, seed=3, gradients=True)
    # q, k, v and their gradients are rounded to bf16 (2^-9 relative): about 1e-3 to 3e-3;
    # the float32 parameters' gradients are summed in float32
    for name in ("q", "k", "v"):
        assert 5e-4 < acc.grad_rel_errors[name] < 5e-3, acc.grad_rel_errors
    for name in ("mu", "log_sigma", "mix_logits"):
        assert acc.grad_rel_errors[name] < 1e-5, acc.grad_rel_errors


def test_a_wrong_backward_shows_in_its_input_only():
    acc = measure_accuracy(WrongValueGradient(), _shape(False), torch.float32, CPU, tokens=16,
                           seed=0, gradients=True)
    assert acc.rel_error == 0.0
    assert acc.grad_rel_errors["v"] == pytest.approx(0.005, rel=1e-5)   # 2.01 against 2
    assert acc.grad_rel_errors["q"] == 0.0                              # exactly zero both ways
    assert acc.grad_rel_error == acc.grad_rel_errors["v"]


def test_the_forward_alone_checks_no_gradient():
    acc = measure_accuracy(WrongValueGradient(), _shape(False), torch.float32, CPU, tokens=16,
                           seed=0, gradients=False)
    assert acc.grad_rel_errors == {} and acc.grad_rel_error is None


def test_a_reference_that_cannot_be_differentiated_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="test-detached-reference: its reference is not differentiable"):
        measure_accuracy(DetachedReference(), _shape(False), torch.float32, CPU, tokens=16, seed=0,
                         gradients=True)


def test_gradients_that_are_exactly_zero_read_as_absolute_errors():
    # K = 1: every responsibility is 1, so the output ignores q, k and the mixture, whose float64
    # gradients are exactly zero; their errors are absolute, not a division by zero
    acc = measure_accuracy(load_mixer("gma-reference"), _shape(False, K=1), torch.float32, CPU,
                           tokens=16, seed=5, gradients=True)
    for name in ("q", "k", "mu", "log_sigma", "mix_logits"):
        assert acc.grad_rel_errors[name] < 1e-12, acc.grad_rel_errors
    assert 0 < acc.grad_rel_errors["v"] < 1e-5


def test_a_training_cells_output_error_is_the_training_forwards():
    # the forward a fwd_bwd cell times is the one with gradients on; its error is what counts
    shape = _shape(False)
    inference = measure_accuracy(TrainsOtherwise(), shape, torch.float32, CPU, tokens=16, seed=0,
                                 gradients=False)
    training = measure_accuracy(TrainsOtherwise(), shape, torch.float32, CPU, tokens=16, seed=0,
                                gradients=True)
    assert inference.rel_error == 0.0
    assert training.rel_error == pytest.approx(0.01, rel=1e-5)
    assert training.grad_rel_errors["v"] == pytest.approx(0.01, rel=1e-5)
