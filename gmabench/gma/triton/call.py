"""What a fused-GMA call of one signature launches, worked out once and kept.

A call's checks, launch plan, compile-time constants and grid depend only on its signature: the
shapes, dtypes and device of its six tensors (and whether each is 16-byte aligned, which Triton
specialises on), the variant, temperature, eps, precision and plan. `prepare` looks the signature
up and builds a `Call` only for a new one, and each Call keeps, per launch site, the compiled kernel
its first launch used (launch.py's `memo`), so a repeated small-N call skips the Python work that
used to be the bulk of its host time (results/2026-11-29-h200-overhead-tests: 55-97 us per
forward call against 10-30 us of kernels).
"""

from __future__ import annotations

import torch
import triton

from .common import INTERPRET, PRECISIONS
from .plan import Plan, _sm_count, make_plan, padded_components

FLOAT32_PRECISIONS = (PRECISIONS["ieee"], PRECISIONS["tf32x3"])   # float32 operands throughout
_DIMS: dict[tuple, tuple] = {}     # signature -> (B, N, H, D, DV, K), once its shapes passed check
_CALLS: dict[tuple, "Call"] = {}
_CAPTURED: list = []   # every graph's fused-kernel buffer (Call.sync_buffer), for its replays


def check(q, k, v, mu, log_sigma, mix_logits):
    """(B, N, H, D, DV, K) of a call, or ValueError saying what is wrong with its shapes."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k (B,N,H,D) and v (B,N,H,Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, N, H, D = q.shape
    DV = v.shape[-1]
    if mu.dim() != 3 or mu.shape[0] != H or mu.shape[2] != D or log_sigma.shape != mu.shape:
        raise ValueError(f"expected mu, log_sigma (H,K,D) = ({H},K,{D}); got {tuple(mu.shape)}")
    K = mu.shape[1]
    if mix_logits.shape != (H, K):
        raise ValueError(f"expected mix_logits ({H},{K}); got {tuple(mix_logits.shape)}")
    if not (1 <= K <= 256):
        raise ValueError(f"K must be in 1..256, got {K}")
    for name, w in (("D", D), ("Dv", DV)):
        if w not in (16, 32, 64, 128):
            raise ValueError(f"{name} must be one of 16, 32, 64, 128; got {w}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("q, k, v must share one dtype")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {q.dtype}")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError("gma_triton needs CUDA tensors (or TRITON_INTERPRET=1 set before import)")
    return B, N, H, D, DV, K


def fallback_key(q, v, mu, causal, grad, prec) -> tuple:
    """What decides whether a call's kernels fit: device, dtype, D, Dv, KP, variant, precision."""
    return (q.device.type, q.device.index, q.dtype, q.shape[-1], v.shape[-1],
            padded_components(mu.shape[1]), bool(causal), bool(grad), prec)


def consts(dtype, D, DV, pl: Plan, prec, block=None) -> dict:
    """The compile-time constants every kernel of a call shares (`block`: the backward's)."""
    return dict(D=D, DV=DV, KP=pl.KP, BLOCK=block or pl.BLOCK, PREC=prec,
                X_EXACT=(dtype == torch.bfloat16 and prec not in FLOAT32_PRECISIONS),
                INTERP=INTERPRET, GDC=pl.PDL)


class Call:
    """Everything a call of one signature launches with. `memo` holds, per launch site, the
    compiled kernel its first launch used: valid for every later call of the signature, since
    the kernels' other arguments are fresh allocations (aligned) or fixed by the signature."""

    def __init__(self, dims, pl: Plan, dtype, causal, inv_tau, eps, prec, grad, key, sms=4):
        B, N, H, D, DV, K = dims
        self.dims, self.plan, self.causal = dims, pl, causal
        self.inv_tau, self.eps = inv_tau, eps
        self.fallback_key = key
        self.grid = (pl.P, B * H)
        self.state_len = pl.KP * (DV + 1)
        self.fwd = dict(consts(dtype, D, DV, pl, prec), RAW16=pl.RAW16)
        # causal inference in one kernel (plan key fuse_fwd): its key pass's block and pipeline
        # depth; its ticket counter and flags come from sync_buffer
        if pl.FUSE_FWD:   # (a call's first kernel: no dependent launch, no GDC)
            self.fused = {k: v for k, v in self.fwd.items() if k != "GDC"}
            self.fused.update(BLOCK_KEY=pl.BLOCK_KEY, NST_KEY=pl.stages_key, PREFETCH=pl.PREFETCH)
        self.syncs: dict = {}      # per stream (eager launches)
        self.captured: list = []   # one per CUDA graph captured (its launches hold the address)
        self.spare = None          # made zero by an eager call, for the next graph captured
        # The key pass's state is what the backward reads: before a backward it is made with
        # split products even when the output pass takes fp16 ones (the parameter gradients
        # need it).
        state_prec = PRECISIONS["split"] if grad and prec == PRECISIONS["fp16"] else prec
        self.state = dict(consts(dtype, D, DV, pl, state_prec, pl.BLOCK_KEY), ATOMIC=not causal,
                          RAW16=pl.RAW16)
        # The backward runs split where the forward took fp16 products (a forward-only mode); its
        # blocks may be smaller than the forward's, over the same segments (plan.py).
        bwd_prec = PRECISIONS["split"] if prec == PRECISIONS["fp16"] else prec
        # ...except for the products that feed dq, dk or dv alone (rounded to the input dtype):
        # fp16 ones there too (common._input_grads); in the wide form only where the plan asks
        # (wide_dx16, docs/kernels.md Version 2.38)
        dxp = (PRECISIONS["fp16"] if prec == PRECISIONS["fp16"] and (not pl.WIDE or pl.WIDE_DX16)
               else bwd_prec)
        # dl stored instead of summed in the walk (plan.py's dl_store): 1 the query side, 2 both
        # and with dx_pass, dx too of the sides that store it (made in the sums pass)
        # WIDE: 0 not wide, 1 float32 weights split per block, 2 the buffer's split pairs (they
        # serve split and single bf16 products alike; plan key wide_pairs)
        pairs = pl.WIDE_PAIRS and bwd_prec in (PRECISIONS["split"], PRECISIONS["fast"])
        wide = (2 if pairs else 1) if pl.WIDE else 0
        self.bwd = dict(consts(dtype, D, DV, pl, bwd_prec, pl.BLOCK_BWD), WIDE=wide, DXP=dxp,
                        DLST=pl.DL_STORE >= 1, DXPASS=pl.DX_PASS)   # (DX_PASS: dl stored)
        self.bwd_k = dict(self.bwd, BLOCK=pl.BLOCK_BWD_K,   # the key side's own block
                          DLST=pl.DL_STORE >= 2, DXPASS=pl.DX_PASS and pl.DL_STORE >= 2)
        if causal:   # the query side's d, dd read from the dl buffer (autograd.py)
            self.bwd_k["AUXDL"] = pl.DL_STORE >= 2 and pl.AUX_DL
        if pl.DL_STORE:
            self._dl_sums_launch(B, N, H, D, dtype, pl, bwd_prec, dxp, sms)
        self.param = dict(KP=pl.KP, D=D, GDC=pl.PDL)
        # the wide form's weights buffer (autograd.py): each tile as its blocks' products take it
        # (common._store_wide_tile), split per block where not (FMT 0)
        fmt = 1 if pairs else 0
        self.prep = dict(self.param, FMT=fmt,
                         FMT_DX=3 if pairs and dxp == PRECISIONS["fp16"] else fmt)
        self.memo: dict[str, tuple] = {}

    def sync_buffer(self, device) -> torch.Tensor:
        """The fused causal kernel's ticket counter and flags (causal._causal_fused_kernel) for
        one launch: zero when made, then kept consistent by the launches themselves (tickets run
        on from launch to launch), and used by no launch that can run at the same time, since
        tickets drawn from one counter by two launches at once would name segments of neither.
        Eager launches take their stream's buffer (launches on one stream run one after
        another); a graph being captured takes one of its own, so that graphs replayed on
        different streams share none: the spare made zero by the last eager call
        (torch.cuda.graph synchronises before it captures), else a new one, whose zero fill the
        graph then replays before the kernel."""
        n = 2 + self.dims[0] * self.dims[2] * self.plan.P
        cuda = device.type == "cuda"
        if cuda and torch.cuda.is_current_stream_capturing():
            buf, self.spare = self.spare, None
            if buf is None:
                buf = torch.zeros(n, device=device, dtype=torch.int32)
            self.captured.append(buf)
            _CAPTURED.append(buf)   # kept for the graph's replays even if clear() drops this call
            return buf
        key = torch.cuda.current_stream(device).cuda_stream if cuda else None
        buf = self.syncs.get(key)
        if buf is None:
            buf = self.syncs[key] = torch.zeros(n, device=device, dtype=torch.int32)
        if cuda and self.spare is None:
            self.spare = torch.zeros(n, device=device, dtype=torch.int32)
        return buf

    def sync_buffers(self) -> list:
        """Every ticket-and-flags buffer this call has made (tests check their consistency)."""
        return [*self.syncs.values(), *self.captured] + ([self.spare] if self.spare is not None
                                                          else [])

    def _dl_sums_launch(self, B, N, H, D, dtype, pl: Plan, prec, dxp, sms):
        """Grid and constants of the parameter sums' pass over a stored dl (common.
        _dl_sums_kernel): tiles of x's columns (DC) and rows (BLOCK) chosen so that the running
        sums (2 x KP x DC float32) and a tile of dl (BLOCK x KP) stay within 32 KB and 16 KB
        whatever KP (64 and 32 registers per thread at 4 warps); rows per program a power of two
        giving about two programs per SM, one wave, and at least 256 (at B * H = 16, D = 64, K = 64:
        8192 rows at N = 131072, where 2048 took 0.43 ms per side, 8192 0.39 and 16384 0.56;
        256 at N = 2048, where 64 took 33 us per side, 256 21-23 and 2048 83-85;
        results/2026-11-29-h200-dl-sums-grid, -dl-defaults). With dx_pass the pass makes dq
        (dk) too, on the tiles of the side's walk (its block, all of x's columns: plan.py
        allows it where KP x D <= 4096), so that its products round as the walk's would have:
        `dl_sums` for the query side, `dl_sums_k` for the key side."""
        DC = max(16, min(D, 4096 // pl.KP))
        # at most 64 rows: 4096 / KP was only timed at KP = 64 (64 rows), and at 128 and 256 rows
        # (KP = 32, 16) the GPU's Triton (3.6, sm_90a) builds the pass with 32 registers and
        # 7.1-7.5 KB of spill per thread for float32 operands and float16 inputs (bfloat16:
        # 1.1-1.2 KB), where 64 rows build without spill (docs/kernels.md, Version 2.44)
        tile = min(64, 4096 // pl.KP)
        block = pl.BLOCK_BWD if pl.DX_PASS else pl.DL_BLOCK or max(16, tile)
        auto = triton.next_power_of_2(triton.cdiv(N * B * H * (D // DC), 2 * sms))
        # powers of two: a program's rows start on a block of either side's walk
        rows = max(block, pl.BLOCK_BWD_K if pl.DX_PASS else 0, pl.DL_ROWS or max(256, auto))
        self.dl_grid = (triton.cdiv(N, rows), B * H, D // DC)
        self.dl_rows = rows
        self.dl_warps = pl.DL_WARPS or 4
        self.dl_sums = {k: v for k, v in consts(dtype, D, 0, pl, prec, block).items() if k != "DV"}
        # the causal query side's d, dd moved into the dl buffer by its pass (AUXCP) where one
        # program reads each row's whole dl; else by a copy between the passes (autograd.py)
        self.dl_sums.update(DC=DC, DXPASS=pl.DX_PASS, DXP=dxp,
                            AUXCP=bool(self.bwd_k.get("AUXDL")) and DC == D)
        self.dl_sums_k = dict(self.dl_sums, BLOCK=pl.BLOCK_BWD_K if pl.DX_PASS else block,
                              AUXCP=False)


def call_plan(B, N, H, D, DV, K, causal, device, grad, dtype, prec):
    """The launch plan of a call of these sizes, input dtype and product precision (PRECISIONS'
    code): what prepare gives it, for scripts that report the plan beside a time."""
    return make_plan(B, N, H, K, D, DV, causal, device, grad,
                     split_dx=prec == PRECISIONS["split"], f32=dtype == torch.float32,
                     tf32x3=prec == PRECISIONS["tf32x3"])


def prepare(tensors, causal, temperature, eps, prec, grad):
    """(Call, the six tensors made contiguous) for a call; ValueError for bad shapes."""
    tensors = tuple(t.contiguous() for t in tensors)
    q = tensors[0]
    sig = (q.device, *[(t.shape, t.dtype, t.data_ptr() % 16 == 0) for t in tensors])
    dims = _DIMS.get(sig)
    if dims is None:
        dims = check(*tensors)
        _DIMS[sig] = dims
    B, N, H, D, DV, K = dims
    pl = call_plan(B, N, H, D, DV, K, causal, q.device, grad, q.dtype, prec)
    key = (sig, pl, causal, temperature, eps, prec, grad)
    call = _CALLS.get(key)
    if call is None:
        if len(_CALLS) >= 4096:   # a sweep over very many shapes: start over rather than grow
            clear()
        call = Call(dims, pl, q.dtype, bool(causal), 1.0 / float(temperature), float(eps), prec,
                    grad, fallback_key(q, tensors[2], tensors[3], causal, grad, prec),
                    _sm_count(q.device))
        _CALLS[key] = call
    return call, tensors


def clear() -> None:
    _DIMS.clear()
    _CALLS.clear()
