"""The autograd Function that ties the fused GMA kernels together (launch plans: plan.py).

Forward, bidirectional: key pass (atomic add into one KP x (DV+1) state per (b, h)) + query pass.
Forward, causal: key pass storing each segment's total + chunk walk per segment.
Every program computes its head's Gaussian weights itself (no prep launch): two launches per
forward call. Backward: a query-side and a key-side kernel for each variant, then one tiny kernel
per head that chains the gradients of a, b, c to mu, log_sigma, mix_logits. Nothing of size
N x K is stored; saved for backward are the inputs and the float32 states (tiny).

A shape whose kernels need more shared memory than the GPU has (KernelTooLarge: training at
D = 128 with K = 256 on an H200; docs/kernels.md) runs through
gma_chunked's PyTorch autograd instead, with a warning, and the process remembers it: a backward
that cannot launch recomputes the gradients that way, later calls of that shape skip the kernels.
"""

from __future__ import annotations

import os
import warnings

import torch

from .bidir import _bidir_bwd_k_kernel, _bidir_bwd_q_kernel, _bidir_out_kernel, _state_kernel
from .causal import _causal_bwd_k_kernel, _causal_bwd_q_kernel, _causal_out_kernel
from .common import INTERPRET, PRECISIONS, _param_grad_kernel
from .launch import KernelTooLarge
from .launch import launch as _launch
from .plan import make_plan, padded_components

# Shapes whose kernels did not fit this process's GPU: key (_fallback_key) -> the KernelTooLarge
# message. Their calls run through gma_chunked (PyTorch) from then on.
TOO_LARGE: dict[tuple, str] = {}


def _fallback_key(q, v, mu, causal, grad, prec) -> tuple:
    """What decides whether a call's kernels fit: device, dtype, D, Dv, KP, variant, precision."""
    return (q.device.type, q.device.index, q.dtype, q.shape[-1], v.shape[-1],
            padded_components(mu.shape[1]), bool(causal), bool(grad), prec)


def _note_too_large(key, exc: KernelTooLarge) -> None:
    if key not in TOO_LARGE:
        TOO_LARGE[key] = str(exc)
        what = "training" if key[7] else "inference"
        warnings.warn(f"gmabench: {exc}. {what.capitalize()} calls of this shape run through "
                      "gma_chunked (PyTorch autograd) in this process.", RuntimeWarning, stacklevel=4)


def fallback_note(q, v, mu, causal) -> str:
    """'' when the kernels run this shape; otherwise which calls fell back to PyTorch (for the
    `backend` field of gmabench records)."""
    head = _fallback_key(q, v, mu, causal, False, None)[:7]   # all but grad and precision
    modes = sorted({"training" if key[7] else "inference" for key in TOO_LARGE if key[:7] == head})
    if not modes:
        return ""
    return f"{' and '.join(modes)} in PyTorch (gma_chunked): kernels over the GPU's shared memory"


def _pytorch(q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps):
    from gmabench.gma.chunked import gma_chunked
    return gma_chunked(q, k, v, mu, log_sigma, mix_logits, causal=causal,
                       temperature=temperature, eps=eps)


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


def _consts(dtype, D, DV, pl, prec, block=None):
    """The compile-time constants every kernel of a call shares (`block`: the backward's)."""
    return dict(D=D, DV=DV, KP=pl.KP, BLOCK=block or pl.BLOCK, PREC=prec,
                X_EXACT=(dtype == torch.bfloat16 and prec != PRECISIONS["ieee"]), INTERP=INTERPRET)


def _forward(q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps, prec, grad):
    """The forward launches; returns the output and what a backward needs (contiguous inputs,
    the float32 state, the call's configuration)."""
    B, N, H, D, DV, K = _check(q, k, v, mu, log_sigma, mix_logits)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    mu, log_sigma, mix_logits = mu.contiguous(), log_sigma.contiguous(), mix_logits.contiguous()
    pl = make_plan(B, N, H, K, D, DV, causal, q.device, grad)
    inv_tau = 1.0 / float(temperature)
    consts = _consts(q.dtype, D, DV, pl, prec)
    # The key pass's state is what the backward reads: before a backward it is made with split
    # products even when the output pass takes fp16 ones (the parameter gradients need it).
    st_consts = consts
    if grad and prec == PRECISIONS["fp16"]:
        st_consts = _consts(q.dtype, D, DV, pl, PRECISIONS["split"])
    grid = (pl.P, B * H)
    o = torch.empty_like(v)
    mix = (mu, log_sigma, mix_logits)
    state_len = pl.KP * (DV + 1)
    if causal:
        if pl.P == 1:   # one segment per (b, h): no earlier segment's total is ever read
            st = mu     # a float32 placeholder: the walk reads no total (no allocation)
        else:
            st = torch.empty(B * H * pl.P * state_len, device=q.device, dtype=torch.float32)
            _launch(_state_kernel, grid, (k, v, *mix, st, N, H, K, inv_tau, pl.bps),
                    dict(st_consts, ATOMIC=False), pl.warps_fwd, pl.stages, pl.regs_fwd)
        _launch(_causal_out_kernel, grid,
                (q, k, v, *mix, st, o, N, H, K, inv_tau, float(eps), pl.bps), consts,
                pl.warps_fwd, pl.stages, pl.regs_fwd)
    else:
        st = torch.zeros(B * H * state_len, device=q.device, dtype=torch.float32)
        _launch(_state_kernel, grid, (k, v, *mix, st, N, H, K, inv_tau, pl.bps),
                dict(st_consts, ATOMIC=True), pl.warps_fwd, pl.stages, pl.regs_fwd)
        _launch(_bidir_out_kernel, grid, (q, *mix, st, o, N, H, K, inv_tau, float(eps), pl.bps),
                consts, pl.warps_fwd, pl.stages, pl.regs_fwd)
    saved = (q, k, v, mu, log_sigma, mix_logits, st)
    return o, saved, (causal, inv_tau, float(eps), pl, prec, (B, N, H, D, DV, K))


class GMATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps, prec, grad):
        o, saved, cfg = _forward(q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps,
                                 prec, grad)
        ctx.save_for_backward(*saved)
        ctx.cfg = cfg
        ctx.key = _fallback_key(q, v, mu, causal, grad, prec)
        return o

    @staticmethod
    def backward(ctx, do):
        saved = ctx.saved_tensors
        try:
            grads = _backward(saved, ctx.cfg, do)
        except KernelTooLarge as exc:   # recompute through PyTorch's autograd instead
            _note_too_large(ctx.key, exc)
            causal, inv_tau, eps = ctx.cfg[:3]
            with torch.enable_grad():
                ins = [t.detach().requires_grad_() for t in saved[:6]]
                o = _pytorch(*ins, causal, 1.0 / inv_tau, eps)
                grads = torch.autograd.grad(o, ins, do)
        return (*grads, None, None, None, None, None)


def _backward(saved, cfg, do):
    """The backward launches; returns the six gradients."""
    q, k, v, mu, log_sigma, mix_logits, st = saved
    causal, inv_tau, eps, pl, prec, (B, N, H, D, DV, K) = cfg
    if prec == PRECISIONS["fp16"]:   # a forward-only mode: the backward runs split
        prec = PRECISIONS["split"]
    # The backward's blocks may be smaller than the forward's (plan.py: less register pressure);
    # its segments are the forward's, so it reads the forward's segment totals.
    consts = dict(_consts(q.dtype, D, DV, pl, prec, pl.BLOCK_BWD), WIDE=pl.WIDE)
    bps = pl.bps_bwd
    mix = (mu, log_sigma, mix_logits)
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
        _launch(_causal_bwd_q_kernel, grid, (q, k, v, do, *mix, st, dq, aux, gtot, pg, N, H, K,
                                             inv_tau, eps, bps), consts, pl.warps_bwd, pl.stages)
        _launch(_causal_bwd_k_kernel, grid, (q, k, v, do, *mix, aux, gtot, dk, dv, pg, N, H, K,
                                             inv_tau, bps), consts, pl.warps_bwd, pl.stages)
    else:
        buf = torch.zeros(B * H * state_len + pg_len, device=q.device, dtype=torch.float32)
        gbuf, pg = buf[: B * H * state_len], buf[B * H * state_len:]
        _launch(_bidir_bwd_q_kernel, grid, (q, do, *mix, st, dq, gbuf, pg, N, H, K, inv_tau, eps,
                                            bps), consts, pl.warps_bwd, pl.stages)
        _launch(_bidir_bwd_k_kernel, grid, (k, v, *mix, gbuf, dk, dv, pg, N, H, K, inv_tau, bps),
                consts, pl.warps_bwd, pl.stages)
    dmu = torch.empty_like(mu)
    dls = torch.empty_like(log_sigma)
    dmix = torch.empty_like(mix_logits)
    _launch(_param_grad_kernel, (H,), (mu, log_sigma, mix_logits, pg, dmu, dls, dmix, K, inv_tau),
            dict(KP=pl.KP, D=D), 4, 3)
    return dq, dk, dv, dmu, dls, dmix


def precision_name(dtype: torch.dtype, precision: str | None) -> str:
    """The product precision of a call's forward kernels (common.py), unless `precision` or
    $GMA_TRITON_PRECISION names one: float32 inputs "ieee"; bfloat16 inputs "fp16"; float16
    inputs "split" (their output rounds 8x finer than bfloat16's, so fp16 products would dominate
    the error: 1.9x gma_reference's instead of 1.0x). "fp16" with a backward to follow takes fp16
    products only where the backward does not read the result, the output pass; the key pass's
    state (an fp16 state would cost the parameter gradients 2.5e-4 instead of 1e-5) and the
    backward kernels run "split". Errors: docs/kernels.md."""
    if precision is None:
        if dtype == torch.float32:
            precision = "ieee"
        else:
            auto = "fp16" if dtype == torch.bfloat16 else "split"
            precision = os.environ.get("GMA_TRITON_PRECISION", auto)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision


def gma_triton(q, k, v, mu, log_sigma, mix_logits, *, causal: bool = False,
               temperature: float = 1.0, eps: float = 1e-6, precision: str | None = None):
    """Fused GMA (see SPEC-gma.md): q, k (B,N,H,D), v (B,N,H,Dv), mu, log_sigma (H,K,D),
    mix_logits (H,K) -> (B,N,H,Dv) in v's dtype. Differentiable in all six tensors.

    precision: None (see precision_name), "fp16", "split", "fast" or "ieee"; see common.py.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    tensors = (q, k, v, mu, log_sigma, mix_logits)
    # Will a backward follow? Inference and training calls differ in launch plan (plan.py) and
    # in the forward's default precision.
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    prec = PRECISIONS[precision_name(q.dtype, precision)]
    cfg = (bool(causal), float(temperature), float(eps))
    key = _fallback_key(q, v, mu, causal, grad, prec)
    if key in TOO_LARGE:
        return _pytorch(*tensors, *cfg)
    try:
        if not grad:   # no autograd node to build: the launches alone (less host time per call)
            return _forward(*tensors, *cfg, prec, False)[0]
        return GMATritonFunction.apply(*tensors, *cfg, prec, grad)
    except KernelTooLarge as exc:
        _note_too_large(key, exc)
        return _pytorch(*tensors, *cfg)
