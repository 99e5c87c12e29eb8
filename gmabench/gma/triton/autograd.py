"""The autograd Function that ties the fused GMA kernels together (launch plans: plan.py).

Forward, bidirectional: key pass (atomic add into one KP x (DV+1) state per (b, h)) + query pass.
Forward, causal: key pass storing each segment's total + chunk walk per segment; in inference
over several segments both in one kernel (plan key fuse_fwd, causal._causal_fused_kernel).
Every program computes its head's Gaussian weights itself (no prep launch): at most two
launches per forward call. Backward: a query-side and a key-side kernel for each variant, then one tiny kernel
per head that chains the gradients of a, b, c to mu, log_sigma, mix_logits. Nothing of size
N x K is saved; saved for backward are the inputs and the float32 states (tiny). A plan with
`dl_store` (plan.py) has the backward's query side (or both sides) store its dl (N x KP float32
per (b, h), one buffer) for a pass of its own that makes the parameter sums
(common._dl_sums_kernel): a transient buffer of the backward, not saved, and with the query side
alone freed before dk and dv are allocated. With both sides storing dl, the causal query side's
per-row d and dd move into the dl buffer's first two columns once its sums are made, and their
own buffer goes before dk and dv are allocated. With `dx_pass` that pass makes dq (dk) too, and
with both sides storing dl, dk is allocated after the key side's kernel, whose buffers go first.

A shape whose kernels need more shared memory than the GPU has (KernelTooLarge: training at
D = 128 with K = 256 on an H200; docs/kernels.md) runs through
gma_chunked's PyTorch autograd instead, with a warning, and the process remembers it: a backward
that cannot launch recomputes the gradients that way, later calls of that shape skip the kernels.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.autograd.function import once_differentiable

from .bidir import _bidir_bwd_k_kernel, _bidir_bwd_q_kernel, _bidir_out_kernel, _state_kernel
from .causal import (_causal_bwd_k_kernel, _causal_bwd_q_kernel, _causal_fused_kernel,
                     _causal_out_kernel)
from .call import Call, check, fallback_key, prepare
from .common import (PRECISIONS, _dl_sums_kernel, _param_grad_kernel, _prep_weights_kernel,
                     wide_weights_len)
from .launch import KernelTooLarge
from .launch import launch as _launch
from .plan import beyond_table

# Shapes whose kernels did not fit this process's GPU: key (call.fallback_key) -> the KernelTooLarge
# message. Their calls run through gma_chunked (PyTorch) from then on.
TOO_LARGE: dict[tuple, str] = {}


def _note_too_large(key, exc: KernelTooLarge) -> None:
    if key not in TOO_LARGE:
        TOO_LARGE[key] = str(exc)
        what = "training" if key[7] else "inference"
        warnings.warn(f"gmabench: {exc}. {what.capitalize()} calls of this shape run through "
                      "gma_chunked (PyTorch autograd) in this process.", RuntimeWarning, stacklevel=4)


def fallback_note(q, v, mu, causal) -> str:
    """'' when the kernels run this shape; otherwise which calls fell back to PyTorch (for the
    `backend` field of gmabench records)."""
    head = fallback_key(q, v, mu, causal, False, None)[:7]   # all but grad and precision
    modes = sorted({"training" if key[7] else "inference" for key in TOO_LARGE if key[:7] == head})
    if not modes:
        return ""
    return f"{' and '.join(modes)} in PyTorch (gma_chunked): kernels over the GPU's shared memory"


def _pytorch(q, k, v, mu, log_sigma, mix_logits, causal, temperature, eps):
    from gmabench.gma.chunked import gma_chunked
    return gma_chunked(q, k, v, mu, log_sigma, mix_logits, causal=causal,
                       temperature=temperature, eps=eps)


def _forward(call: Call, q, k, v, mu, log_sigma, mix_logits):
    """The forward launches of a prepared call (contiguous tensors); returns the output and the
    tensors a backward needs (the inputs and the float32 state)."""
    B, N, H, D, DV, K = call.dims
    pl, grid, memo = call.plan, call.grid, call.memo
    inv_tau, eps = call.inv_tau, call.eps
    o = torch.empty_like(v)
    mix = (mu, log_sigma, mix_logits)
    if call.causal:
        if pl.P == 1:   # one segment per (b, h): no earlier segment's total is ever read
            st = mu     # a float32 placeholder: the walk reads no total (no allocation)
        else:
            st = torch.empty(B * H * pl.P * call.state_len, device=q.device, dtype=torch.float32)
        if pl.FUSE_FWD:   # inference: the key pass inside the walk's kernel
            sync = call.sync_buffer(q.device)
            _launch(_causal_fused_kernel, grid, (q, k, v, *mix, st, sync, o, N, H, K, inv_tau,
                                                 eps, pl.bps, pl.bps_key), call.fused,
                    pl.warps_fwd, pl.stages, pl.regs_fwd, memo=memo, site="fused")
            return o, (q, k, v, mu, log_sigma, mix_logits, st)
        if pl.P > 1:
            _launch(_state_kernel, grid, (k, v, *mix, st, N, H, K, inv_tau, pl.bps_key), call.state,
                    pl.warps_fwd, pl.stages_key, pl.regs_fwd, memo=memo, site="state")
        # a dependent launch only after a kernel of this call (common._gdc: a kernel reads mu,
        # log_sigma and mix_logits before it waits, which the launch before the call may write)
        _launch(_causal_out_kernel, grid, (q, k, v, *mix, st, o, N, H, K, inv_tau, eps, pl.bps),
                call.fwd, pl.warps_fwd, pl.stages, pl.regs_fwd, memo=memo, site="out",
                pdl=pl.PDL and pl.P > 1)
    else:
        # the (b, h) states, then a flag per read-out program (RAW16: bidir._bidir_out_kernel)
        st = torch.zeros(B * H * (call.state_len + pl.P), device=q.device, dtype=torch.float32)
        _launch(_state_kernel, grid, (k, v, *mix, st, N, H, K, inv_tau, pl.bps_key), call.state,
                pl.warps_fwd, pl.stages_key, pl.regs_fwd, memo=memo, site="state", pdl=pl.PDL)
        _launch(_bidir_out_kernel, grid, (q, *mix, st, o, N, H, K, inv_tau, eps, pl.bps),
                call.fwd, pl.warps_fwd, pl.stages, pl.regs_fwd, memo=memo, site="out", pdl=pl.PDL)
    return o, (q, k, v, mu, log_sigma, mix_logits, st)


class GMATritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, q, k, v, mu, log_sigma, mix_logits):
        o, saved = _forward(call, q, k, v, mu, log_sigma, mix_logits)
        ctx.save_for_backward(*saved)
        ctx.call = call
        return o

    @staticmethod
    @once_differentiable   # the kernels' gradients have no graph: a second derivative raises
    def backward(ctx, do):
        saved = ctx.saved_tensors
        call = ctx.call
        try:
            grads = _backward(call, saved, do)
        except KernelTooLarge as exc:   # recompute through PyTorch's autograd instead
            _note_too_large(call.fallback_key, exc)
            with torch.enable_grad():
                ins = [t.detach().requires_grad_() for t in saved[:6]]
                o = _pytorch(*ins, call.causal, 1.0 / call.inv_tau, call.eps)
                grads = torch.autograd.grad(o, ins, do)
        return (None, *grads)


def _backward(call: Call, saved, do):
    """The backward launches of a prepared call; returns the six gradients."""
    q, k, v, mu, log_sigma, mix_logits, st = saved
    B, N, H, D, DV, K = call.dims
    pl, grid, memo, consts = call.plan, call.grid, call.memo, call.bwd
    inv_tau, eps, bps = call.inv_tau, call.eps, pl.bps_bwd
    mix = (mu, log_sigma, mix_logits)
    do = do.to(v.dtype).contiguous()
    if do.data_ptr() % 16:   # the memoised kernels were compiled for aligned tensors
        do = do.clone()
    dq = torch.empty_like(q)
    state_len = call.state_len
    pg_len = H * pl.KP * (2 * D + 1)

    # Every kernel below follows a kernel of this call (the zero fill of pg first), so each may be
    # a programmatic dependent launch (plan key pdl; common._gdc)
    dep = pl.PDL

    def dl_sums(x, dx, aux, dl_consts, site):   # the parameter sums (dx_pass: and dx) of a side
        _launch(_dl_sums_kernel, call.dl_grid, (x, dl, pg, dx, aux, *mix, N, H, K, inv_tau,
                                                call.dl_rows), dl_consts, call.dl_warps, 3,
                memo=memo, site=site, pdl=dep)

    if call.causal:
        pg = torch.zeros(pg_len, device=q.device, dtype=torch.float32)
        aux = torch.empty(B * H * 2 * N, device=q.device, dtype=torch.float32)
        gtot = torch.empty(B * H * pl.P * state_len, device=q.device, dtype=torch.float32)
    else:
        buf = torch.zeros(B * H * state_len + pg_len, device=q.device, dtype=torch.float32)
        gbuf, pg = buf[: B * H * state_len], buf[B * H * state_len:]
    dl = torch.empty(B * H * N * pl.KP, device=q.device, dtype=torch.float32) \
        if pl.DL_STORE else pg   # (a float32 placeholder: no kernel stores through it)
    w = pg   # the wide form's logit weights, made once per head for its blocks to load
    if pl.WIDE:
        w = torch.empty(H * wide_weights_len(pl.KP, D), device=q.device, dtype=torch.float32)
        _launch(_prep_weights_kernel, (H,), (*mix, w, K, inv_tau), call.prep, 4, 1, memo=memo,
                site="prep", pdl=dep)
    gauss = (*mix, w)   # what the backward kernels read of the mixture
    if call.causal:
        _launch(_causal_bwd_q_kernel, grid, (q, k, v, do, *gauss, st, dq, aux, gtot, pg, dl, N, H,
                                             K, inv_tau, eps, bps), consts, pl.warps_bwd,
                pl.stages, pl.regs_bwd, memo=memo, site="bwd_q", pdl=dep)
    else:
        _launch(_bidir_bwd_q_kernel, grid, (q, do, *gauss, st, dq, gbuf, pg, dl, N, H, K, inv_tau,
                                            eps, bps), consts, pl.warps_bwd, pl.stages,
                pl.regs_bwd, memo=memo, site="bwd_q", pdl=dep)
    if pl.DL_STORE:
        dl_sums(q, dq, aux if call.causal else pg, call.dl_sums, "dl_q")
        if pl.DL_STORE == 1:   # summed: freed before dk and dv are allocated (plan.py)
            dl = pg
        elif call.bwd_k.get("AUXDL"):
            # the key side reads each row's d and dd from the first two columns of that row's dl
            # (AUXDL), which it overwrites after: aux is freed before dk and dv are allocated.
            # The pass moved them there where it could (AUXCP), else a copy does.
            if not call.dl_sums["AUXCP"]:
                dl.view(B * H, N, pl.KP)[:, :, :2].copy_(aux.view(B * H, 2, N).transpose(1, 2))
            aux = dl
    # dk made by the sums pass (dx_pass, both sides storing dl): allocated after the key side,
    # whose buffers go first, so that dk and the key side's dl buffer only meet in that pass
    dk_late = call.bwd_k["DXPASS"]
    dk = pg if dk_late else torch.empty_like(k)   # (a placeholder no store goes through)
    dv = torch.empty_like(v)
    if call.causal:
        _launch(_causal_bwd_k_kernel, grid, (q, k, v, do, *gauss, aux, gtot, dk, dv, pg, dl, N, H,
                                             K, inv_tau, pl.bps_bwd_k), call.bwd_k, pl.warps_bwd,
                pl.stages, pl.regs_bwd, memo=memo, site="bwd_k", pdl=dep)
    else:
        _launch(_bidir_bwd_k_kernel, grid, (k, v, *gauss, gbuf, dk, dv, pg, dl, N, H, K, inv_tau,
                                            pl.bps_bwd_k), call.bwd_k, pl.warps_bwd, pl.stages,
                pl.regs_bwd, memo=memo, site="bwd_k", pdl=dep)
    if pl.DL_STORE >= 2:
        if dk_late:
            if call.causal:
                del aux, gtot
            dk = torch.empty_like(k)
        dl_sums(k, dk, pg, call.dl_sums_k, "dl_k")
    dmu = torch.empty_like(mu)
    dls = torch.empty_like(log_sigma)
    dmix = torch.empty_like(mix_logits)
    _launch(_param_grad_kernel, (H,), (mu, log_sigma, mix_logits, pg, dmu, dls, dmix, K, inv_tau),
            call.param, 4, 3, memo=memo, site="param", pdl=dep)
    return dq, dk, dv, dmu, dls, dmix


def precision_name(dtype: torch.dtype, precision: str | None,
                   shape: tuple[int, int, int] | None = None) -> str:
    """The product precision of a call's forward kernels (common.py), unless `precision` (or,
    for 16-bit inputs, $GMA_TRITON_PRECISION) names one. float32 inputs: "tf32x3" (three tf32
    tensor-core products per matmul, about 22 bits per operand) at the tuned shapes, `shape` =
    (K, D, Dv) within plan.beyond_table's bounds; "ieee" (exact float32 products without tensor
    cores) beyond them, where tf32x3's split operands need more shared memory than an H200 block
    has (up to 458 KB at K=256; compile-time, docs/kernels.md Version 2.15) while ieee's fit at
    the wide shapes compiled both ways; at N=4096 ieee took 3-4x gma_reference's time. bfloat16
    inputs "fp16"; float16 inputs "split" (their output rounds 8x finer than bfloat16's, so fp16
    products would dominate the error: 1.9x gma_reference's instead of 1.0x). "fp16" with a
    backward to follow takes fp16 products only where the backward does not read the result, the
    output pass; the key pass's state (an fp16 state would cost the parameter gradients 2.5e-4
    instead of 1e-5) and the backward kernels run "split". Errors: docs/kernels.md."""
    if precision is None:
        if dtype == torch.float32:
            precision = "ieee" if shape is not None and beyond_table(*shape) else "tf32x3"
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

    precision: None (see precision_name), "fp16", "split", "fast", "tf32x3" or "ieee"; see
    common.py.
    """
    if torch.compiler.is_compiling():
        # Under torch.compile the call runs eagerly between the compiled graphs (a graph break):
        # its cached launchers, plans and per-signature state are host code that Dynamo cannot
        # trace with fake tensors. The disabled twin is made here, where Dynamo is loaded
        # already; made at import it would cost every caller Dynamo's import (1.8 s here).
        return torch.compiler.disable(gma_triton, recursive=True)(
            q, k, v, mu, log_sigma, mix_logits, causal=causal, temperature=temperature, eps=eps,
            precision=precision)
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        # the launches go to the current device's stream: make it the inputs' device
        with torch.cuda.device(q.device):
            return gma_triton(q, k, v, mu, log_sigma, mix_logits, causal=causal,
                              temperature=temperature, eps=eps, precision=precision)
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    tensors = (q, k, v, mu, log_sigma, mix_logits)
    if q.numel() == 0 or v.numel() == 0:   # no token (B, N or H zero): nothing to launch, and
        check(*tensors)                     # the plans divide by the tokens; shapes still checked
        return _pytorch(*tensors, bool(causal), float(temperature), float(eps))
    # Will a backward follow? Inference and training calls differ in launch plan (plan.py) and
    # in the forward's default precision.
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    shape = (mu.shape[1], q.shape[-1], v.shape[-1]) if mu.dim() == 3 else None   # else: check()
    prec = PRECISIONS[precision_name(q.dtype, precision, shape)]
    call, ready = prepare(tensors, bool(causal), float(temperature), float(eps), prec, grad)
    if call.fallback_key in TOO_LARGE:
        return _pytorch(*tensors, call.causal, float(temperature), call.eps)
    try:
        if not grad:   # no autograd node to build: the launches alone (less host time per call)
            return _forward(call, *ready)[0]
        return GMATritonFunction.apply(call, *ready)
    except KernelTooLarge as exc:
        _note_too_large(call.fallback_key, exc)
        return _pytorch(*tensors, call.causal, float(temperature), call.eps)
