"""The fast launch path (gmabench/gma/triton/launch.py) against Triton's own.

Its cache key must tell apart every two arguments that Triton's specialiser tells apart, or a
kernel compiled for one (say, N a multiple of 16) would run for the other. On CPU: the key against
the specialiser itself; on a GPU: outputs and gradients of fast and standard launches agree.
"""

from __future__ import annotations

import itertools

import pytest
import torch

triton = pytest.importorskip("triton")

from gmabench.gma.triton import launch as launch_mod  # noqa: E402


def _triton_spec(a):
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    return native_specialize_impl(BaseBackend, a, False, True, True)


def _samples():
    buf = torch.empty(64, dtype=torch.float32)
    ints = [0, 1, 2, 15, 16, 17, 32, 4133, 2 ** 31 - 16, 2 ** 31, 2 ** 31 + 1, -1, -16, 2 ** 63]
    tensors = [buf, buf[1:], buf[4:], buf[8:], buf.to(torch.bfloat16), buf.to(torch.bfloat16)[1:],
               buf.to(torch.bfloat16)[8:], buf.half(), buf.half()[3:]]
    return ints + [0.5, 1.0, 1e-6, True, False] + tensors


def test_key_is_at_least_as_fine_as_tritons_specialisation():
    samples = _samples()
    for a, b in itertools.combinations(samples, 2):
        if _triton_spec(a) != _triton_spec(b):
            assert launch_mod.arg_key(a) != launch_mod.arg_key(b), (a, b, _triton_spec(a))


def test_key_sees_alignment_and_the_value_one():
    buf = torch.empty(64)
    assert launch_mod.arg_key(buf) != launch_mod.arg_key(buf[1:])
    assert launch_mod.arg_key(buf) == launch_mod.arg_key(buf[4:]) == launch_mod.arg_key(torch.empty(3))
    assert launch_mod.arg_key(1) != launch_mod.arg_key(17)
    assert launch_mod.arg_key(32) != launch_mod.arg_key(33)
    assert launch_mod.arg_key(33) == launch_mod.arg_key(35)


class _FakeCompiled:
    function, packed_metadata = "fn", "meta"

    def __init__(self, refuse=False):
        self.refuse, self.runs = refuse, []

    def run(self, *a):
        if self.refuse:
            raise TypeError("launcher takes other arguments")
        self.runs.append(a)


class _FakeKernel:
    """Stands for a JITFunction: kernel[grid](...) records a standard launch."""
    arg_names = ["x", "n", "C", "B"]

    def __init__(self, compiled):
        self.compiled, self.standard = compiled, []

    def __getitem__(self, grid):
        return lambda *a, **kw: self.standard.append((grid, a, kw)) or self.compiled


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(launch_mod, "ENABLED", True)
    monkeypatch.setattr(launch_mod.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch_mod, "_raw_stream", lambda dev: 77)
    launch_mod.clear()
    yield
    launch_mod.clear()


def test_second_launch_calls_the_compiled_kernel_with_constexprs_in_signature_order(fake_cuda):
    kernel = _FakeKernel(_FakeCompiled())
    x = torch.empty(8)
    launch_mod.launch(kernel, (3, 5), (x, 32), {"B": 64, "C": 2}, 4, 2)
    assert kernel.standard == [((3, 5), (x, 32), {"B": 64, "C": 2, "num_warps": 4, "num_stages": 2})]
    launch_mod.launch(kernel, (6, 5), (x, 48), {"B": 64, "C": 2}, 4, 2)    # 48: same key as 32
    assert len(kernel.standard) == 1
    assert kernel.compiled.runs == [(6, 5, 1, 77, "fn", "meta", None, None, None, x, 48, 2, 64)]
    launch_mod.launch(kernel, (6, 5), (x, 33), {"B": 64, "C": 2}, 4, 2)    # 33: a new key
    assert len(kernel.standard) == 2 and len(kernel.compiled.runs) == 1


def test_a_register_cap_is_a_launch_option_and_its_own_cache_entry(fake_cuda):
    kernel = _FakeKernel(_FakeCompiled())
    x = torch.empty(8)
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2)
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2, 168)
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2, 168)
    # no cap: no maxnreg option (the compiler's choice); a cap compiles a kernel of its own
    assert [kw.get("maxnreg") for _, _, kw in kernel.standard] == [None, 168]
    assert len(kernel.compiled.runs) == 1


def test_a_dependent_launch_is_a_launch_option_and_its_own_cache_entry(fake_cuda):
    kernel = _FakeKernel(_FakeCompiled())
    x = torch.empty(8)
    memo = {}
    for pdl in (False, True, True, False):
        launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2, pdl=pdl)
    # launch_pdl is a compile option of Triton's (its launcher sets the attribute): one compiled
    # kernel with it, one without, each launched from the cache the second time
    assert [kw.get("launch_pdl") for _, _, kw in kernel.standard] == [None, True]
    assert len(kernel.compiled.runs) == 2
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2, memo=memo, site="s", pdl=True)
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 2, memo=memo, site="s", pdl=True)
    assert len(kernel.standard) == 2 and len(kernel.compiled.runs) == 4


class _TooBigKernel(_FakeKernel):
    """Needs more shared memory than the GPU has with `fits_below` pipeline stages or more."""
    __name__ = "_wide_kernel"

    def __init__(self, compiled, fits_below):
        super().__init__(compiled)
        self.fits_below = fits_below

    def __getitem__(self, grid):
        def run(*a, num_stages, **kw):
            self.standard.append((grid, a, dict(kw, num_stages=num_stages)))
            if num_stages >= self.fits_below:
                raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")
            return self.compiled
        return run


def test_a_plan_over_shared_memory_runs_with_one_stage_and_is_cached_so(fake_cuda):
    kernel = _TooBigKernel(_FakeCompiled(), fits_below=2)
    x = torch.empty(8)
    for _ in range(3):
        launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 3)
    # 3 stages refused, 1 stage ran; the next two calls take the cached one-stage kernel
    assert [kw["num_stages"] for _, _, kw in kernel.standard] == [3, 1]
    assert len(kernel.compiled.runs) == 2


def test_a_kernel_too_large_even_with_one_stage_says_so(fake_cuda):
    kernel = _TooBigKernel(_FakeCompiled(), fits_below=1)
    with pytest.raises(launch_mod.KernelTooLarge, match=r"_wide_kernel \(D=128, KP=256, 8 warps, 1 stage\) "
                       r"needs 300000 of shared memory, this GPU has 232448.*impl='chunked'"):
        launch_mod.launch(kernel, (1,), (torch.empty(8), 16), {"D": 128, "KP": 256}, 8, 2)


def test_a_launch_hook_sends_every_launch_through_triton(fake_cuda, monkeypatch):
    kernel = _FakeKernel(_FakeCompiled())
    x = torch.empty(8)
    hook = lambda metadata: None  # noqa: E731
    launch_mod._knobs.runtime.launch_enter_hook.add(hook)
    try:
        for _ in range(3):
            launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 1)
    finally:
        launch_mod._knobs.runtime.launch_enter_hook.remove(hook)
    assert len(kernel.standard) == 3 and kernel.compiled.runs == []


def test_a_launcher_that_refuses_the_arguments_turns_the_fast_path_off(fake_cuda):
    kernel = _FakeKernel(_FakeCompiled(refuse=True))
    x = torch.empty(8)
    launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 1)
    with pytest.warns(RuntimeWarning, match="fast Triton launches disabled"):
        launch_mod.launch(kernel, (1,), (x, 16), {"C": 1, "B": 2}, 4, 1)
    assert len(kernel.standard) == 2 and launch_mod.ENABLED is False


def _gpu_inputs(g, N, dtype):
    ts = [torch.randn(2, N, 4, 64, generator=g, device="cuda").to(dtype) for _ in range(3)]
    ts += [torch.randn(4, 64, 64, generator=g, device="cuda"),
           torch.randn(4, 64, 64, generator=g, device="cuda") * 0.1,
           torch.randn(4, 64, generator=g, device="cuda")]
    return [t.requires_grad_() for t in ts]


def _gpu_run(ins, causal):
    """A training call's output and six gradients, and an inference call's output."""
    from gmabench.gma.triton import gma_triton
    o = gma_triton(*ins, causal=causal)
    grads = torch.autograd.grad(o, ins, torch.ones_like(o))
    with torch.no_grad():
        inf = gma_triton(*ins, causal=causal)
    return [o.detach(), inf, *grads]


def _assert_same(got, want, causal):
    """Float32 atomic sums over programs, in no fixed order, differ between any two runs in
    single elements near cancellation: the parameter gradients (the H200 showed 25 of 16384 at
    5e-5 absolute) and, in the bidirectional backward, dq, dk and dv (dq sums into G, dk and dv
    read it; dk failed elementwise there). Those are compared as whole tensors: a wrong argument
    or a read before its writer finished would move them by far more than 1e-5."""
    whole = 5 if causal else 2
    names = ("o", "o (inference)", "dq", "dk", "dv", "dmu", "dlog_sigma", "dmix")
    for i, (name, f, s) in enumerate(zip(names, got, want)):
        if i < whole:
            torch.testing.assert_close(f.float(), s.float(), rtol=2e-5, atol=2e-6, msg=name)
        else:
            assert ((f.float() - s.float()).norm() / s.float().norm()).item() < 1e-5, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The bidirectional state is a float32 atomic sum over programs, in no fixed order, so a bf16
# output can differ by one rounding step between any two runs (seen on the H200): that variant is
# compared with float32 inputs; the causal forward has no atomics and is compared in bf16.
@pytest.mark.parametrize("causal,dtype", [(False, torch.float32), (True, torch.bfloat16)],
                         ids=["bidir-fp32", "causal-bf16"])
def test_fast_launches_match_standard_launches(causal, dtype, monkeypatch):
    assert launch_mod.ENABLED
    g = torch.Generator(device="cuda").manual_seed(5)
    # Sizes whose int arguments specialise differently (multiples of 16 or not, one block), each
    # run twice so that the second call takes the cached launch.
    for N in (4096, 4133, 16, 1, 4096, 4133):
        ins = _gpu_inputs(g, N, dtype)
        launch_mod.clear()
        _gpu_run(ins, causal)
        fast = _gpu_run(ins, causal)
        monkeypatch.setattr(launch_mod, "ENABLED", False)
        standard = _gpu_run(ins, causal)
        monkeypatch.setattr(launch_mod, "ENABLED", True)
        _assert_same(fast, standard, causal)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs a CUDA GPU of compute capability 9 or more")
@pytest.mark.parametrize("causal,dtype", [(False, torch.float32), (True, torch.bfloat16)],
                         ids=["bidir-fp32", "causal-bf16"])
def test_dependent_launches_match_ordinary_launches(causal, dtype, monkeypatch):
    # plan key pdl (on by default): each kernel after a call's first starts while the one
    # before it ends and waits for it (common._gdc) before any load but the mixture's; the
    # results must be those of ordinary launches, eagerly and replayed from a CUDA graph, at one
    # segment per head and at many (the walks read the totals other kernels wrote), stored dl
    # included (2^20 tokens)
    from gmabench.gma.triton import TUNING
    g = torch.Generator(device="cuda").manual_seed(6)
    for N in (1, 4133, 131072):
        ins = _gpu_inputs(g, N, dtype)
        monkeypatch.setitem(TUNING, "pdl", 0)
        want = _gpu_run(ins, causal)
        monkeypatch.setitem(TUNING, "pdl", None)   # the default: on
        _assert_same(_gpu_run(ins, causal), want, causal)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _gpu_run(ins, causal)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _gpu_run(ins, causal)
        for t in out:
            t.zero_()
        graph.replay()
        torch.cuda.synchronize()
        _assert_same(out, want, causal)
