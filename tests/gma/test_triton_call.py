"""Prepared calls (gmabench/gma/triton/call.py): one signature, one set of launch decisions."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from gmabench.gma.triton import TUNING  # noqa: E402
from gmabench.gma.triton import call as call_mod  # noqa: E402
from gmabench.gma.triton import launch as launch_mod  # noqa: E402
from gmabench.gma.triton.common import PRECISIONS  # noqa: E402


def _inputs(N=40, H=2, D=16, DV=32, K=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, N, H, D, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(1, N, H, DV, generator=g).to(dtype)
    return q, k, v, torch.randn(H, K, D, generator=g), torch.randn(H, K, D, generator=g), \
        torch.randn(H, K, generator=g)


def _prepare(ts, causal=True, grad=False, prec=PRECISIONS["ieee"]):
    return call_mod.prepare(ts, causal, 1.0, 1e-6, prec, grad)


def test_a_signature_is_prepared_once_and_its_parts_follow_the_plan():
    call_mod.clear()
    ts = _inputs()
    first, ready = _prepare(ts)
    again, _ = _prepare(_inputs(seed=1))            # other values, same signature
    assert again is first
    assert first.dims == (1, 40, 2, 16, 32, 5)
    assert first.grid == (first.plan.P, 2) and first.state_len == first.plan.KP * 33
    assert all(r.is_contiguous() for r in ready)
    # another variant, precision or training flag is another call
    assert _prepare(ts, causal=False)[0] is not first
    assert _prepare(ts, grad=True)[0] is not first
    # training with the fp16 output pass: the state and the backward take split products
    train, _ = _prepare(_inputs(dtype=torch.bfloat16), grad=True, prec=PRECISIONS["fp16"])
    assert train.fwd["PREC"] == PRECISIONS["fp16"]
    assert train.state["PREC"] == train.bwd["PREC"] == PRECISIONS["split"]
    # ...but for the products that feed dq, dk, dv alone; a split call keeps them split
    assert train.bwd["DXP"] == PRECISIONS["fp16"]
    split, _ = _prepare(_inputs(dtype=torch.bfloat16), grad=True, prec=PRECISIONS["split"])
    assert split.bwd["DXP"] == PRECISIONS["split"]
    # the wide form takes them in fp16 too (wide_dx16, the default), or keeps one precision
    for dx16, dxp in ((None, PRECISIONS["fp16"]), (0, PRECISIONS["split"])):
        TUNING.update(wide=1, wide_dx16=dx16)
        try:
            wide, _ = _prepare(_inputs(dtype=torch.bfloat16), grad=True, prec=PRECISIONS["fp16"])
            assert wide.plan.WIDE and wide.bwd["DXP"] == wide.bwd_k["DXP"] == dxp
            assert wide.bwd["PREC"] == PRECISIONS["split"]
        finally:
            TUNING.update(wide=None, wide_dx16=None)
    assert train.bwd["BLOCK"] == train.plan.BLOCK_BWD and train.state["ATOMIC"] is False


def test_a_call_with_split_dx_products_plans_its_key_side_in_the_query_sides_block(monkeypatch):
    # as on a GPU (the interpreter forces one block size), with the tuned table's training row
    from gmabench.gma.triton import plan as plan_mod
    monkeypatch.setattr(plan_mod, "INTERPRET", False)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    call_mod.clear()
    ts = _inputs(N=4096, D=64, DV=64, K=64, dtype=torch.bfloat16)
    fp16, _ = _prepare(ts, grad=True, prec=PRECISIONS["fp16"])
    split, _ = _prepare(ts, grad=True, prec=PRECISIONS["split"])
    assert (fp16.plan.BLOCK_BWD, fp16.plan.BLOCK_BWD_K) == (16, 32)     # plan.py's table
    assert (split.plan.BLOCK_BWD, split.plan.BLOCK_BWD_K) == (16, 16)
    assert split.bwd_k["BLOCK"] == 16 and fp16.bwd_k["BLOCK"] == 32
    call_mod.clear()


def test_a_dx_pass_sums_on_the_blocks_of_each_sides_walk(monkeypatch):
    # dx_pass: each side's sums pass takes that side's walk block, and a program's rows are a
    # multiple of both blocks (here the 16-row knob is raised to the key side's 32), so that
    # its tiles are the walk's and dq, dk round as the walks would have made them
    from gmabench.gma.triton import plan as plan_mod
    monkeypatch.setattr(plan_mod, "INTERPRET", False)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    call_mod.clear()
    TUNING.update(dl_store=2, dx_pass=1, dl_rows=16)
    try:
        call, _ = _prepare(_inputs(N=4096, D=64, DV=64, K=64, dtype=torch.bfloat16), grad=True,
                           prec=PRECISIONS["fp16"])
    finally:
        TUNING.update(dl_store=None, dx_pass=None, dl_rows=None)
        call_mod.clear()
    assert call.plan.DX_PASS and (call.plan.BLOCK_BWD, call.plan.BLOCK_BWD_K) == (16, 32)
    assert (call.dl_sums["BLOCK"], call.dl_sums_k["BLOCK"], call.dl_rows) == (16, 32, 32)
    assert call.bwd["DXPASS"] and call.bwd_k["DXPASS"] and call.dl_sums["DXPASS"]
    assert call.dl_sums["DXP"] == PRECISIONS["fp16"]


@pytest.mark.parametrize("K,dtype,prec,block", [
    (1, torch.float32, "tf32x3", 64), (20, torch.float32, "ieee", 64),
    (64, torch.float32, "tf32x3", 64), (1, torch.float16, "split", 64),
    (20, torch.bfloat16, "fp16", 64), (140, torch.float32, "ieee", 16),
    (200, torch.bfloat16, "fp16", 16)])
def test_the_sums_pass_takes_at_most_64_rows_a_block(monkeypatch, K, dtype, prec, block):
    # 4096 // KP rows a block (a BLOCK x KP tile of dl), but no more than 64: at 128 and 256
    # rows the GPU's Triton spilled 7 KB a thread for float32 operands and float16 inputs
    from gmabench.gma.triton import plan as plan_mod
    monkeypatch.setattr(plan_mod, "INTERPRET", False)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    call_mod.clear()
    TUNING.update(dl_store=2)
    try:
        call, _ = _prepare(_inputs(N=4096, D=32, DV=32, K=K, dtype=dtype), grad=True,
                           prec=PRECISIONS[prec])
    finally:
        TUNING.update(dl_store=None)
        call_mod.clear()
    assert call.dl_sums["BLOCK"] == call.dl_sums_k["BLOCK"] == block


@pytest.mark.parametrize("causal,K,aux_dl,moved", [(True, 64, 1, True), (True, 140, 1, False),
                                                   (True, 64, 0, False), (False, 64, 1, False)])
def test_the_query_sides_pass_moves_d_and_dd_only_where_it_reads_whole_rows(
        monkeypatch, causal, K, aux_dl, moved):
    # AUXCP: the causal query side's sums pass writes each row's d, dd into the dl buffer for
    # the key side (aux_dl), where one program reads the row's whole dl (one tile of x's
    # columns: not at K=140, whose 256 padded components split x into 16-column tiles);
    # elsewhere a copy between the passes does it, and the key side's pass never does
    from gmabench.gma.triton import plan as plan_mod
    monkeypatch.setattr(plan_mod, "INTERPRET", False)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    call_mod.clear()
    TUNING.update(dl_store=2, aux_dl=aux_dl)
    try:
        call, _ = _prepare(_inputs(N=4096, D=64, DV=64, K=K, dtype=torch.bfloat16), grad=True,
                           prec=PRECISIONS["fp16"], causal=causal)
    finally:
        TUNING.update(dl_store=None, aux_dl=None)
        call_mod.clear()
    assert call.dl_sums["AUXCP"] is moved and call.dl_sums_k["AUXCP"] is False
    assert call.dl_sums["DC"] == (16 if K == 140 else 64)


def test_alignment_contiguity_and_the_plan_are_part_of_the_signature():
    call_mod.clear()
    ts = _inputs()
    base, _ = _prepare(ts)
    buf = torch.empty(ts[0].numel() + 1)
    odd = buf[1:].view_as(ts[0]).copy_(ts[0])     # 4 bytes past a 16-byte boundary
    assert odd.data_ptr() % 16 and _prepare((odd, *ts[1:]))[0] is not base
    # a transposed (non-contiguous) q is copied first, so it keeps the contiguous q's call
    qt = ts[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous() and _prepare((qt, *ts[1:]))[0] is base
    TUNING.update(segments=1)
    try:
        assert _prepare(ts)[0] is not base
        assert _prepare(ts)[0].plan.P == 1
    finally:
        TUNING.update(segments=None)
    assert _prepare(ts)[0] is base


def test_bad_shapes_are_refused_every_time():
    call_mod.clear()
    q, k, v, mu, ls, mix = _inputs()
    for _ in range(2):
        with pytest.raises(ValueError, match=r"expected mix_logits \(2,5\)"):
            _prepare((q, k, v, mu, ls, mix[:, :4]))
    with pytest.raises(ValueError, match="Dv must be one of"):
        _prepare((q, k, v[..., :24], mu, ls, mix))
    assert not call_mod._CALLS


class _Compiled:
    function, packed_metadata = "fn", "meta"

    def __init__(self):
        self.runs = []

    def run(self, *a):
        self.runs.append(a)


class _Kernel:
    arg_names = ["x", "n", "C"]

    def __init__(self):
        self.compiled, self.standard = _Compiled(), 0

    def __getitem__(self, grid):
        def launch(*a, **kw):
            self.standard += 1
            return self.compiled
        return launch


def test_a_memoised_launch_skips_the_key_and_a_clear_forgets_it(monkeypatch):
    monkeypatch.setattr(launch_mod, "ENABLED", True)
    monkeypatch.setattr(launch_mod.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch_mod, "_raw_stream", lambda dev: 77)
    keys = []
    real_key = launch_mod.arg_key
    monkeypatch.setattr(launch_mod, "arg_key", lambda a: keys.append(a) or real_key(a))
    launch_mod.clear()
    kernel, memo, x = _Kernel(), {}, torch.empty(4)
    for n in (16, 16, 16):
        launch_mod.launch(kernel, (2,), (x, n), {"C": 3}, 4, 1, memo=memo, site="s")
    # the first launch builds the key and compiles; the next two run the memoised kernel
    assert kernel.standard == 1 and len(keys) == 2
    assert [r[-3:] for r in kernel.compiled.runs] == [(x, 16, 3), (x, 16, 3)]
    launch_mod.clear()
    launch_mod.launch(kernel, (2,), (x, 16), {"C": 3}, 4, 1, memo=memo, site="s")
    assert kernel.standard == 2 and len(keys) == 4
    launch_mod.clear()


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_every_constexpr_of_a_calls_kernels_is_named(causal):
    # launch.py's fast path passes a kernel's constexprs by position from the call's constants,
    # with no defaults: a constant left to its default works on Triton's own path (and under the
    # interpreter) and fails only on a GPU (a plan key `ring`, since removed, once did)
    import inspect

    from gmabench.gma.triton import bidir, causal as cm, common
    call_mod.clear()
    TUNING.update(dl_store=2)   # the sums pass over a stored dl, both sides
    try:
        call, _ = _prepare(_inputs(dtype=torch.bfloat16), causal=causal, grad=True,
                           prec=PRECISIONS["fp16"])
    finally:
        TUNING.update(dl_store=None)
    kernels = ([(cm._causal_out_kernel, call.fwd), (cm._causal_bwd_q_kernel, call.bwd),
                (cm._causal_bwd_k_kernel, call.bwd_k)] if causal else
               [(bidir._bidir_out_kernel, call.fwd), (bidir._bidir_bwd_q_kernel, call.bwd),
                (bidir._bidir_bwd_k_kernel, call.bwd_k)])
    for kernel, consts in kernels + [(bidir._state_kernel, call.state),
                                     (common._param_grad_kernel, call.param),
                                     (common._dl_sums_kernel, call.dl_sums),
                                     (common._dl_sums_kernel, call.dl_sums_k)]:
        params = inspect.signature(kernel.fn).parameters.values()
        constexprs = [p.name for p in params if str(p.annotation).endswith("constexpr")]
        assert sorted(consts) == sorted(constexprs), kernel.fn.__name__


def test_call_plan_is_the_plan_a_prepared_call_gets():
    # scripts report a timed call's plan through call_plan: it must be prepare's, precision and all
    call_mod.clear()
    plans = {}
    for dtype, prec in ((torch.float32, "tf32x3"), (torch.float32, "ieee"), (torch.float16, "split")):
        code = PRECISIONS[prec]
        got = _prepare(_inputs(dtype=dtype), grad=True, prec=code)[0].plan
        assert got == call_mod.call_plan(1, 40, 2, 16, 32, 5, True, torch.device("cpu"), True, dtype,
                                         code)
        plans[prec] = got
    # float32 in tf32x3 takes its own training rows (8 backward warps), the exact twin the table's
    assert plans["tf32x3"].warps_bwd == 8 and plans["ieee"].warps_bwd != 8
