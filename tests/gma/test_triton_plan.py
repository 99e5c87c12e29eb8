"""Launch plans of the fused kernels: the per-variant table, plan files, and the knobs' precedence."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

pytest.importorskip("triton")

from gmabench.gma.triton import plan as plan_mod  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def gpu_rules(monkeypatch):
    """Plan as on a GPU (the interpreter forces tiny blocks), on a table of the untuned base
    settings (block 64, 8 warps, 2 stages, 4 waves, min_bps 4) for every variant."""
    monkeypatch.setattr(plan_mod, "INTERPRET", False)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    monkeypatch.setattr(plan_mod, "PLAN_TABLE", {v: dict(plan_mod._BASE) for v in plan_mod.VARIANTS})
    monkeypatch.setattr(plan_mod, "PLAN_SOURCE", "built-in")
    monkeypatch.setattr(plan_mod, "TUNING", {k: None for k in plan_mod.TUNING})
    return plan_mod


def test_plan_file_replaces_only_its_variants(gpu_rules, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"_measured": "a comment", "causal/fwd": {"block": 128, "warps_fwd": 4},
                                "bidir/fwd_bwd": {"stages": 3, "waves": 8},
                                "causal/fwd_bwd": {"stages_key": 4}}))
    gpu_rules.load_plan_file(path)
    causal_fwd = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=False)
    causal_train = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True)
    bidir_train = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, False, CPU, grad=True)
    assert (causal_fwd.BLOCK, causal_fwd.warps_fwd, causal_fwd.stages) == (128, 4, 2)
    assert (causal_train.BLOCK, causal_train.warps_fwd) == (64, 8)
    assert (bidir_train.stages, bidir_train.stages_key) == (3, 3)     # 0: the key pass as the rest
    assert (causal_train.stages, causal_train.stages_key) == (2, 4)
    # waves: B*H*P ~ waves * SMs (4 "SMs" on CPU): 8 * 4 / 16 heads = 2 segments
    assert bidir_train.P == 2 and causal_train.P == 1
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert gpu_rules.PLAN_SOURCE == f"plan.json sha256:{digest}"


@pytest.mark.parametrize("content,match", [
    ("{not json", "plan.json"),
    (json.dumps({"causal/bwd": {"block": 64}}), "unknown variant 'causal/bwd'"),
    (json.dumps({"causal/fwd": {"block": 48}}), "causal/fwd.block = 48"),
    (json.dumps({"bidir/fwd": {"warps_fwd": True}}), "bidir/fwd.warps_fwd"),
    (json.dumps({"bidir/fwd": {"blocks": 64}}), "bidir/fwd.blocks"),
    (json.dumps({"bidir/fwd_bwd": {"block_bwd": 48}}), "bidir/fwd_bwd.block_bwd = 48"),
    (json.dumps({"bidir/fwd": {"regs_fwd": 300}}), "bidir/fwd.regs_fwd = 300"),
    (json.dumps({"causal/fwd_bwd": {"dx_pass": 2}}), "causal/fwd_bwd.dx_pass = 2"),
    (json.dumps({"causal/fwd_bwd": {"aux_dl": 2}}), "causal/fwd_bwd.aux_dl = 2"),
    (json.dumps({"causal/fwd": {"pdl": 2}}), "causal/fwd.pdl = 2"),
    (json.dumps({"bidir/fwd": {"regs_fwd": 16}}), "bidir/fwd.regs_fwd = 16"),
    (json.dumps({"causal/fwd": {"stages_key": 5}}), "causal/fwd.stages_key = 5"),
    (json.dumps({"causal/fwd": {"raw16": 2}}), "causal/fwd.raw16 = 2"),
    (json.dumps({"causal/fwd": {"max_seg": -1}}), "causal/fwd.max_seg = -1"),
])
def test_bad_plan_file_is_refused_and_changes_nothing(gpu_rules, tmp_path, content, match):
    path = tmp_path / "plan.json"
    # a valid entry first: a file with any bad entry must not be half applied
    data = content if content.startswith("{not") else json.dumps(
        {"causal/fwd_bwd": {"block": 32}, **json.loads(content)})
    path.write_text(data)
    before = json.dumps(gpu_rules.PLAN_TABLE, sort_keys=True)
    with pytest.raises(ValueError, match=match):
        gpu_rules.load_plan_file(path)
    assert json.dumps(gpu_rules.PLAN_TABLE, sort_keys=True) == before
    assert gpu_rules.PLAN_SOURCE == "built-in"


def test_key_pass_block_covers_the_same_segments(gpu_rules):
    gpu_rules.PLAN_TABLE["bidir/fwd"].update(block=128, block_key=64)
    p = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, False, CPU, grad=False)
    assert (p.BLOCK, p.BLOCK_KEY) == (128, 64) and p.bps_key * p.BLOCK_KEY == p.bps * p.BLOCK
    # never larger than the block; 0 means the block itself
    gpu_rules.PLAN_TABLE["bidir/fwd"].update(block=32, block_key=64)
    assert gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, False, CPU, grad=False).BLOCK_KEY == 32
    t = gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU, grad=True)
    assert (t.BLOCK_KEY, t.bps_key) == (t.BLOCK, t.bps)
    # the backward's key side: its own block over the same segments, by default the backward's
    assert (t.BLOCK_BWD_K, t.bps_bwd_k) == (t.BLOCK_BWD, t.bps_bwd)
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"].update(block_bwd=16, block_bwd_k=32)
    gpu_rules._PLANS.clear()
    t = gpu_rules.make_plan(1, 1024, 16, 64, 64, 64, True, CPU, grad=True)   # (dl not stored)
    assert (t.BLOCK_BWD, t.BLOCK_BWD_K) == (16, 32) and t.bps_bwd_k * 32 == t.bps * t.BLOCK


def test_split_dx_products_walk_the_key_side_in_the_query_sides_block(gpu_rules):
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"].update(block=64, block_bwd=16, block_bwd_k=32)
    fp16_dx = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True)
    split = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True, split_dx=True)
    # 2^21 tokens: dl stored, and the query side walks 32-token blocks unless its products split
    assert (fp16_dx.BLOCK_BWD, fp16_dx.BLOCK_BWD_K) == (32, 32)
    assert (split.BLOCK_BWD, split.BLOCK_BWD_K) == (16, 16) and split.bps_bwd_k == split.bps_bwd
    below = gpu_rules.make_plan(1, 1024, 16, 64, 64, 64, True, CPU, grad=True)
    assert (below.DL_STORE, below.BLOCK_BWD, below.BLOCK_BWD_K) == (0, 16, 32)
    # from 2^15 tokens both store dl on both sides, split products in their 16-token blocks
    small = [gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU, True, s) for s in (0, 1)]
    assert [(p.DL_STORE, p.BLOCK_BWD) for p in small] == [(2, 32), (2, 16)]
    assert split.BLOCK == fp16_dx.BLOCK and split.P == fp16_dx.P      # the same segments
    # inference has no backward; a knob still decides over the rule
    assert gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU, grad=False, split_dx=True) == \
        gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU, grad=False)
    gpu_rules.TUNING["block_bwd_k"] = 32
    assert gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, True, True).BLOCK_BWD_K == 32


def test_tuning_knobs_override_the_table_and_wide_shapes_shrink_the_block(gpu_rules):
    gpu_rules.PLAN_TABLE["bidir/fwd"]["block"] = 128
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).BLOCK == 128
    # wider than the table was measured for: register-pressure rule
    assert gpu_rules.make_plan(1, 8192, 4, 128, 64, 64, False, CPU, grad=False).BLOCK == 32
    assert gpu_rules.make_plan(1, 8192, 4, 256, 128, 128, False, CPU, grad=False).BLOCK == 16
    gpu_rules.TUNING.update(block=32, segments=3, warps_fwd=4)
    p = gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False)
    assert (p.BLOCK, p.P, p.warps_fwd) == (32, 3, 4)


def test_min_blocks_per_segment_bounds_small_sequences(gpu_rules):
    gpu_rules.PLAN_TABLE["causal/fwd"].update(block=64, waves=64, min_bps=4)
    p = gpu_rules.make_plan(1, 2048, 1, 64, 64, 64, True, CPU, grad=False)   # 32 blocks
    assert (p.P, p.bps) == (8, 4)
    gpu_rules.PLAN_TABLE["causal/fwd"]["min_bps"] = 1
    gpu_rules._PLANS.clear()
    p = gpu_rules.make_plan(1, 2048, 1, 64, 64, 64, True, CPU, grad=False)
    assert (p.P, p.bps) == (32, 1)


def test_backward_blocks_split_the_forward_segments(gpu_rules):
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"].update(block=64, block_bwd=16, waves=1)
    p = gpu_rules.make_plan(1, 10000, 1, 64, 64, 64, True, CPU, grad=True)
    # 157 blocks of 64 in 4 segments of 40 (the last shorter); the backward: 160 blocks of 16 each
    assert (p.BLOCK, p.P, p.bps, p.BLOCK_BWD, p.bps_bwd) == (64, 4, 40, 16, 160)
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"].update(block_bwd=0)
    gpu_rules._PLANS.clear()
    p = gpu_rules.make_plan(1, 10000, 1, 64, 64, 64, True, CPU, grad=True)
    assert (p.BLOCK_BWD, p.bps_bwd) == (64, 40)
    # never larger than the forward's block
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"].update(block=32, block_bwd=64)
    gpu_rules._PLANS.clear()
    p = gpu_rules.make_plan(1, 10000, 1, 64, 64, 64, True, CPU, grad=True)
    assert (p.BLOCK, p.BLOCK_BWD) == (32, 32)


def test_wide_shapes_take_the_plans_measured_for_them(gpu_rules):
    for variant in ("causal/fwd_bwd", "bidir/fwd_bwd"):
        gpu_rules.PLAN_TABLE[variant].update(block_bwd=16, warps_fwd=4, warps_bwd=4)
    causal = gpu_rules.make_plan(1, 10000, 1, 256, 128, 128, True, CPU, grad=True)
    bidir = gpu_rules.make_plan(1, 10000, 1, 128, 64, 64, False, CPU, grad=True)
    narrow = gpu_rules.make_plan(1, 10000, 1, 64, 64, 64, True, CPU, grad=True)
    assert (causal.BLOCK, causal.BLOCK_BWD, causal.warps_fwd, causal.warps_bwd) == (16, 16, 8, 8)
    # one program per SM (shared memory): 8 backward warps, and 16-token causal backward blocks
    # (docs/kernels.md, Version 2.16); a 4-warp training forward below 256 components (2.17)
    assert (bidir.BLOCK, bidir.BLOCK_BWD, bidir.warps_fwd, bidir.warps_bwd) == (32, 32, 4, 8)
    causal128 = gpu_rules.make_plan(1, 10000, 1, 128, 64, 64, True, CPU, grad=True)
    assert (causal128.BLOCK, causal128.BLOCK_BWD, causal128.BLOCK_BWD_K, causal128.bps_bwd,
            causal128.warps_bwd) == (32, 16, 16, 2 * causal128.bps, 8)
    # 256 components: 16-token backward blocks, for shared memory, but in the wide form's
    # bidirectional backward (its weights loaded per block: Version 2.39) and where the forward
    # walks 16 already
    k256 = gpu_rules.make_plan(1, 10000, 1, 256, 32, 32, False, CPU, grad=True)
    assert (k256.BLOCK, k256.BLOCK_BWD, k256.bps_bwd) == (32, 16, 2 * k256.bps)
    wide256 = [gpu_rules.make_plan(1, 10000, 1, 256, 64, 64, c, CPU, grad=True)
               for c in (False, True)]
    assert [(p.WIDE, p.BLOCK, p.BLOCK_BWD, p.BLOCK_BWD_K) for p in wide256] == [
        (True, 32, 32, 32), (True, 32, 16, 16)]
    assert wide256[0].bps_bwd == wide256[0].bps
    gpu_rules.TUNING.update(wide=0)   # the weights held through the walk: 16 again
    held = gpu_rules.make_plan(1, 10000, 1, 256, 64, 64, False, CPU, grad=True)
    assert not held.WIDE and held.BLOCK_BWD == 16
    gpu_rules.TUNING.update(wide=None)
    # K x D beyond 8192: the backward makes its weights per block (shared memory)
    assert not k256.WIDE and not narrow.WIDE and causal.WIDE
    assert gpu_rules.make_plan(1, 10000, 1, 256, 64, 64, True, CPU, grad=True).WIDE
    assert gpu_rules.make_plan(1, 10000, 1, 128, 128, 64, True, CPU, grad=True).WIDE
    assert not gpu_rules.make_plan(1, 10000, 1, 64, 128, 128, True, CPU, grad=True).WIDE
    assert (narrow.BLOCK_BWD, narrow.warps_fwd, narrow.warps_bwd) == (16, 4, 4)
    # dl stored for a sums pass (Version 2.17): both sides at 256 components or D = 128, the
    # query side at 128 components, and at the table's shapes the query side from 2^20 tokens
    assert (causal.DL_STORE, k256.DL_STORE, bidir.DL_STORE, causal128.DL_STORE) == (2, 2, 1, 1)
    assert gpu_rules.make_plan(1, 10000, 1, 64, 128, 128, True, CPU, grad=True).DL_STORE == 2
    assert narrow.DL_STORE == 0
    # ...where causal training stores both sides' dl, bidirectional the query side's, whose
    # dq the sums pass makes (Version 2.20); split dq, dk, dv products: both sides' (Version 2.34)
    at_2e20 = [gpu_rules.make_plan(1, 1 << 16, 16, 64, 64, 64, c, CPU, grad=True, split_dx=s)
               for c in (True, False) for s in (False, True)]
    assert [(p.DL_STORE, p.DX_PASS) for p in at_2e20] == [(2, False), (2, False), (1, True),
                                                          (2, False)]
    assert gpu_rules.make_plan(1, 1 << 16, 16, 64, 64, 64, True, CPU, grad=False).DL_STORE == 0
    assert gpu_rules.make_plan(1, 10000, 1, 128, 64, 64, True, CPU, grad=False).DL_STORE == 0
    # bidirectional inference at D = 128 walks 64-token blocks, the causal one 32
    assert gpu_rules.make_plan(1, 10000, 1, 64, 128, 128, False, CPU, grad=False).BLOCK == 64
    assert gpu_rules.make_plan(1, 10000, 1, 64, 128, 128, True, CPU, grad=False).BLOCK == 32
    # inference: the table's warps up to 128 components, 8 at 256
    for variant in ("causal/fwd", "bidir/fwd"):
        gpu_rules.PLAN_TABLE[variant].update(warps_fwd=4)
    gpu_rules._PLANS.clear()
    for causal_ in (True, False):
        assert gpu_rules.make_plan(1, 10000, 1, 128, 64, 64, causal_, CPU, grad=False).warps_fwd == 4
        assert gpu_rules.make_plan(1, 10000, 1, 256, 64, 64, causal_, CPU, grad=False).warps_fwd == 8
        assert gpu_rules.make_plan(1, 10000, 1, 200, 32, 32, causal_, CPU, grad=False).warps_fwd == 8


def test_stored_dl_starts_where_it_was_measured_to_pay(gpu_rules):
    """Training at the table's shapes (docs/kernels.md Versions 2.30, 2.32, 2.34): in bf16,
    causal stores dl on both sides from B*H*N = 2^15 tokens, bidirectional on the query side
    from 2^16, whose dq the sums pass makes, both with 32-token query blocks."""
    def at(N, causal):
        p = gpu_rules.make_plan(1, N, 16, 64, 64, 64, causal, CPU, grad=True)
        return p.DL_STORE, p.BLOCK_BWD if p.DL_STORE else None, p.DX_PASS
    assert [at(N, True) for N in (1024, 2048, 131072)] == [(0, None, False), (2, 32, False),
                                                          (2, 32, False)]
    assert [at(N, False) for N in (2048, 4096, 65536)] == [(0, None, False), (1, 32, True),
                                                          (1, 32, True)]
    # float16 inputs (split products): both sides in both variants, from 2^15; float32 inputs
    # only from 2^20 (not timed below)
    split = [gpu_rules.make_plan(1, N, 16, 64, 64, 64, False, CPU, True, True).DL_STORE
             for N in (1024, 2048)]
    f32 = [gpu_rules.make_plan(1, N, 16, 64, 64, 64, True, CPU, True, f32=True).DL_STORE
           for N in (32768, 65536)]
    assert (split, f32) == ([0, 2], [0, 2])
    # float32 in split precision (a twin for tests): the query side's, as before Version 2.34
    assert gpu_rules.make_plan(1, 65536, 16, 64, 64, 64, True, CPU, True, True, True).DL_STORE == 1
    # the plans from before, for a smaller peak (README): knobs come after the rules
    gpu_rules.TUNING.update(dl_store=0, block_bwd=16)
    old = gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU, grad=True)
    assert (old.DL_STORE, old.BLOCK_BWD, old.DX_PASS) == (0, 16, False)


def test_float32_in_tf32x3_takes_its_measured_rows_at_the_tables_shapes(gpu_rules):
    """Float32 inputs in tf32x3 products (docs/kernels.md Version 2.44): 8 backward warps, dl
    stored by both sides at every N, 32-token bidirectional query blocks (16 causal), and
    32-token inference blocks (8 warps causal); the exact-product twin and the wide shapes keep
    the rules they had."""
    def plan(N, causal, grad, K=64, **kw):
        return gpu_rules.make_plan(1, N, 16, K, 64, 64, causal, CPU, grad, f32=True, **kw)

    def train(p):
        return p.warps_bwd, p.DL_STORE, p.BLOCK_BWD, p.BLOCK_BWD_K, p.DX_PASS

    for N in (2048, 131072):
        assert train(plan(N, True, True, tf32x3=True)) == (8, 2, 16, 16, False)
        # the 16-bit rule would make dq in the sums pass from 2^16 tokens: not here
        assert train(plan(N, False, True, tf32x3=True)) == (8, 2, 32, 32, False)
    causal_fwd, bidir_fwd = plan(16384, True, False, tf32x3=True), plan(16384, False, False,
                                                                       tf32x3=True)
    assert (causal_fwd.BLOCK, causal_fwd.warps_fwd) == (32, 8)
    assert (bidir_fwd.BLOCK, bidir_fwd.warps_fwd) == (32, 8)   # the fixture's base: 8 warps
    # the exact twin (ieee): float32's stored-dl threshold as before, the base table's warps
    assert train(plan(2048, True, True)) == (8, 0, 64, 64, False)
    assert train(plan(2048, True, True)) != train(plan(2048, True, True, tf32x3=True))
    # wide shapes take their own rules (float32 keeps exact products there)
    assert plan(16384, True, True, K=128, tf32x3=True) == plan(16384, True, True, K=128)
    # knobs still come after the rules
    gpu_rules.TUNING.update(warps_bwd=4)
    assert plan(4096, True, True, tf32x3=True).warps_bwd == 4


def test_dx_pass_needs_a_stored_dl_and_the_tables_widths(gpu_rules):
    # causal: off by default (both sides store dl there); on only where a side stores dl and the
    # sums pass takes x in one column tile (KP x D <= 4096), not in the wide form; refused in a
    # plan file outside 0 and 1
    table = gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True)
    assert table.DL_STORE == 2 and not table.DX_PASS and table.AUX_DL
    gpu_rules.PLAN_TABLE["causal/fwd_bwd"]["aux_dl"] = 0   # as a plan file sets it
    gpu_rules._PLANS.clear()
    assert not gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True).AUX_DL
    assert not gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, False, CPU, grad=True).DX_PASS
    gpu_rules.TUNING["dx_pass"] = 1
    assert gpu_rules.make_plan(1, 131072, 16, 64, 64, 64, True, CPU, grad=True).DX_PASS
    assert not gpu_rules.make_plan(1, 1024, 16, 64, 64, 64, True, CPU, grad=True).DX_PASS
    assert not gpu_rules.make_plan(1, 131072, 16, 128, 64, 64, True, CPU, grad=True).DX_PASS
    assert not gpu_rules.make_plan(1, 16384, 16, 256, 64, 64, True, CPU, grad=True).DX_PASS
    gpu_rules.TUNING["dl_store"] = 2
    assert gpu_rules.make_plan(1, 4096, 16, 16, 32, 32, False, CPU, grad=True).DX_PASS


def test_register_cap_comes_from_the_file_and_the_knobs(gpu_rules, tmp_path):
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).regs_fwd == 0
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"bidir/fwd": {"regs_fwd": 168}}))
    gpu_rules.load_plan_file(path)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).regs_fwd == 168
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=False).regs_fwd == 0
    gpu_rules.TUNING.update(regs_fwd=128)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=True).regs_fwd == 128
    # the backward's own cap (regs_bwd), apart from the forward's
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=True).regs_bwd == 0
    path.write_text(json.dumps({"causal/fwd_bwd": {"regs_bwd": 128, "warps_bwd": 8}}))
    gpu_rules.load_plan_file(path)
    plan = gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=True)
    assert (plan.regs_bwd, plan.warps_bwd, plan.regs_fwd) == (128, 8, 128)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=True).regs_bwd == 0
    path.write_text(json.dumps({"causal/fwd_bwd": {"regs_bwd": 300}}))
    with pytest.raises(ValueError, match="regs_bwd = 300"):
        gpu_rules.load_plan_file(path)


def test_raw_float16_is_on_unless_the_file_or_a_knob_turns_it_off(gpu_rules, tmp_path):
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=False).RAW16 is True
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"causal/fwd": {"raw16": 0}}))
    gpu_rules.load_plan_file(path)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, True, CPU, grad=False).RAW16 is False
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).RAW16 is True
    gpu_rules.TUNING.update(raw16=0)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=True).RAW16 is False


def test_segments_fill_whole_waves_and_the_waves_knob_counts(gpu_rules):
    # 4 "SMs" on CPU: waves 2 -> 8 programs; 3 heads get 2 segments each (6 programs), not 3 (9,
    # one program more than a wave, which would run alone after the rest)
    gpu_rules.PLAN_TABLE["bidir/fwd"].update(block=64, waves=2, min_bps=1)
    assert gpu_rules.make_plan(1, 8192, 3, 64, 64, 64, False, CPU, grad=False).P == 2
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).P == 2
    assert gpu_rules.make_plan(1, 8192, 9, 64, 64, 64, False, CPU, grad=False).P == 1
    gpu_rules.TUNING.update(waves=8)
    assert gpu_rules.make_plan(1, 8192, 4, 64, 64, 64, False, CPU, grad=False).P == 8


def test_wide_form_where_padded_components_times_head_size_exceed_8192():
    assert not plan_mod.wide_training(64, 64, 64) and not plan_mod.wide_training(128, 64, 64)
    assert not plan_mod.wide_training(256, 32, 32) and not plan_mod.wide_training(100, 64, 64)
    assert plan_mod.wide_training(256, 64, 64) and plan_mod.wide_training(129, 64, 64)   # KP 256
    assert plan_mod.wide_training(128, 128, 64) and plan_mod.wide_training(65, 16, 128)
    assert plan_mod.wide_training(1, 16, 1024) and not plan_mod.wide_training(1, 16, 512)  # KP 16


def test_wide_form_weights_buffer_knobs(gpu_rules, tmp_path):
    # wide_pairs (on by default) applies only where the backward takes its wide form; a knob or a
    # plan file turns it off, and a plan file's value outside 0 / 1 is refused
    wide = gpu_rules.make_plan(1, 4096, 16, 256, 64, 64, True, CPU)
    assert wide.WIDE and wide.WIDE_PAIRS
    table = gpu_rules.make_plan(1, 4096, 16, 64, 64, 64, True, CPU)
    assert not table.WIDE and not table.WIDE_PAIRS
    gpu_rules.TUNING.update(wide_pairs=0)
    assert not gpu_rules.make_plan(1, 4096, 16, 256, 64, 64, False, CPU).WIDE_PAIRS
    gpu_rules.TUNING.update(wide_pairs=None)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"causal/fwd_bwd": {"wide_pairs": 0}}))
    gpu_rules.load_plan_file(path)
    assert not gpu_rules.make_plan(1, 4096, 16, 256, 64, 64, True, CPU).WIDE_PAIRS
    assert gpu_rules.make_plan(1, 4096, 16, 256, 64, 64, False, CPU).WIDE_PAIRS
    path.write_text(json.dumps({"causal/fwd_bwd": {"wide_pairs": 2}}))
    with pytest.raises(ValueError, match="wide_pairs"):
        gpu_rules.load_plan_file(path)
    # wide_dx16 (fp16 input-gradient products in the wide form): on by default since timed,
    # only ever in the wide form, and a knob turns it off
    assert wide.WIDE_DX16 and not table.WIDE_DX16
    gpu_rules.TUNING.update(wide_dx16=0)
    assert not gpu_rules.make_plan(1, 4096, 16, 256, 64, 64, True, CPU).WIDE_DX16
    gpu_rules.TUNING.update(wide_dx16=None)


def test_dependent_launches_only_where_the_plan_asks_and_the_gpu_has_them(gpu_rules, monkeypatch):
    # pdl 1 (the default) takes effect on a CUDA device of compute capability 9 or more with a
    # Triton that has dependent launches, never on the CPU; a knob or a plan file turns it off
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(gpu_rules, "_sm_count", lambda device: 132)
    caps = {"cap": (9, 0)}
    monkeypatch.setattr(gpu_rules.torch.cuda, "get_device_capability", lambda device: caps["cap"])
    assert gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, cuda, grad=True).PDL
    gpu_rules.TUNING["pdl"] = 0
    assert not gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, cuda, grad=False).PDL
    gpu_rules.TUNING["pdl"] = 1
    assert gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, cuda, grad=False).PDL
    assert not gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, CPU, grad=False).PDL
    caps["cap"] = (8, 0)
    gpu_rules._PLANS.clear()
    assert not gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, cuda, grad=False).PDL
    caps["cap"] = (9, 0)   # a Triton without griddepcontrol (before 3.4): none either
    monkeypatch.setattr(gpu_rules, "HAS_GDC", False)
    gpu_rules._PLANS.clear()
    assert not gpu_rules.make_plan(1, 2048, 16, 64, 64, 64, True, cuda, grad=False).PDL


def test_fused_causal_inference_prefetches_from_2_18_tokens(gpu_rules):
    # Version 2.36: asking L2 for the first rows paid at N=16384 and 131072 (B*H=16), cost
    # 0.4-0.5 us at 2048 and 4096; a knob turns it either way
    def at(B, N, H):
        return gpu_rules.make_plan(B, N, H, 64, 64, 64, True, CPU, grad=False).PREFETCH
    assert [at(1, N, 16) for N in (8192, 16384, 131072)] == [False, True, True]
    assert at(16, 1024, 16) and not at(1, 1024, 16)
    gpu_rules.TUNING["prefetch"] = 1
    assert at(1, 2048, 16)
    gpu_rules.TUNING["prefetch"] = 0
    assert not at(1, 131072, 16)


def test_causal_calls_with_few_heads_take_fewer_segments(gpu_rules, monkeypatch):
    # an H200's 132 SMs, two programs each: B * H * P ~ 264 (docs/kernels.md, Version 2.46)
    monkeypatch.setattr(gpu_rules, "_sm_count", lambda device: 132)

    def segments(N, H, causal, grad, **kw):
        return gpu_rules.make_plan(1, N, H, 64, 64, 64, causal, CPU, grad=grad, **kw).P

    # inference by the waves rule (seg_cost 0): at most 64 segments per (b, h) while that keeps a
    # segment at most 8 blocks
    gpu_rules.TUNING.update(seg_cost=0)
    assert segments(8192, 1, True, False) == 64 and segments(8192, 1, False, False) == 128
    assert segments(32768, 1, True, False) == 64 and segments(32768, 1, False, False) == 256
    assert segments(131072, 1, True, False) == 256      # 2048 blocks: 256 segments of 8
    gpu_rules.TUNING.update(seg_cost=None)
    # training: the same cap while a segment keeps at most 2 blocks
    assert segments(8192, 2, True, True) == 64 and segments(8192, 2, False, True) == 128
    assert segments(32768, 2, True, True) == 128        # 512 blocks: 64 would be 8 a segment
    # one program per SM where two would give 128 segments or more of at most 2 blocks
    assert segments(16384, 2, True, True) == 64 and segments(32768, 1, True, True) == 128
    assert segments(16384, 1, True, True) == 128 and segments(8192, 4, True, True) == 64
    assert segments(16384, 2, False, True) == 128       # bidirectional programs never wait
    # from 5 (b, h) on (at most 52 segments per head) nothing changes in training
    assert segments(131072, 16, True, True) == segments(131072, 16, False, True) == 16
    assert segments(1024, 16, True, True) == 16 and segments(2048, 8, True, True) == 32
    # float32 in tf32x3 keeps its own rows (not timed with few heads); the knobs come last
    assert segments(8192, 1, True, False, tf32x3=True) == 256
    gpu_rules.TUNING.update(max_seg=0)       # a knob of the waves rule turns the cost model off
    assert segments(8192, 1, True, False) == 128
    gpu_rules.TUNING.update(max_seg=None, segments=128)
    assert segments(8192, 2, True, True) == 128


def test_causal_inference_segments_from_the_cost_model(gpu_rules, monkeypatch):
    monkeypatch.setattr(gpu_rules, "_sm_count", lambda device: 132)
    gpu_rules.PLAN_TABLE["causal/fwd"].update(plan_mod._TUNED["causal/fwd"])   # seg_cost 1

    def plan(N, H, B=1, **kw):
        p = gpu_rules.make_plan(B, N, H, 64, 64, 64, True, CPU, grad=False, **kw)
        return p.P, p.bps

    # the plans the sweeps found fastest (docs/kernels.md, Version 2.47), where the waves rule
    # differed: one program per SM with a longer walk, or no one-block segments
    assert plan(2048, 8) == (16, 2) and plan(4096, 4) == (32, 2) and plan(8192, 4) == (32, 4)
    assert plan(4096, 1) == (32, 2) and plan(4096, 8) == (16, 4)
    # where the waves rule was the fastest it is kept, as at 16 heads from 2048 to 131072
    assert plan(2048, 1) == (32, 1) and plan(8192, 8) == (32, 4) and plan(2048, 32) == (8, 4)
    for N in (2048, 4096, 8192, 16384, 131072):
        assert plan(N, 16) == (16, N // 64 // 16)
    # batch counts as heads do; more (b, h) than two programs per SM hold: one segment each
    assert plan(4096, 4, B=2) == plan(4096, 8) and plan(8192, 1, B=300) == (1, 128)
    # the cost itself: the model's choice costs no more than any other number of segments
    cost = lambda P, nblk, bh: (gpu_rules.SEG_COST["SEG_US"] * P + gpu_rules.SEG_COST["BLOCK_US"]
                                * -(-nblk // P) * (gpu_rules.SEG_COST["SHARED_SM"] if bh * P > 132 else 1))
    for nblk, bh in [(32, 3), (128, 6), (512, 12), (2048, 1), (999, 5)]:
        P = gpu_rules._cost_segments(nblk, bh, 132)
        assert bh * P <= 264 and all(cost(P, nblk, bh) <= cost(p, nblk, bh)
                                     for p in range(1, min(nblk, 264 // bh) + 1))
    # off where it was not fitted: wide shapes, float32's tf32x3, a plan that asks for waves
    assert gpu_rules.make_plan(1, 4096, 4, 64, 64, 64, True, CPU, grad=False, tf32x3=True).P != 32
    gpu_rules.TUNING.update(waves=2)
    assert plan(4096, 4) == (64, 1)
