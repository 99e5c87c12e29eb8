"""Launch planning and the autograd Function that ties the fused GMA kernels together.

Forward, bidirectional: key pass (atomic add into one KP x (DV+1) state per (b, h)) + query pass.
Forward, causal: key pass storing each segment's total + chunk walk per segment.
Backward: a query-side and a key-side kernel for each variant, then one tiny kernel per head that
chains the gradients of a, b, c to mu, log_sigma, mix_logits. Nothing of size N x K is stored;
saved for backward are the inputs and the float32 states (tiny).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from .bidir import _bidir_bwd_k_kernel, _bidir_bwd_q_kernel, _bidir_out_kernel, _state_kernel
from .causal import _causal_bwd_k_kernel, _causal_bwd_q_kernel, _causal_out_kernel
from .common import INTERPRET, PRECISIONS, _param_grad_kernel, _prep_kernel

# Knobs for tests and tuning scripts: None means "decide from the shape".
TUNING: dict[str, int | None] = {
    "block": None,          # tokens per block / chunk
    "segments": None,       # segments per (b, h) (programs along the sequence)
    "warps_bidir": None,
    "warps_causal": None,
    "warps_bwd": None,
    "stages": None,
    "wload": None,          # 1: weights re-read per block; 0: held in registers for the program
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
    stages: int
    wload: bool


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def make_plan(B: int, N: int, H: int, K: int, D: int, DV: int, causal: bool,
              device: torch.device) -> Plan:
    key = (B, N, H, K, D, DV, causal, device.type, device.index, tuple(TUNING.values()))
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    KP = max(16, triton.next_power_of_2(K))
    wide = max(D, DV)
    if INTERPRET:
        block, min_bps, target = 16, 1, 3
    else:
        block = 64 if (KP <= 64 and wide <= 64) else 32
        if KP >= 256 and wide >= 128:
            block = 16
        min_bps = 4
        target = 4 * _sm_count(device)
    block = TUNING["block"] or block
    nblk = triton.cdiv(N, block)
    P = TUNING["segments"] or max(1, min(triton.cdiv(target, B * H), nblk // min_bps))
    P = max(1, min(P, nblk))
    bps = triton.cdiv(nblk, P)
    P = triton.cdiv(nblk, bps)  # no empty segment
    # 8 warps: at 4 the register tiles of a 64-token block spill (ptxas -v on sm_90a, see
    # docs/kernels.md); the interpreter ignores it.
    if causal:
        wf = TUNING["warps_causal"] or 8
    else:
        wf = TUNING["warps_bidir"] or 8
    wb = TUNING["warps_bwd"] or 8
    stages = TUNING["stages"] or (1 if INTERPRET else 2)
    wload = bool(TUNING["wload"])  # default 0: no fewer spills seen with 1 (docs/kernels.md)
    plan = Plan(KP, block, P, bps, wf, wb, stages, wload)
    _PLANS[key] = plan
    return plan


def _check(q, k, v, mu, log_sigma, mix_logits):
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


def _launch(kernel, grid, args, consts, warps, stages):
    try:
        kernel[grid](*args, **consts, num_warps=warps, num_stages=stages)
    except triton.runtime.errors.OutOfResources:
        if stages == 1:
            raise
        kernel[grid](*args, **consts, num_warps=warps, num_stages=1)


class GMATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps, prec):
        B, N, H, D, DV, K = _check(q, k, v, mu, log_sigma, mix_logits)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        mu, log_sigma, mix_logits = mu.contiguous(), log_sigma.contiguous(), mix_logits.contiguous()
        pl = make_plan(B, N, H, K, D, DV, causal, q.device)
        inv_tau = 1.0 / float(temperature)
        consts = dict(D=D, DV=DV, KP=pl.KP, BLOCK=pl.BLOCK, PREC=prec,
                      X_EXACT=(q.dtype == torch.bfloat16 and prec != 2), INTERP=INTERPRET,
                      WLOAD=pl.wload)
        grid = (pl.P, B * H)
        o = torch.empty_like(v)
        w = torch.empty(H * 8 * pl.KP * D, device=q.device,
                        dtype=torch.float32 if prec == 2 else torch.bfloat16)
        c2 = torch.empty(H * pl.KP, device=q.device, dtype=torch.float32)
        _prep_kernel[(H,)](mu, log_sigma, mix_logits, w, c2, K, inv_tau, KP=pl.KP, D=D, PREC=prec,
                           num_warps=4)
        state_len = pl.KP * (DV + 1)
        if causal:
            st = torch.empty(B * H * pl.P * state_len, device=q.device, dtype=torch.float32)
            _launch(_state_kernel, grid, (k, v, w, c2, st, N, H, pl.bps),
                    dict(consts, ATOMIC=False), pl.warps_fwd, pl.stages)
            _launch(_causal_out_kernel, grid, (q, k, v, w, c2, st, o, N, H, float(eps), pl.bps),
                    consts, pl.warps_fwd, pl.stages)
        else:
            st = torch.zeros(B * H * state_len, device=q.device, dtype=torch.float32)
            _launch(_state_kernel, grid, (k, v, w, c2, st, N, H, pl.bps),
                    dict(consts, ATOMIC=True), pl.warps_fwd, pl.stages)
            _launch(_bidir_out_kernel, grid, (q, w, c2, st, o, N, H, float(eps), pl.bps),
                    consts, pl.warps_fwd, pl.stages)
        ctx.save_for_backward(q, k, v, mu, log_sigma, mix_logits, st, w, c2)
        ctx.cfg = (causal, inv_tau, float(eps), pl, consts, (B, N, H, D, DV, K))
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, mu, log_sigma, mix_logits, st, w, c2 = ctx.saved_tensors
        causal, inv_tau, eps, pl, consts, (B, N, H, D, DV, K) = ctx.cfg
        do = do.to(v.dtype).contiguous()
        grid = (pl.P, B * H)
        dq = torch.empty_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        state_len = pl.KP * (DV + 1)
        pg_len = H * pl.KP * (2 * D + 1)
        if causal:
            pg = torch.zeros(pg_len, device=q.device, dtype=torch.float32)
            aux = torch.empty(B * H * 2 * N, device=q.device, dtype=torch.float32)
            gtot = torch.empty(B * H * pl.P * state_len, device=q.device, dtype=torch.float32)
            _launch(_causal_bwd_q_kernel, grid, (q, k, v, do, w, c2, st, dq, aux, gtot, pg, N, H,
                                                 eps, pl.bps), consts, pl.warps_bwd, pl.stages)
            _launch(_causal_bwd_k_kernel, grid, (q, k, v, do, w, c2, aux, gtot, dk, dv, pg, N, H,
                                                 pl.bps), consts, pl.warps_bwd, pl.stages)
        else:
            buf = torch.zeros(B * H * state_len + pg_len, device=q.device, dtype=torch.float32)
            gbuf, pg = buf[: B * H * state_len], buf[B * H * state_len:]
            _launch(_bidir_bwd_q_kernel, grid, (q, do, w, c2, st, dq, gbuf, pg, N, H, eps, pl.bps),
                    consts, pl.warps_bwd, pl.stages)
            _launch(_bidir_bwd_k_kernel, grid, (k, v, w, c2, gbuf, dk, dv, pg, N, H, pl.bps),
                    consts, pl.warps_bwd, pl.stages)
        dmu = torch.empty_like(mu)
        dls = torch.empty_like(log_sigma)
        dmix = torch.empty_like(mix_logits)
        _param_grad_kernel[(H,)](mu, log_sigma, mix_logits, pg, dmu, dls, dmix, K, inv_tau,
                                 KP=pl.KP, D=D, num_warps=4)
        return dq, dk, dv, dmu, dls, dmix, None, None, None, None


def resolve_precision(dtype: torch.dtype, precision: str | None) -> int:
    if precision is None:
        if dtype == torch.float32:
            precision = "ieee"
        else:
            precision = os.environ.get("GMA_TRITON_PRECISION", "split")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def gma_triton(q, k, v, mu, log_sigma, mix_logits, *, causal: bool = False,
               temperature: float = 1.0, eps: float = 1e-6, precision: str | None = None):
    """Fused GMA (see SPEC-gma.md): q, k (B,N,H,D), v (B,N,H,Dv), mu, log_sigma (H,K,D),
    mix_logits (H,K) -> (B,N,H,Dv) in v's dtype. Differentiable in all six tensors.

    precision: None (float32 inputs: "ieee"; 16-bit inputs: "split", or $GMA_TRITON_PRECISION),
    "split", "fast" or "ieee"; see common.py.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    prec = resolve_precision(q.dtype, precision)
    return GMATritonFunction.apply(q, k, v, mu, log_sigma, mix_logits, bool(causal),
                                   float(temperature), float(eps), prec)
