"""Test-only mixers that fail in the ways a real sweep meets: a segfault, a hang, an exception,
and an allocation too large to satisfy. Loaded through GMABENCH_MIXERS in the tests."""

import ctypes
import time

import torch

from gmabench.mixers.base import Mixer


class _Fault(Mixer):
    impl = "test"

    def forward(self, inputs, causal):
        self.fail()
        return inputs["v"]

    def reference(self, inputs, causal):
        return inputs["v"].double()


class Segfault(_Fault):
    name = "test-segfault"

    def fail(self):
        ctypes.string_at(0)  # reads address 0: SIGSEGV


class Hang(_Fault):
    name = "test-hang"

    def fail(self):
        time.sleep(3600)


class Raise(_Fault):
    name = "test-raise"

    def fail(self):
        raise ValueError("deliberate failure in test-raise")


class DeepRaise(_Fault):
    """Fails 30 calls deep, as a library's kernel launch does below its wrappers."""
    name = "test-deep-raise"

    def fail(self, depth=30):
        if depth:
            return self.fail(depth - 1)
        raise ValueError("deliberate failure at the bottom")


class HugeAlloc(_Fault):
    name = "test-oom"

    def fail(self):
        torch.empty(1 << 62, dtype=torch.uint8)  # far beyond any machine: allocator refuses


class SigKill(_Fault):
    name = "test-sigkill"

    def fail(self):
        import os
        import signal
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


class LearnsFallback(Mixer):
    """Reports a different backend once it has run with gradients (as GMA's fused kernels do
    when a shape's backward falls back to PyTorch)."""
    name = "test-learns-fallback"
    grad_inputs = ("v",)
    impl = "test"
    fell_back = False

    def backend(self, inputs, causal):
        return "fused; backward in PyTorch" if LearnsFallback.fell_back else "fused"

    def forward(self, inputs, causal):
        if torch.is_grad_enabled():
            LearnsFallback.fell_back = True
        return inputs["v"] * 2

    def reference(self, inputs, causal):
        return inputs["v"].double() * 2


class RefusesHalfTraining(Mixer):
    """Runs everything but float16 training, which it refuses with a reason (as fla's linear
    attention does where its float16 gradients were measured wrong)."""
    name = "test-refuses-half-training"
    grad_inputs = ("v",)
    impl = "test"

    def mode_not_supported_reasons(self, mode, device, dtype=None):
        return ["float16 gradients are wrong"] if mode == "fwd_bwd" and dtype == torch.float16 else []

    def forward(self, inputs, causal):
        return inputs["v"] * 2

    def reference(self, inputs, causal):
        return inputs["v"].double() * 2


class WrongValueGradient(Mixer):
    """A right output with a wrong backward: the gradient of v is 2.01x the output gradient
    where the function's is 2x (the kind of bug only a gradient check sees)."""
    name = "test-wrong-value-gradient"
    grad_inputs = ("q", "v")
    impl = "test"

    def forward(self, inputs, causal):
        v = inputs["v"]
        nudge = 0.01 * v
        return 2 * v + (nudge - nudge.detach()) + 0 * inputs["q"].sum()

    def reference(self, inputs, causal):
        return 2 * inputs["v"].double() + 0 * inputs["q"].double().sum()


class DetachedReference(WrongValueGradient):
    """A reference that cuts the graph: a gradient check cannot use it, and must say so."""
    name = "test-detached-reference"

    def reference(self, inputs, causal):
        return 2 * inputs["v"].detach().double()


class TrainsOtherwise(Mixer):
    """Computes its output another way when a backward will follow (as GMA's kernels do: their
    training forward takes other products than their inference forward): 1% off then."""
    name = "test-trains-otherwise"
    grad_inputs = ("v",)
    impl = "test"

    def forward(self, inputs, causal):
        v = inputs["v"]
        return v * (2.02 if torch.is_grad_enabled() and v.requires_grad else 2.0)

    def reference(self, inputs, causal):
        return inputs["v"].double() * 2
