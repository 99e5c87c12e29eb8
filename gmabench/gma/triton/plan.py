"""Launch plans for the fused GMA kernels: block size, segments, warps and pipeline stages.

A plan depends on the shape and on the variant: bidirectional or causal, and whether the call
will be differentiated ("fwd_bwd") or not ("fwd"): an inference call and a training call may
want different blocks, and the backward reuses the forward's plan (the causal backward needs the
forward's segment totals).

Three layers, the later overriding the earlier:
  1. built-in defaults (`PLAN_TABLE`) for the shapes the tuning sweep measures (K <= 64 padded,
     D, Dv <= 64), and a register-pressure rule for wider shapes;
  2. a plan file, `GMA_TRITON_PLAN=path.json` (written by `scripts/gpu_kernels.py --sections
     sweep`): {"bidir/fwd": {"block": 64, ...}, ...}, replacing table entries;
  3. `TUNING`, explicit knobs for tests and the sweep itself (None = not set).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from .common import HAS_GDC, INTERPRET

VARIANTS = ("bidir/fwd", "bidir/fwd_bwd", "causal/fwd", "causal/fwd_bwd")
# block: tokens per block (the chunk length for causal); block_bwd: the backward's block (0: the
# same), at most `block`, so that the backward's segments (bps * block / block_bwd of its blocks)
# end where the forward's do and can read their totals; block_bwd_k: the backward key side's own
# block (0: block_bwd; at most `block`); block_key: the key pass's block (0: the same; at most
# `block`, over the same segments); warps_fwd / warps_bwd: warps of the
# forward / backward kernels; stages: software-pipelining depth of the block loops, stages_key the
# key pass's own (0: `stages`; with 2 Triton issues a block's loads just before the block, with 3
# a whole block ahead: docs/kernels.md, Version 2.7); waves: target
# programs per SM (segments are chosen so that B*H*segments ~ waves * SMs); min_bps: fewest
# blocks per segment; regs_fwd: a cap on registers per thread in the forward kernels (0: the
# compiler's choice, which is 255 for all of them: two 4-warp programs per SM; 168 lets three
# run, 128 four, at the price of spills); regs_bwd: the same cap on the backward's two walks
# (with 8 backward warps, 128 lets two programs share an SM, 16 warps: 1.5-2.6x slower training
# at N=131072, results/2026-11-30-h200-bwd-cap); raw16: 1 lets the fp16 forward kernels convert q, k
# and v to float16 with no tile scale, a segment redone with scales where a check finds that
# lost precision (common.py, RAW_LOGIT_ERR; docs/kernels.md, Version 2.9), 0 always scales;
# dl_store: the backward's query side (1) or both sides (2) store dl (B*H*N*KP float32, one
# buffer) for a pass of their own (common._dl_sums_kernel) to make the parameter sums, instead
# of carrying them in registers through the walk (docs/kernels.md, Version 2.17). The query
# side's buffer is freed before dk and dv are allocated, so 1 adds to the backward's peak only
# what the buffer has beyond dk and dv (nothing at D = Dv = K = 64 in 16-bit: equal sizes;
# 63 MiB at K = 128, N = 16384, H = 16); 2 adds the whole buffer, less, causal, the query
# side's per-row d and dd, which move into it (autograd.py). dl_rows, dl_block, dl_warps: that
# pass's rows per program, rows per block and warps (0: call.py's choice). dx_pass: 1 has that
# pass make the input gradients (dq, dk) of the sides that store dl too, from the same dl, so
# that their walks end each block at the store of dl (docs/kernels.md, Versions 2.19-2.20: the
# bidirectional query side's default where it stores dl); only at the table's widths (KP x D <=
# 4096, the pass's one column tile), not wide. aux_dl: 1 (the default) has the causal key side,
# where both sides store dl, read the query side's d and dd from the dl buffer; 0 from their own
# buffer, which stays through the key side (16 MiB more at B * H * N = 2^21; kept to time one
# against the other: docs/kernels.md, Version 2.20). pdl: 1 (the default) launches every kernel
# of a call but its first as a programmatic dependent launch (Hopper and later), so that it
# starts while the kernel before it ends and waits for it only where it reads that kernel's
# results (common._gdc). Replayed from a CUDA graph on the H200 it took 2-5 us off every call
# at N=2048 and 4096 (causal forward 40.6 -> 38.3 us, causal training 193.5 -> 186.4 at 2048)
# and nothing at 131072 (results/2026-11-30-h200-pdl; docs/kernels.md, Version 2.22). With it
# the profiler's per-kernel durations overlap (a dependent kernel's includes its wait), so
# their sum is no longer a call's device time: time calls replayed. fuse_fwd: 1 has causal
# inference over several segments run the key pass and the walk in one kernel
# (causal._causal_fused_kernel: each program publishes its segment's total and waits for the
# earlier segments' before it walks), 0 launches them apart; training keeps them apart (its key
# pass takes split products, its walk fp16 ones). prefetch: 1 has the fused causal inference
# kernel ask L2 for its first rows of q, k and v before it makes its head's weights
# (common._prefetch_rows; docs/kernels.md, Version 2.36), from PREFETCH_TOKENS. wide_pairs: 1
# has the wide backward's weights buffer (common._prep_weights_kernel) hold the bf16 hi and lo
# parts of each weight where the backward takes split (or single bf16) products, so that its
# blocks load them as they are instead of splitting every weight again (docs/kernels.md,
# Version 2.37); 0 holds float32 weights, split per block (the exact twin; the same results).
# Replayed on the H200 at N=16384, B=1, H=16, bf16 training (results/2026-11-30-h200x2-wide-
# pairs): K=256, D=64 causal 14.71 -> 10.24 ms, bidirectional 6.64 -> 5.00 (means of two);
# K=128, D=128 12.68 -> 9.63 and 4.93 -> 4.57. wide_dx16: 1 (the default) has the wide form's
# products that feed dq, dk or dv alone take scaled fp16 where the table form's do (bf16 inputs in
# training; Version 2.5), their weights stored so by the weights kernel with wide_pairs; 0 keeps
# the logit weights' split products (the exact twin). Replayed on two H200s, both in one call
# (results/2026-11-30-h200x2-wide-dx16; docs/kernels.md, Version 2.38): K=256, D=64 causal
# 10.28 -> 7.76 ms, bidirectional 5.01 -> 4.24 (means of two); K=128, D=128 9.67 -> 8.87 and
# 4.59 -> 4.50. max_seg: segments per (b, h) at most, unless that leaves a segment more than
# MAX_SEG_BPS blocks (0: no cap; the rule below, for causal calls with few heads). seg_cost: 1
# has causal inference take its segments from a cost model of the fused kernel (SEG_COST,
# _cost_segments) instead of waves, min_bps and max_seg; 0 from those.
PLAN_KEYS = ("block", "block_bwd", "block_bwd_k", "block_key", "warps_fwd", "warps_bwd", "stages",
             "stages_key", "waves", "min_bps", "regs_fwd", "regs_bwd", "raw16", "dl_store",
             "dl_rows", "dl_block", "dl_warps", "dx_pass", "aux_dl", "pdl", "fuse_fwd", "prefetch",
             "wide_pairs", "wide_dx16", "max_seg", "seg_cost")
_BASE = {"block": 64, "block_bwd": 0, "block_bwd_k": 0, "block_key": 0, "warps_fwd": 8,
         "warps_bwd": 8, "stages": 2, "stages_key": 0, "waves": 2, "min_bps": 1, "regs_fwd": 0,
         "regs_bwd": 0, "raw16": 1, "dl_store": 0, "dl_rows": 0, "dl_block": 0, "dl_warps": 0,
         "dx_pass": 0, "aux_dl": 1, "pdl": 1, "fuse_fwd": 1, "prefetch": 1, "wide_pairs": 1,
         "wide_dx16": 1, "max_seg": 0, "seg_cost": 0}
# Segments: one wave of the two programs per SM that fit at once (255 registers per thread; waves
# 2, min_bps 1): with 16 heads, 16 segments per head gave every variant its lowest device time
# from N=2048 to 32768 and tied 33 at 131072 (results/2026-11-29-h200-prepared-calls/, smallplans
# and segsweep: e.g. causal fwd at 8192 111 us against 144 us with 32 segments, causal fwd_bwd at
# 2048 241 us against 327 with 8).
# Measured on an H200 (Triton 3.6), each at least 2% faster than what it replaced at N=131072, B=1,
# H=16, D=Dv=K=64, bf16. Forward: the sweep's best of the version-2 kernels
# (results/2026-11-28-h200-kernels-v2). Training: the bwdsweep of 2026-11-29
# (results/2026-11-29-h200-train-plans), with the fp16 output pass: smaller backward blocks and 4
# warps spill less (ncu: 73-88 M local-memory requests per backward kernel at block 32, 8 warps).
# Stages (results/2026-11-29-h200-stages, device time per kernel, one call): 3 for every kernel of
# the bidirectional variants and for the key pass of the causal ones (causal key pass 430 -> 367
# us, bidirectional read-out 263 -> 231, bidirectional backward key side 1756 -> 1513); the
# causal walk and the causal backward stay at 2 (3 took 4% and 3% longer). The bidirectional key
# pass walks 64-token blocks under the read-out's 128: its elementwise sum of the masses holds a
# BLOCK x KP float32 tile, which spills at 128 (results/2026-11-29-h200-masses).
# The backward's key side walks 32-token blocks under its query side's 16 (results/2026-11-29-
# h200-raw16: key side 3918 -> 3675 us causal, 1516 -> 1457 bidirectional).
# Per variant, ms at N=131072: the version-2 sweep's untuned default (do_bench) -> this table
# with the current kernels (device time, results/2026-11-29-h200-raw16).
_TUNED = {
    "bidir/fwd": {"block": 128, "block_key": 64, "warps_fwd": 4, "stages": 3},     # 1.582 -> 0.429
    "causal/fwd": {"warps_fwd": 4, "stages_key": 3, "seg_cost": 1},                # 2.787 -> 0.919
    "bidir/fwd_bwd": {"block_bwd": 16, "block_bwd_k": 32, "warps_fwd": 4, "warps_bwd": 4,
                      "stages": 3},                                                # 7.01 -> 4.13
    "causal/fwd_bwd": {"block_bwd": 16, "block_bwd_k": 32, "warps_fwd": 4, "warps_bwd": 4,
                       "stages_key": 3},                                           # 18.08 -> 8.69
}
PLAN_TABLE: dict[str, dict[str, int]] = {v: {**_BASE, **_TUNED[v]} for v in VARIANTS}
# Training at shapes wider than the tuned ones (K > 64 or D, Dv > 64). Their backward kernels need
# 148-205 KB of shared memory (the weights' operand pairs), so one program runs per SM: 8 warps
# there, and the causal backward in 16-token blocks. At K=128, D=Dv=64, N=16384 on the H200
# (results/2026-11-29-h200-wide-plans, device time): bidirectional 5.086 -> 1.357 ms with 8
# backward warps instead of 4 (16-token blocks on top: 1.560), causal 3.621 -> 2.874 ms with
# 16-token backward blocks; at compile time the same changes cut the spill at D=Dv=128, K=64 too
# (bidirectional 7288 -> 876 B per thread, causal 4012 -> 1408 B; docs/kernels.md Version 2.16).
# Their training forward takes 4 warps up to 128 components (D = Dv = 128, K = 64: the key pass
# 2.89 -> 1.29 ms at N = 131072; results/2026-11-29-h200-d128-plans), 8 at 256 (4 took 2.3 ms
# more, causal; results/2026-11-29-h200-dl-store-2). The backward stores dl for a pass of its
# own (dl_store, above): both sides at 256 components or D = 128 (D = 128, K = 64, N = 131072:
# causal 47.4 -> 28.8 ms, bidirectional 15.0 -> 11.2; K = 256, N = 16384: 33.9 -> 16.2 and
# 24.3 -> 15.8), the query side alone at K = 128 (2.90 -> 2.70 and 1.37 -> 1.28 ms, where both
# sides took 2.74 and 1.40; results/2026-11-29-h200-dl-store-2, docs/kernels.md Version 2.17).
_WIDE_TRAINING = {"bidir/fwd_bwd": {"block_bwd": 0, "warps_fwd": 4, "warps_bwd": 8},
                  "causal/fwd_bwd": {"block_bwd": 16, "warps_fwd": 4, "warps_bwd": 8}}
# ... and every wide shape the 2 stages and the one backward block they were measured with (a third
# buffer of the wider tiles can overflow shared memory, and the launcher's retry then takes 1 stage)
_WIDE_AS_MEASURED = {"stages": 2, "stages_key": 0, "block_bwd_k": 0}
# Tokens (B * H * N) from which a training call at the table's shapes stores dl. First 2^20, the
# query side's: at B * H = 16, N = 131072 it took causal training 9.12 -> 8.78 ms and
# bidirectional 4.12 -> 4.02 (results/2026-11-29-h200-dl-store-2; at N <= 16384 bidirectional
# training lost 2-5% with it then). Since the sums pass's grid rule and dependent launches
# (Versions 2.22, 2.25) stored dl pays at small N too. Replayed at B * H = 16
# (results/2026-11-30-h200-dl-small-n, docs/kernels.md Version 2.30), bf16 inputs: causal
# training, both sides storing and 32-token query blocks, 186.7 -> 171.0 us at N=2048, 321.6 ->
# 277.2 at 4096, 581.8 -> 490.1 at 8192, 1101.7 -> 912.9 at 16384; bidirectional, the query side
# storing, 32-token blocks, 165.0 -> 159.8 at 4096, 290.6 -> 275.7 at 8192, 541.0 -> 504.2 at
# 16384, and 101.4 -> 104.6 at 2048 (lost: it starts at 2^16); with dq made by the sums pass
# (dx_pass) 4.6-6.8% faster again (-dl-small-n-2, Version 2.32). Float16 inputs (split dq, dk, dv
# products; -fp16-dl, Version 2.34), both sides storing in both variants: causal 311.2 -> 248.0
# us at 2048, 2108.7 -> 1521.4 at 16384, 12.99 -> 11.75 ms at 131072 (against the query side
# alone); bidirectional 152.2 -> 132.8, 964.0 -> 690.0, 6.37 -> 5.01 ms.
DL_STORE_TOKENS_CAUSAL = 1 << 15   # (and float16 inputs in both variants)
DL_STORE_TOKENS_BIDIR = 1 << 16
DL_STORE_TOKENS_F32 = 1 << 20      # float32 in exact or split products (not timed below; the
#                                    tf32x3 default takes _TF32X3's rows instead)
# Float32 inputs in tf32x3 products at the table's shapes (docs/kernels.md Version 2.44): their
# kernels take 160-213 KB of shared memory, so one program runs per SM whatever the plan, and
# with the table's 4 warps the backward walks spilled 2-6 KB per thread. Replayed at B * H = 16,
# D = Dv = K = 64, against the table's rows in the same calls (results/2026-12-01-h200-fp32-
# plans): causal training 1099 -> 669 us at N = 2048, 8255 -> 4473 at 16384, 50.24 -> 34.47 ms
# at 131072 (16-token query blocks: with 32, 677, 4399 and 34.48, but at D = 64 and K <= 32 the
# GPU's Triton builds that query side with 32 registers and 11-13 KB of spill per thread;
# Version 2.44); bidirectional training 637 -> 484 at 4096, 2386 -> 1729 at 16384 (with dq made by
# the sums pass, dx_pass, 1940 against 1733 at 16384 and 14802 against 13202 at 131072); causal
# inference in 32-token blocks with 8 warps 238 -> 144 at 2048, 1316 -> 1016 at 16384, 10119 ->
# 7973 at 131072; bidirectional inference in 32-token blocks 93 -> 77 at 2048, 560 -> 454 at
# 16384, 4236 -> 3459 at 131072. Stored dl from every N (timed from B * H * N = 2^15 tokens)
# adds its buffer to the training peak where the rule below stored none: 267 -> 329 MiB causal
# and 258 -> 322 bidirectional at N = 16384, 2050 -> 2562 bidirectional at 131072.
_TF32X3 = {
    "bidir/fwd": {"block": 32},
    "causal/fwd": {"block": 32, "warps_fwd": 8},
    "bidir/fwd_bwd": {"warps_bwd": 8, "block_bwd": 32, "dl_store": 2, "dx_pass": 0},
    "causal/fwd_bwd": {"warps_bwd": 8, "block_bwd": 16, "block_bwd_k": 16, "dl_store": 2},
}
# The fused causal inference kernel asks L2 for its first rows (plan key prefetch) from 2^18
# tokens (B * H * N). Replayed, twice each, B=1, H=16, bf16 (Version 2.36,
# results/2026-11-30-h200-fused-start-end): 900.7-904.4 -> 886.3-889.4 us at N=131072,
# 133.9-134.2 -> 133.3-133.6 at 16384, the same at 8192, 49.9 -> 50.4 at 4096, 36.2 -> 36.6
# at 2048.
PREFETCH_TOKENS = 1 << 18
# max_seg caps the segments of a (b, h) only while a segment keeps at most this many blocks
# (inference, training): at N = 32768, H = 1, 64 segments of 8 blocks took causal inference
# 112.8 -> 70.4 us, while at 131072 the 256 of the waves rule (8 blocks) beat 64 (32 blocks),
# 168.9 against 193.1 us; training lost with more than 2 (at N = 32768, H = 2, 64 segments of 8
# blocks against 128 of 4: 469.3 against 408.6 us)
MAX_SEG_BPS = {False: 8, True: 2}
# Causal inference's segments per (b, h) at the table's widths (plan key seg_cost): a fused call
# takes about a + SEG_US * P + BLOCK_US * bps us, the second term for the sum of its head's
# earlier totals that each program makes, the third for its walk, whose blocks take SHARED_SM
# times as long where two programs share an SM. Fitted to replayed plan sweeps on the H200
# (bf16, B = 1, N = 2048-32768, H = 1-32; results/2026-12-01-h200-inference-segments,
# docs/kernels.md Version 2.47): in each of the 27 (N, H) they measured, the plan it picks
# was the fastest measured or within 0.3% of it, where the waves rule with max_seg lost up to
# 26% (N = 4096, H = 4: 42.9 against 34.1 us; 8192, H = 4: 50.8 against 44.3; 2048, H = 8: 33.5
# against 29.7). At 16 heads it picks the waves rule's segments from N = 2048 to 131072.
# Causal training, where two programs per SM would give a (b, h) TRAIN_ONE_WAVE_SEG segments or
# more of at most 2 blocks: one program per SM instead (every program of the backward sums its
# head's earlier or later totals). Replayed on the H200, bf16, B = 1 (docs/kernels.md, Version
# 2.47, results/2026-12-01-h200-inference-segments sweep-4 and -5): N = 16384, H = 2 283.1 ->
# 247.1 us (128 segments of 2 blocks -> 64 of 4); N = 32768, H = 1 385.2 -> 289.4 (256 -> 128).
# Where the two programs gave 64 segments of 2 it was level (N = 8192, H = 4: 218.8 against
# 223.4), and 32 lost (4096, H = 8: 186.1 against 217.2).
TRAIN_ONE_WAVE_SEG = 128
SEG_COST = {"SEG_US": 0.25, "BLOCK_US": 4.0, "SHARED_SM": 1.6}
PLAN_SOURCE = "built-in"

# Knobs for tests and tuning scripts: None means "decide from the table and the shape".
TUNING: dict[str, int | None] = {
    "block": None,
    "block_bwd": None,
    "block_bwd_k": None,
    "block_key": None,
    "segments": None,       # segments per (b, h), overriding waves / min_bps
    "wide": None,           # 1 / 0: force the backward's per-block weights (Plan.WIDE) on, off
    "warps_fwd": None,
    "warps_bwd": None,
    "stages": None,
    "stages_key": None,
    "waves": None,
    "min_bps": None,
    "regs_fwd": None,
    "regs_bwd": None,
    "raw16": None,
    "dl_store": None,
    "dl_rows": None,
    "dl_block": None,
    "dx_pass": None,
    "dl_warps": None,
    "aux_dl": None,
    "pdl": None,
    "fuse_fwd": None,
    "prefetch": None,
    "wide_pairs": None,
    "wide_dx16": None,
    "max_seg": None,
    "seg_cost": None,
}

_SM_COUNT: dict[int, int] = {}
_PLANS: dict[tuple, "Plan"] = {}


@dataclass(frozen=True)
class Plan:
    KP: int        # K padded to a power of two >= 16
    BLOCK: int     # tokens per block (chunk length for causal)
    P: int         # segments per (b, h); grid is (P, B*H)
    bps: int       # blocks per segment
    warps_fwd: int
    warps_bwd: int
    stages: int          # pipeline depth of the block loops
    BLOCK_BWD: int = 0   # the backward's block (a divisor of BLOCK; 0: BLOCK)
    bps_bwd: int = 0     # the backward's blocks per segment: the same segments in tokens
    WIDE: bool = False   # backward blocks load their weights (KP x D > 8192: _prep_weights_kernel)
    regs_fwd: int = 0    # register cap of the forward kernels (0: none)
    stages_key: int = 0  # pipeline depth of the key pass (the state kernel)
    BLOCK_KEY: int = 0   # the key pass's block (a divisor of BLOCK)
    bps_key: int = 0     # the key pass's blocks per segment: the same segments in tokens
    BLOCK_BWD_K: int = 0  # the backward key side's block (a divisor of BLOCK)
    bps_bwd_k: int = 0   # its blocks per segment: the same segments in tokens
    RAW16: bool = True   # fp16 forward kernels try q, k, v with no tile scale (plan key raw16)
    DL_STORE: int = 0    # backward sides that store dl for a pass to sum (plan key dl_store)
    DL_ROWS: int = 0     # that pass's rows per program, rows per block and warps (0: call.py's)
    DL_BLOCK: int = 0
    DL_WARPS: int = 0
    DX_PASS: bool = False  # the sums pass makes dq / dk of the sides that store dl (dx_pass)
    AUX_DL: bool = True  # causal, both sides storing dl: d, dd moved into its buffer (aux_dl)
    PDL: bool = False    # programmatic dependent launches (plan key pdl, where the GPU has them)
    FUSE_FWD: bool = False   # causal inference: key pass and walk in one kernel (fuse_fwd)
    regs_bwd: int = 0    # register cap of the backward's two walks (0: none)
    PREFETCH: bool = False   # the fused kernel's first rows asked of L2 at its start (prefetch)
    WIDE_PAIRS: bool = False  # WIDE: the weights buffer holds split pairs (wide_pairs)
    WIDE_DX16: bool = False   # WIDE: fp16 products for dq, dk as in the table form (wide_dx16)


def load_plan_file(path: str | os.PathLike) -> None:
    """Replace entries of PLAN_TABLE from a JSON plan file; raises ValueError on a bad file."""
    global PLAN_SOURCE
    try:
        text = Path(path).read_text()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"GMA Triton plan file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"GMA Triton plan file {path}: expected an object keyed by {VARIANTS}")
    allowed = {"block": (16, 32, 64, 128), "block_bwd": (0, 16, 32, 64, 128),
               "block_key": (0, 16, 32, 64, 128), "block_bwd_k": (0, 16, 32, 64, 128),
               "warps_fwd": (2, 4, 8, 16), "warps_bwd": (2, 4, 8, 16), "stages": (1, 2, 3, 4),
               "stages_key": (0, 1, 2, 3, 4), "regs_fwd": (0, *range(24, 256)),
               "regs_bwd": (0, *range(24, 256)), "raw16": (0, 1),
               "dl_store": (0, 1, 2), "dl_rows": (0, *(1 << i for i in range(4, 21))),
               "dl_block": (0, 16, 32, 64, 128), "dl_warps": (0, 2, 4, 8), "dx_pass": (0, 1),
               "aux_dl": (0, 1), "pdl": (0, 1), "fuse_fwd": (0, 1), "prefetch": (0, 1),
               "wide_pairs": (0, 1), "wide_dx16": (0, 1), "max_seg": range(1 << 16),
               "seg_cost": (0, 1)}
    updates = {}
    for variant, entry in data.items():
        if variant.startswith("_"):   # comments, provenance
            continue
        if variant not in VARIANTS or not isinstance(entry, dict):
            raise ValueError(f"GMA Triton plan file {path}: unknown variant {variant!r} "
                             f"(expected one of {VARIANTS})")
        for key, value in entry.items():
            # 0 (the default, or off) where the allowed values have it; waves, min_bps >= 1
            zero_ok = 0 in allowed.get(key, ())
            ok = (key in PLAN_KEYS and isinstance(value, int) and not isinstance(value, bool)
                  and value >= (0 if zero_ok else 1))
            if ok and key in allowed:
                ok = value in allowed[key]
            if not ok:
                raise ValueError(f"GMA Triton plan file {path}: {variant}.{key} = {value!r} is not "
                                 f"a valid setting")
        updates[variant] = entry
    for variant, entry in updates.items():   # all or nothing
        PLAN_TABLE[variant].update(entry)
    PLAN_SOURCE = f"{Path(path).name} sha256:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    _PLANS.clear()


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _has_pdl(device: torch.device) -> bool:
    """Programmatic dependent launch: CUDA GPUs from Hopper (compute capability 9) on, with a
    Triton that has it (3.4 and later); never under the interpreter."""
    return (device.type == "cuda" and HAS_GDC and not INTERPRET
            and torch.cuda.get_device_capability(device)[0] >= 9)


def padded_components(K: int) -> int:
    """KP: K padded to a power of two, at least 16 (padded components get zero responsibility)."""
    return max(16, triton.next_power_of_2(K))


def beyond_table(K: int, D: int, DV: int) -> bool:
    """A shape wider than the ones the table was tuned and compiled for (K padded above 64, or
    D or Dv above 64): those take the wider rule below, and float32 keeps exact products there
    (autograd.precision_name)."""
    return padded_components(K) > 64 or max(D, DV) > 64


def wide_training(K: int, D: int, DV: int) -> bool:
    """Whether the backward takes its wide form (Plan.WIDE): K padded times max(D, Dv) above
    8192, where holding the Gaussian weights through the walk would take more shared memory than
    a block has, so a kernel makes them once per head and every block loads them
    (common._prep_weights_kernel; docs/kernels.md, Versions 2.4 and 2.18)."""
    return padded_components(K) * max(D, DV) > 8192


def _segments(P: int, nblk: int) -> tuple[int, int]:
    """Segments and blocks per segment for about P segments of nblk blocks, none empty."""
    bps = triton.cdiv(nblk, max(1, min(P, nblk)))
    return triton.cdiv(nblk, bps), bps


def _cost_segments(nblk: int, bh: int, sms: int) -> int:
    """Segments per (b, h) for nblk blocks under SEG_COST, at most two programs per SM (1 when
    even one segment per (b, h) is more); of two plans that cost the same, the shorter walk."""
    best = (float("inf"), 1)
    for P in range(1, min(nblk, 2 * sms // bh) + 1):
        walk = triton.cdiv(nblk, P)
        cost = SEG_COST["SEG_US"] * P + SEG_COST["BLOCK_US"] * walk * (
            SEG_COST["SHARED_SM"] if bh * P > sms else 1.0)
        if cost <= best[0]:
            best = (cost, P)
    return best[1]


def make_plan(B: int, N: int, H: int, K: int, D: int, DV: int, causal: bool,
              device: torch.device, grad: bool = True, split_dx: bool = False,
              f32: bool = False, tf32x3: bool = False) -> Plan:
    """split_dx: the backward's dq, dk, dv products are split too (float16 inputs, or
    precision "split"), not scaled fp16 as in bf16 training; the key side then walks the query
    side's block (below). f32: float32 inputs, whose training stores dl only from
    DL_STORE_TOKENS_F32 (the small-N thresholds were measured in 16-bit). tf32x3: float32 inputs
    in tf32x3 products (their default), which take the _TF32X3 rows at the table's shapes."""
    key = (B, N, H, K, D, DV, causal, grad, split_dx, f32, tf32x3, device.type, device.index,
           tuple(TUNING.values()))
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    KP = padded_components(K)
    wide = max(D, DV)
    wide_form = bool(TUNING["wide"] if TUNING["wide"] is not None else wide_training(K, D, DV))
    variant = ("causal/" if causal else "bidir/") + ("fwd_bwd" if grad else "fwd")
    row = dict(PLAN_TABLE[variant])
    if beyond_table(K, D, DV):
        # Outside what the table was measured for: smaller blocks keep the (BLOCK, KP) and
        # (BLOCK, D) register tiles from spilling (ptxas -v on sm_90a, docs/kernels.md), and
        # training takes 8 warps per program (above).
        row["block"] = 16 if (KP >= 256 and wide >= 128) else 32
        row.update(_WIDE_TRAINING.get(variant, {}), **_WIDE_AS_MEASURED)
        if not grad and KP >= 256:
            # inference at 256 components: 8 warps (K=256, D=Dv=64, N=16384 on the H200: causal
            # 2.928 -> 0.967 ms, bidirectional 0.536 -> 0.466); at 128 the table's 4 stay (8
            # took 1.4-1.8x longer; results/2026-11-29-h200-wide-plans)
            row["warps_fwd"] = 8
        if grad and KP >= 256:
            # 256 components: the backward's shared memory is the binding limit, and 16-token
            # blocks bring D = 32 under an H200's 227 KB (compile-time: 184-216 KB against
            # 203-240 KB at 32 tokens; docs/kernels.md). The wide form's bidirectional backward
            # walks the forward's 32 since its weights buffer holds pairs and fp16 tiles (100-131
            # KB; at D = Dv = 64, N = 16384, replayed: 4.23 -> 3.32 ms; its causal one took 7.75
            # -> 8.36 so; results/2026-12-01-h200x2-bwd-blocks, docs/kernels.md Version 2.39).
            row["block_bwd"] = 0 if not causal and wide_form else 16
            row["warps_fwd"] = 8
        if grad:
            row["dl_store"] = 2 if KP >= 256 or wide >= 128 else 1
        if not grad and not causal and wide >= 128 and KP <= 64:
            # bidirectional inference at D = 128: 64-token blocks (1.386 -> 0.834 ms at K = 64,
            # N = 131072; the causal walk was slower so, results/2026-11-29-h200-d128-plans)
            row["block"] = 64
    elif grad and B * H * N >= (DL_STORE_TOKENS_F32 if f32 else DL_STORE_TOKENS_CAUSAL
                                if causal or split_dx else DL_STORE_TOKENS_BIDIR):
        # the table's shapes (thresholds above): dl stored, in bf16 calls by the query side in
        # the bidirectional variant, where it adds nothing to the peak at D = Dv = K = 64
        # (docs/kernels.md Version 2.17); with its register sums gone the query side walks
        # 32-token blocks (N=131072, device time of the call: bidirectional 3981 -> 3819 us,
        # causal 7720 -> 7619; at 2048, without dl stored, 32 took the causal call 200 -> 244 us;
        # results/2026-11-30-h200-causal-q, Version 2.19)
        if split_dx:   # (split dq, dk, dv products: not measured at 32, below)
            # float16 inputs: both sides, in their 16-token blocks; float32 inputs in split
            # precision (a twin for tests) keep the query side's, as before
            row["dl_store"] = 1 if f32 else 2
        else:
            row["block_bwd"] = 32
            # N=131072 (Version 2.20; device time of the call, against the plans before in one
            # call, results/2026-11-30-h200-auxdl): bidirectional, the query side's dq made by
            # the sums pass (3830 -> 3714 us; at 4096-16384, replayed, 4.6-6.8% faster:
            # 160.1 -> 152.8 us at 4096, 510.9 -> 476.3 at 16384, -dl-small-n-2); causal, both
            # sides storing dl (7698 -> 7073 us, peak 1049 -> 1545 MiB; dx_pass there was
            # slower: -dx-pass), with the query side's d, dd kept in the dl buffer so that the
            # peak stays under SDPA flash's at N=131072 (below 2^20 tokens the buffer adds its
            # size to the peak: 41.6 -> 57.1 MiB at N=4096, B * H = 16)
            row["dl_store"] = 2 if causal else 1
            if not causal:
                row["dx_pass"] = 1
    if grad and split_dx:
        # The key side's 32-token block was tuned with fp16 dv products; split ones there spill
        # 2000 B per thread at 32 tokens against 308 at 16 (ptxas, sm_90a), and on the H200 the
        # split form's causal fwd_bwd at N=131072 took 15.89 ms at 32, 11.65 at 16; bidirectional
        # 5.91 and 4.79 (results/2026-11-29-h200-split-plan, docs/kernels.md Version 2.12)
        row["block_bwd_k"] = 0
    if tf32x3 and not beyond_table(K, D, DV):
        row.update(_TF32X3[variant])
    elif causal and not beyond_table(K, D, DV):
        # Few heads: two programs per SM would be many segments per (b, h), and every causal
        # program sums its head's earlier (backward: later) segments' totals, one 64 x 65 tile
        # each. Replayed on the H200 at N = 8192 (bf16, B = 1; results/2026-12-01-h200-few-
        # heads, docs/kernels.md Version 2.46), 128 segments -> 64: inference 53.1 -> 40.4 us at
        # H = 1, 62.7 -> 43.7 at H = 2; training 229.4 -> 179.8 at H = 2. Fewer segments lost
        # where each walks more blocks (MAX_SEG_BPS). Only B * H <= 4 (more than 64 segments
        # per head at two programs per SM of an H200) is changed.
        row["max_seg"] = 64
    if tf32x3 or beyond_table(K, D, DV):
        row["seg_cost"] = 0   # SEG_COST was fitted at the table's widths, in 16-bit
    if B * H * N < PREFETCH_TOKENS:
        row["prefetch"] = 0
    if INTERPRET:
        row.update(block=16, block_key=0, block_bwd_k=0, min_bps=1, stages=1, stages_key=0,
                   seg_cost=0)
    knobs = {k: v for k, v in TUNING.items() if v is not None}
    if knobs.keys() & {"waves", "min_bps", "max_seg"} and "seg_cost" not in knobs:
        knobs["seg_cost"] = 0   # a knob of the waves rule asks for that rule
    row.update({k: v for k, v in knobs.items() if k in row})
    # The knobs first (a `waves` knob once came after the programs target and changed nothing);
    # the interpreter: a few segments per (b, h), so the CPU tests cross segment boundaries
    sms = _sm_count(device)
    per_head = triton.cdiv(3, B * H) if INTERPRET else row["waves"] * sms // (B * H)
    block = row["block"]
    nblk = triton.cdiv(N, block)
    if row["max_seg"]:
        per_head = min(per_head, max(row["max_seg"], nblk // MAX_SEG_BPS[grad]))
    if row["seg_cost"]:
        per_head = _cost_segments(nblk, B * H, sms)
        row["min_bps"] = 1
    # Rounded down: programs beyond a whole number of waves run as a tail after everything else
    # (17 segments x 16 heads on 264 slots took 1.55x the time of 16 at N=131072).
    P, bps = _segments(knobs.get("segments") or min(per_head, nblk // row["min_bps"]), nblk)
    if (grad and row["max_seg"] and not INTERPRET and not knobs.get("segments") and B * H * P > sms
            and P >= TRAIN_ONE_WAVE_SEG and bps <= 2):
        P, bps = _segments(sms // (B * H), nblk)
    block_bwd = min(row["block_bwd"] or block, block)    # powers of two: a divisor of block
    block_key = min(row["block_key"] or block, block)
    block_bwd_k = min(row["block_bwd_k"] or block_bwd, block)
    dx_pass = bool(row["dx_pass"] and row["dl_store"] and KP * D <= 4096 and not wide_form)
    plan = Plan(KP, block, P, bps, row["warps_fwd"], row["warps_bwd"], row["stages"], block_bwd,
                bps * (block // block_bwd), wide_form,
                row["regs_fwd"], row["stages_key"] or row["stages"], block_key,
                bps * (block // block_key), block_bwd_k, bps * (block // block_bwd_k),
                bool(row["raw16"]), int(row["dl_store"]), row["dl_rows"], row["dl_block"],
                row["dl_warps"], dx_pass, bool(row["aux_dl"]),
                bool(row["pdl"]) and _has_pdl(device),
                bool(row["fuse_fwd"]) and causal and not grad and P > 1, row["regs_bwd"],
                bool(row["prefetch"]), wide_form and bool(row["wide_pairs"]),
                wide_form and bool(row["wide_dx16"]))
    _PLANS[key] = plan
    return plan


if os.environ.get("GMA_TRITON_PLAN"):
    load_plan_file(os.environ["GMA_TRITON_PLAN"])
