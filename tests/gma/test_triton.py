"""The fused Triton GMA kernels against the float64 SPEC formula: output and all six gradients.

Without a GPU the kernels run under Triton's interpreter on small shapes (TRITON_INTERPRET=1 is
set here before gmabench.gma.triton is imported; if another test imported it first without the
variable, its modules are reloaded). With a GPU, `test_gpu_real_sizes` checks real sizes.

Criterion (SPEC): ||x - ref|| / ||ref|| <= 2 * (the same error of gma_reference on the same
inputs) + floor, for the output and every gradient (||x|| <= floor where ref is exactly zero);
ref is gma_spec_float64 on float64 copies of the inputs, so its gradients stay float64.
"""

from __future__ import annotations

import importlib
import math
import os
import sys

import pytest
import torch

_ON_GPU = torch.cuda.is_available()
if not _ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
    _common = sys.modules.get("gmabench.gma.triton.common")
    if _common is not None and not _common.INTERPRET:  # imported earlier without the variable
        for _name in ("common", "plan", "bidir", "causal", "autograd"):
            importlib.reload(sys.modules[f"gmabench.gma.triton.{_name}"])
        importlib.reload(sys.modules["gmabench.gma.triton"])

pytest.importorskip("triton")

from gmabench.gma.reference import gma_reference, gma_spec_float64  # noqa: E402
from gmabench.gma.triton import TUNING, gma_triton, make_plan  # noqa: E402

DEVICE = "cuda" if _ON_GPU else "cpu"
NAMES = ("o", "q", "k", "v", "mu", "log_sigma", "mix_logits")


def _inputs(B, N, H, D, Dv, K, dtype, seed, scale=0.5, device=DEVICE):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=scale):
        return torch.randn(*shape, generator=g) * s

    acts = [rnd(B, N, H, D), rnd(B, N, H, D), rnd(B, N, H, Dv)]
    params = [rnd(H, K, D, s=0.5), rnd(H, K, D, s=0.1), rnd(H, K, s=0.5)]
    acts = [t.to(device=device, dtype=dtype) for t in acts]
    params = [t.to(device=device) for t in params]
    return [t.requires_grad_() for t in acts + params]


def _launches_completed(buf) -> int | None:
    """Whole launches the fused causal kernel made with this ticket-and-flags buffer: its 64-bit
    ticket counter a multiple of the programs a launch, and every flag the last launch's mark
    (0 before any); None when the buffer is not in that state."""
    total = buf.numel() - 2
    launches, rest = divmod(int(buf[:2].view(torch.int64)), total)
    mark = 0 if launches == 0 else (launches - 1) % 2**30 + 1
    return launches if rest == 0 and bool((buf[2:] == mark).all()) else None


def _rel(x, ref):
    """||x - ref|| / ||ref||; where ref is exactly zero (K=1: every responsibility is 1, so the
    gradients of q, k and the mixture are zero in exact arithmetic), ||x|| itself, which the
    criterion's floor then bounds."""
    norm = ref.norm()
    if norm == 0:
        return x.double().norm().item()
    return ((x.double() - ref).norm() / norm).item()


def _run(fn, ins, do, **kw):
    o = fn(*ins, **kw)
    grads = torch.autograd.grad(o, ins, do)
    return [o.detach()] + [g_.detach() for g_ in grads]


@pytest.fixture
def launched(monkeypatch):
    """The constants of a call's kernel launches, by site ("out", "bwd_q", "dl_q", ...): the
    last launch at each site since the dict was last cleared."""
    from gmabench.gma.triton import autograd
    seen = {}
    real = autograd._launch

    def spy(kernel, grid, args, consts, *a, **kw):
        seen[kw.get("site")] = dict(consts)
        return real(kernel, grid, args, consts, *a, **kw)

    monkeypatch.setattr(autograd, "_launch", spy)
    return seen


def _errors(B, N, H, D, Dv, K, dtype, causal, seed=0, temperature=1.0, precision=None):
    ins = _inputs(B, N, H, D, Dv, K, dtype, seed)
    kw = dict(causal=causal, temperature=temperature)
    do = torch.randn(B, N, H, Dv, generator=torch.Generator().manual_seed(seed + 1))
    do = (do * 0.5).to(device=ins[0].device, dtype=dtype)
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    ref = _run(gma_spec_float64, ins64, do.double(), **kw)
    base = _run(gma_reference, ins, do, **kw)
    fast = _run(lambda *a, **k: gma_triton(*a, precision=precision, **k), ins, do, **kw)
    for name, x, r, like in zip(NAMES, fast, ref, [ins[2]] + ins):
        assert x.shape == r.shape and x.dtype == like.dtype, name
    return ({n: _rel(x, r) for n, x, r in zip(NAMES, fast, ref)},
            {n: _rel(x, r) for n, x, r in zip(NAMES, base, ref)})


def _floor(dtype, name):
    if dtype == torch.float32:
        return 1e-5
    # 16-bit inputs: the gradients of the float32 parameters come out of the kernels' split-bf16
    # products (about 16 bits per operand) while gma_reference computes them in plain float32.
    return 5e-5 if name in ("mu", "log_sigma", "mix_logits") else 1e-4


def _assert_spec(errs, base, dtype):
    for name in errs:
        bound = 2.0 * base[name] + _floor(dtype, name)
        assert errs[name] <= bound, f"{name}: error {errs[name]:.3g} > bound {bound:.3g} " \
                                    f"(gma_reference: {base[name]:.3g})"


# N=37 with 16-token blocks: 3 blocks, a masked tail, and several segments per (b, h).
CASES = [
    # B, N, H, D, Dv, K, temperature
    pytest.param(2, 37, 2, 16, 32, 5, 0.8, id="B2-N37-H2-D16-Dv32-K5-tau0.8"),
    pytest.param(1, 1, 1, 32, 16, 3, 1.0, id="N1"),
    pytest.param(1, 50, 1, 16, 16, 1, 1.0, id="K1"),
    pytest.param(1, 64, 2, 32, 32, 20, 1.3, id="K20-Nfull-blocks"),
]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("B,N,H,D,Dv,K,tau", CASES)
def test_float32_matches_spec(B, N, H, D, Dv, K, tau, causal):
    errs, base = _errors(B, N, H, D, Dv, K, torch.float32, causal, temperature=tau)
    if N == 1:
        # o = v * x / (x + eps) with x = r_q.r_k: every gradient but dv is O(eps), so relative
        # errors of those are rounding noise for any implementation; check o and dv only.
        errs = {n: errs[n] for n in ("o", "v")}
    _assert_spec(errs, base, torch.float32)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_inputs_match_spec(dtype, causal):
    errs, base = _errors(2, 45, 2, 32, 16, 12, dtype, causal, seed=3)
    _assert_spec(errs, base, dtype)


def _forward_errors(ins, causal, temperature=1.0, precision=None):
    """Forward-only (inference) relative errors of the kernels and of gma_reference vs float64."""
    kw = dict(causal=causal, temperature=temperature)
    with torch.no_grad():
        ref = gma_spec_float64(*[t.double() for t in ins], **kw)
        base = gma_reference(*ins, **kw)
        out = gma_triton(*ins, precision=precision, **kw)
    assert torch.isfinite(out).all()
    return _rel(out, ref), _rel(base, ref)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype,precision", [(torch.bfloat16, None), (torch.bfloat16, "fp16"),
                                             (torch.float16, "fp16"), (torch.float16, None)],
                         ids=["bf16-default", "bf16-fp16", "fp16-fp16", "fp16-default"])
def test_inference_forward_meets_spec(dtype, precision, causal):
    # No gradient needed: bf16 inputs take the scaled-fp16 products by default (common.py).
    ins = _inputs(2, 45, 2, 32, 16, 12, dtype, seed=23)
    err, base = _forward_errors(ins, causal, precision=precision)
    assert err <= 2 * base + _floor(dtype, "o"), (err, base)
    if dtype == torch.bfloat16:   # bf16 output rounding dominates: within 10% of the reference
        assert err <= 1.1 * base, (err, base)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("q_scale,k_scale,mu_scale", [(1200.0, 1200.0, 600.0), (1e-3, 1200.0, 1.0)],
                         ids=["large", "unlike"])
def test_fp16_products_are_scaled_into_range(causal, q_scale, k_scale, mu_scale):
    # x*x = 3.6e5 and v = 1e6 overflow float16 (max 65504) unless scaled; sigma ~ 0.05 and
    # temperature 0.1 push the logit weights past it too. "unlike": q, k and v of very different
    # ranges; the key pass takes k's and v's scales from one shared reduction, and each tile
    # must get its own (k scaled by v's 2^21 loses its squares to float16's subnormals).
    ins = _inputs(1, 40, 2, 16, 16, 5, torch.bfloat16, seed=29)
    with torch.no_grad():
        ins[0].mul_(q_scale)
        ins[1].mul_(k_scale)
        ins[2].mul_(2e6)
        ins[3].mul_(mu_scale)
        ins[4].sub_(3.0)
    for temperature in (1.0, 0.1):
        err, base = _forward_errors(ins, causal, temperature=temperature, precision="fp16")
        assert err <= 2 * base + 1e-4, (temperature, err, base)


def _raw_and_scaled(ins, causal):
    """The inference forward with raw float16 (plan key raw16, the default) and with tile scales."""
    outs = {}
    try:
        for raw in (1, 0):
            TUNING.update(raw16=raw)
            with torch.no_grad():
                outs[raw] = gma_triton(*ins, causal=causal)
    finally:
        TUNING.update(raw16=None)
    return outs[1], outs[0]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_raw_float16_matches_its_scaled_twin(causal):
    # One element of 100 in every 16 rows of q and k: a scaled tile then divides the whole tile by
    # 128, which puts the squares of its ordinary elements among float16's subnormals; the raw
    # form keeps them exact. So the two differ (the raw form ran), and both stay within 1.1x of
    # gma_reference's error (the bf16 output's rounding dominates either).
    ins = _inputs(1, 100, 2, 32, 32, 12, torch.bfloat16, seed=7)
    with torch.no_grad():
        ins[0][0, 5::16, :, 0] = 100.0
        ins[1][0, 3::16, :, 1] = -100.0
    raw, scaled = _raw_and_scaled(ins, causal)
    with torch.no_grad():
        ref = gma_spec_float64(*[t.double() for t in ins], causal=causal)
        base = _rel(gma_reference(*ins, causal=causal), ref)
    assert _rel(raw, scaled.double()) > 1e-4
    for out in (raw, scaled):
        assert _rel(out, ref) <= 1.1 * base


def _overflow_q(ins, causal):
    ins[0][0, 7].fill_(-1000.0)       # x*x = 1e6: float16 overflows (a token of every head)
    if not causal:                    # the bidirectional key pass sees only k
        ins[1][0, 9].fill_(1000.0)


def _overflow_k(ins, causal):
    ins[1][0, 9].fill_(1000.0)
    if not causal:
        ins[0][0, 7].fill_(-1000.0)


def _overflow_v(ins, causal):
    ins[2][0, 11].fill_(1.0e5)        # over float16's 65504
    if not causal:                    # the bidirectional read-out sees only q
        ins[0][0, 7].fill_(-1000.0)


def _tiny_scale(ins, causal):
    # the whole problem scaled down 1000 times (the same responsibilities): x*x ~ 1e-7 lies
    # among float16's subnormals and 1/sigma^2 ~ 1e6 would carry their rounding into the logits
    for i in (0, 1, 3):
        ins[i].mul_(1e-3)
    ins[4].sub_(math.log(1e3))


def _tiny_v(ins, causal):
    ins[2].mul_(1e-6)                 # v among float16's subnormals
    if not causal:
        ins[0][0, 7].fill_(-1000.0)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("spoil", [_overflow_q, _overflow_k, _overflow_v, _tiny_scale, _tiny_v],
                         ids=["q-overflow", "k-overflow", "v-overflow", "tiny-scale", "tiny-v"])
def test_raw_float16_falls_back_to_the_scaled_form(causal, spoil):
    # One segment per (b, h), and every program spoiled: each kernel redoes its walk with tile
    # scales, so the output is the scaled form's bit for bit.
    ins = _inputs(1, 100, 2, 32, 32, 12, torch.bfloat16, seed=7)
    with torch.no_grad():
        spoil(ins, causal)
    TUNING.update(segments=1)
    try:
        raw, scaled = _raw_and_scaled(ins, causal)
    finally:
        TUNING.update(segments=None)
    assert torch.isfinite(raw).all()
    assert torch.equal(raw, scaled)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_fp16_precision_with_a_backward_meets_spec(causal):
    # precision="fp16" in a training call: fp16 products in the output pass only; the key pass's
    # state (read by the backward) and the backward run split, so every gradient meets the SPEC.
    errs, base = _errors(2, 45, 2, 32, 16, 12, torch.bfloat16, causal, seed=3, precision="fp16")
    _assert_spec(errs, base, torch.bfloat16)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_fp16_input_gradient_products_change_only_dq_dk_dv(causal):
    # bf16 training takes scaled-fp16 products where a result feeds dq, dk or dv alone (DXP); its
    # exact twin is the all-split backward. Same inputs, same state: the parameter gradients must
    # come out bit for bit the same, dq, dk, dv within fp16 rounding of each other.
    ins = _inputs(1, 90, 2, 32, 32, 12, torch.bfloat16, seed=21)
    do = (0.5 * torch.randn(1, 90, 2, 32, generator=torch.Generator().manual_seed(22))).to(
        device=ins[0].device, dtype=torch.bfloat16)
    fp16 = _run(lambda *a: gma_triton(*a, causal=causal, precision="fp16"), ins, do)
    split = _run(lambda *a: gma_triton(*a, causal=causal, precision="split"), ins, do)
    for name, x, y in zip(NAMES[1:], fp16[1:], split[1:]):
        if name in ("mu", "log_sigma", "mix_logits"):
            assert torch.equal(x, y), name
        else:
            assert 0 < _rel(x, y.double()) < 2e-3, name   # fp16 products: not the same path


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_wide_backward_form_meets_spec_in_bf16(causal):
    # The form the shapes with K x D > 8192 take (weights made per block, input gradients through
    # the transposed logit weights), forced on a small shape.
    TUNING.update(wide=1)
    try:
        errs, base = _errors(2, 45, 2, 32, 16, 12, torch.bfloat16, causal, seed=37)
    finally:
        TUNING.update(wide=None)
    _assert_spec(errs, base, torch.bfloat16)


@pytest.mark.parametrize("precision,causal", [("split", False), ("split", True), ("fast", True)],
                         ids=["split-bidir", "split-causal", "fast-causal"])
def test_wide_form_split_pairs_give_the_float32_buffers_results(causal, precision):
    # wide_pairs: the wide form's weights buffer holds each weight's bf16 hi and lo parts, which
    # the blocks load as they are instead of splitting float32 weights again (the exact twin,
    # wide_pairs 0). The same operands reach the same products: o and all six gradients bit for
    # bit, on fresh random inputs, in split products and in single bf16 ones.
    # (single bf16 products take the hi tile alone, in either variant: the causal one suffices)
    # wide_dx16 off, so that every product takes the pairs; with it on (the default), the next
    # test compares the two buffers' fp16 tiles.
    from gmabench.gma.triton import plan
    ins = _inputs(1, 37, 2, 32, 16, 12, torch.bfloat16, seed=71)
    do = (0.5 * torch.randn(1, 37, 2, 16, generator=torch.Generator().manual_seed(72))).to(
        device=ins[0].device, dtype=torch.bfloat16)
    outs = []
    for pairs in (0, 1):
        TUNING.update(wide=1, wide_pairs=pairs, wide_dx16=0)
        try:
            o = gma_triton(*ins, causal=causal, precision=precision)
            pl = plan.make_plan(1, 37, 2, 12, 32, 16, causal, ins[0].device)
            assert pl.WIDE and pl.WIDE_PAIRS == bool(pairs) and not pl.WIDE_DX16
            outs.append([o.detach()] + list(torch.autograd.grad(o, ins, do)))
        finally:
            TUNING.update(wide=None, wide_pairs=None, wide_dx16=None)
    for name, x, y in zip(NAMES, *outs):
        assert torch.equal(x, y), name
    assert outs[0][5].abs().max() > 0   # the mu gradient went through the weights


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_wide_form_fp16_input_gradient_products(causal):
    # wide_dx16: the wide form's products that feed dq, dk or dv alone take scaled fp16 as the
    # table form's do. Against the wide form's split products (its exact twin, wide_dx16 0): o
    # and the parameter gradients bit for bit (dl is the same), dq, dk, dv within fp16
    # rounding, and the SPEC met; with the fp16 weights stored by the weights kernel (wide_pairs)
    # bit for bit the form that scales them per block (wide_pairs 0).
    from gmabench.gma.triton import plan
    ins = _inputs(1, 37, 2, 32, 16, 12, torch.bfloat16, seed=73)
    do = (0.5 * torch.randn(1, 37, 2, 16, generator=torch.Generator().manual_seed(74))).to(
        device=ins[0].device, dtype=torch.bfloat16)
    runs = {}
    for dx16, pairs in ((0, 1), (1, 1), (1, 0)):
        TUNING.update(wide=1, wide_dx16=dx16, wide_pairs=pairs)
        try:
            assert plan.make_plan(1, 37, 2, 12, 32, 16, causal, ins[0].device).WIDE_DX16 == bool(dx16)
            runs[dx16, pairs] = _run(lambda *a: gma_triton(*a, causal=causal), ins, do)
        finally:
            TUNING.update(wide=None, wide_dx16=None, wide_pairs=None)
    split, fp16, scaled_here = runs[0, 1], runs[1, 1], runs[1, 0]
    for name, x, y, z in zip(NAMES, fp16, split, scaled_here):
        assert torch.equal(x, z), name
        if name in ("q", "k", "v"):
            assert 0 < _rel(x, y.double()) < 2e-3, name   # another path, within fp16 rounding
        else:
            assert torch.equal(x, y), name
    TUNING.update(wide=1)   # wide_dx16 on: the default
    try:
        errs, base = _errors(1, 37, 2, 32, 16, 12, torch.bfloat16, causal, seed=37)
    finally:
        TUNING.update(wide=None)
    _assert_spec(errs, base, torch.bfloat16)


@pytest.mark.parametrize("pairs", [False, True], ids=["float32", "pairs"])
def test_wide_form_weights_buffer_holds_the_logit_weights(pairs):
    # The wide form's blocks load their logit weights from a buffer made once per head
    # (_prep_weights_kernel) instead of making them again from mu, log_sigma, mix_logits: A2, B2
    # (D, KP), the same untransposed (KP, D), and c2; padded components weigh nothing and have
    # c2 = -1e30 log2(e). Against the same formulas in float64.
    from gmabench.gma.triton import common
    H, K, D, KP, tau = 2, 5, 16, 16, 0.7
    g = torch.Generator().manual_seed(61)
    mu, ls = 0.5 * torch.randn(H, K, D, generator=g), 0.3 * torch.randn(H, K, D, generator=g)
    mix = torch.randn(H, K, generator=g)
    w = torch.full((H * common.wide_weights_len(KP, D),), float("nan"))
    mu, ls, mix, w = (t.to(DEVICE) for t in (mu, ls, mix, w))
    common._prep_weights_kernel[(H,)](mu, ls, mix, w, K, 1.0 / tau, KP=KP, D=D)
    if pairs:   # each float32 tile as its split: bf16 hi (round to nearest even), then lo
        w2 = torch.full_like(w, float("nan"))
        common._prep_weights_kernel[(H,)](mu, ls, mix, w2, K, 1.0 / tau, KP=KP, D=D, FMT=1,
                                          FMT_DX=1)
        w3 = torch.full_like(w, float("nan"))   # the input gradients' tiles in scaled fp16
        common._prep_weights_kernel[(H,)](mu, ls, mix, w3, K, 1.0 / tau, KP=KP, D=D, FMT=1,
                                          FMT_DX=3)
        n = KP * D
        f, p, p3 = w.cpu().view(H, -1), w2.cpu().view(H, -1), w3.cpu().view(H, -1)
        for h in range(H):
            for i in range(4):
                tile = f[h, i * n:(i + 1) * n]
                hi, lo = p[h, i * n:(i + 1) * n].view(torch.bfloat16).view(2, n)
                assert torch.equal(hi, tile.to(torch.bfloat16))
                assert torch.equal(lo, (tile - hi.float()).to(torch.bfloat16))
                assert (hi.float() + lo.float() - tile).abs().max() <= tile.abs().max() * 2.0**-16
                if i < 2:
                    assert torch.equal(p3[h, i * n:(i + 1) * n], p[h, i * n:(i + 1) * n])
                    continue
                # the power of two at or above max|tile|, then the tile over it in float16
                scale = 2.0 ** math.ceil(math.log2(tile.abs().max().item()))
                assert p3[h, i * n + n // 2].item() == scale
                f16 = p3[h, i * n:i * n + n // 2].view(torch.float16)
                assert torch.equal(f16, (tile / scale).to(torch.float16))
            assert torch.equal(p[h, 4 * n:], f[h, 4 * n:])   # c2 as before
    m, l, x = mu.cpu().double(), ls.cpu().double(), mix.cpu().double()
    e = torch.exp(-2.0 * l)
    log2e = 1.0 / math.log(2.0)
    a = torch.zeros(H, KP, D, dtype=torch.float64)
    b = torch.zeros(H, KP, D, dtype=torch.float64)
    a[:, :K] = m * e / tau * log2e
    b[:, :K] = -0.5 * e / tau * log2e
    c = (torch.log_softmax(x, -1) - l.sum(-1) - 0.5 * (m * m * e).sum(-1)) / tau * log2e
    got = w.cpu().double().view(H, -1)
    n = KP * D
    for h in range(H):
        for i, want in enumerate((a[h].T, b[h].T, a[h], b[h])):
            torch.testing.assert_close(got[h, i * n:(i + 1) * n].view(want.shape), want,
                                       rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(got[h, 4 * n:4 * n + K], c[h], rtol=2e-6, atol=1e-5)
        assert torch.all(got[h, 4 * n + K:] == torch.tensor(-1e30 * log2e, dtype=torch.float32))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("K,wide", [(12, 0), (12, 1), (140, 0)],
                         ids=["table-form", "wide-form", "K140-column-tiles"])
def test_stored_dl_gives_the_register_sums_gradients(launched, causal, K, wide):
    # dl_store: the backward's query side (1) or both sides (2) store dl and a pass of its own
    # makes the parameter sums, with the same products, instead of carrying them through the
    # walk. Its exact twin is the register form: o, dq, dk, dv bit for bit (nothing else
    # changes), the parameter gradients within float32 summation order; and both meet the SPEC.
    # The pass in 16-row programs (3 per (b, h)), and at K=140 (padded to 256) in two tiles of
    # x's 32 columns; the query side alone (level 1) at the table's form, and both sides with
    # the causal query side's d, dd in their own buffer (aux_dl 0) as well as in dl's. The
    # launches show which form ran: whether the walks stored dl (DLST) and which sums passes
    # followed. (The parameter gradients alone cannot: where the pass's blocks are the walk's,
    # the two forms can round alike, and did with some of numpy's matrix products.)
    ins = _inputs(1, 45, 2, 32, 16, K, torch.bfloat16, seed=41)
    do = (0.5 * torch.randn(1, 45, 2, 16, generator=torch.Generator().manual_seed(42))).to(
        device=ins[0].device, dtype=torch.bfloat16)
    runs = []
    table = K == 12 and not wide
    for dl_store, aux_dl in ([(0, 1), (1, 1), (2, 0), (2, 1)] if table else [(0, 1), (2, 1)]):
        TUNING.update(dl_store=dl_store, aux_dl=aux_dl, wide=wide, segments=3, dl_rows=16)
        try:
            launched.clear()
            runs.append(_run(lambda *a: gma_triton(*a, causal=causal), ins, do))
        finally:
            TUNING.update(dl_store=None, aux_dl=None, wide=None, segments=None, dl_rows=None)
        assert launched["bwd_q"]["DLST"] == (dl_store >= 1)
        assert launched["bwd_k"]["DLST"] == (dl_store == 2)
        assert ("dl_q" in launched) == (dl_store >= 1)
        assert ("dl_k" in launched) == (dl_store == 2)
        assert launched["bwd_k"].get("AUXDL", False) == (causal and dl_store == 2 and aux_dl == 1)
    regs, stored = runs[0], runs[-1]
    for other in runs[1:]:
        for name, x, y in zip(NAMES, other, regs):
            if name in ("mu", "log_sigma", "mix_logits"):
                assert _rel(x, y.double()) < 1e-6, name
            else:
                assert torch.equal(x, y), name
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    ref = _run(gma_spec_float64, ins64, do.double(), causal=causal)
    base = _run(gma_reference, ins, do, causal=causal)
    _assert_spec({n: _rel(x, r) for n, x, r in zip(NAMES, stored, ref)},
                 {n: _rel(x, r) for n, x, r in zip(NAMES, base, ref)}, torch.bfloat16)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_dx_pass_gives_the_walks_input_gradients(launched, dtype, causal):
    # dx_pass: the sums pass over a stored dl makes dq (and, with both sides storing, dk) with
    # the walk's products on the walk's tiles, so o, dq, dk, dv are bit for bit those of the
    # walks that make dx themselves, and the parameter gradients, summed over the pass's blocks
    # of the walk's size instead of its own, within float32 summation order; the launches show
    # who made dx (bf16: scaled-fp16 products for it, float32: tf32x3)
    ins = _inputs(1, 45, 2, 32, 16, 12, dtype, seed=43)
    do = (0.5 * torch.randn(1, 45, 2, 16, generator=torch.Generator().manual_seed(44))).to(
        device=ins[0].device, dtype=dtype)
    for dl_store in (1, 2):
        runs = []
        for dx_pass in (0, 1):
            TUNING.update(dl_store=dl_store, dx_pass=dx_pass, segments=3, dl_rows=16)
            try:
                launched.clear()
                runs.append(_run(lambda *a: gma_triton(*a, causal=causal), ins, do))
            finally:
                TUNING.update(dl_store=None, dx_pass=None, segments=None, dl_rows=None)
            assert launched["bwd_q"]["DXPASS"] == launched["dl_q"]["DXPASS"] == bool(dx_pass)
            assert launched["bwd_k"]["DXPASS"] == (bool(dx_pass) and dl_store == 2)
            assert ("dl_k" in launched) == (dl_store == 2)
            # both sides storing, causal: the key side reads d, dd from the dl buffer
            assert launched["bwd_k"].get("AUXDL", False) == (causal and dl_store == 2)
        for name, x, y in zip(NAMES, runs[1], runs[0]):
            if name in ("mu", "log_sigma", "mix_logits"):
                assert _rel(x, y.double()) < 1e-6, (dl_store, name)
            else:
                assert torch.equal(x, y), (dl_store, name)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_stored_dl_meets_spec_in_float32_and_float16(dtype, causal):
    # the shapes that store dl by default (here K=140, padded to 256) in the other input dtypes:
    # float32 takes exact products there, float16 split ones, and the sums pass takes the same
    TUNING.update(dl_rows=16)
    try:
        errs, base = _errors(1, 45, 2, 32, 32, 140, dtype, causal, seed=47)
    finally:
        TUNING.update(dl_rows=None)
    _assert_spec(errs, base, dtype)


@pytest.mark.parametrize("precision,tol", [("split", 1e-4), ("fast", 3e-2), ("tf32x3", 1e-5),
                                           ("ieee", 1e-5)])
def test_precision_modes_on_float32_inputs(precision, tol):
    # "split" emulates ~16-bit operands with bf16 pairs, "fast" uses single bf16 operands;
    # "tf32x3" (three tf32 products, the float32 default) and "ieee" (exact float32 products) are
    # both float32 under the interpreter: the GPU test below tells them apart.
    errs, _ = _errors(1, 40, 2, 16, 16, 6, torch.float32, True, seed=5, precision=precision)
    for name in NAMES:
        assert errs[name] < tol, (name, errs[name])


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_launch_variants_do_not_change_the_result(causal):
    # one segment vs five and seven (the causal walks start from the sum of up to six earlier or
    # later segments' totals); 16-, 32-, 128-token blocks; a backward, or a key pass, with smaller
    # blocks, and a backward whose key side walks other blocks than its query side; the backward
    # that makes its weights per block (the wide shapes' form), in 16- and 32-token blocks; one
    # that stores dl for a pass of its own to sum
    ins = _inputs(1, 100, 1, 16, 16, 4, torch.float32, seed=7)
    do = torch.randn(1, 100, 1, 16, generator=torch.Generator().manual_seed(8)).to(ins[0].device)
    outs = []
    # (the 16-token backward under a 64-token forward reads the forward's segment totals)
    for knobs in (dict(segments=1), dict(segments=5), dict(segments=7), dict(block=32, segments=2),
                  dict(block=128, segments=1), dict(block=64, block_bwd=16, segments=2),
                  dict(block=64, block_key=16, segments=3),
                  dict(block=64, block_bwd=16, block_bwd_k=32, segments=3), dict(wide=1, segments=2),
                  dict(wide=1, block=32, block_bwd=32, segments=2),
                  dict(block=32, block_bwd=16, dl_store=2, segments=3)):
        TUNING.update(knobs)
        try:
            outs.append(_run(lambda *a: gma_triton(*a, causal=causal), ins, do))
        finally:
            TUNING.update({key: None for key in knobs})
    for other in outs[1:]:
        for x, y in zip(other, outs[0]):
            assert _rel(x, y.double()) < 1e-5


def test_extreme_inputs_give_finite_results():
    ins = _inputs(1, 33, 1, 16, 16, 7, torch.float32, seed=11, scale=30.0)
    with torch.no_grad():
        ins[3].mul_(20.0)
        ins[4].sub_(3.0)   # sigma ~ 0.05: very peaked responsibilities
    for causal in (False, True):
        res = _run(lambda *a: gma_triton(*a, causal=causal, temperature=0.05), ins,
                   torch.ones(1, 33, 1, 16))
        for name, x in zip(NAMES, res):
            assert torch.isfinite(x).all(), (causal, name)


def test_plan_pads_components_and_covers_the_sequence():
    for K in (1, 16, 17, 64, 200, 256):
        for N in (1, 15, 16, 17, 1000):
            plan = make_plan(2, N, 3, K, 64, 64, True, torch.device("cpu"))
            assert plan.KP >= max(16, K) and plan.KP & (plan.KP - 1) == 0
            nblk = -(-N // plan.BLOCK)
            assert (plan.P - 1) * plan.bps < nblk <= plan.P * plan.bps


def test_rejects_unsupported_shapes():
    ins = _inputs(1, 8, 1, 16, 16, 2, torch.float32, seed=0)
    bad_v = torch.randn(1, 8, 1, 24)
    with pytest.raises(ValueError, match="Dv"):
        gma_triton(ins[0], ins[1], bad_v, *ins[3:])
    with pytest.raises(ValueError, match="K must be"):
        H, D = 1, 16
        gma_triton(*ins[:3], torch.zeros(H, 300, D), torch.zeros(H, 300, D), torch.zeros(H, 300))


def test_a_second_derivative_raises_instead_of_dropping_the_kernels_part():
    # A gradient penalty through gma and another op, then .backward() as training does: the
    # kernels' gradients have no graph, so differentiating them again must fail loudly, not
    # leave the other op's part alone in q.grad. (torch.autograd.grad with `inputs` skips the
    # error node, which lies on no path to them: a limit of once_differentiable.)
    q, k, v = (t.requires_grad_() for t in _inputs(1, 9, 2, 16, 16, 3, torch.float32, seed=4)[:3])
    mu, ls, mix = _inputs(1, 9, 2, 16, 16, 3, torch.float32, seed=4)[3:]
    o = gma_triton(q, k, v, mu, ls, mix)
    (g,) = torch.autograd.grad(o.square().sum() + q.pow(3).sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_under_torch_compile_the_call_runs_eagerly_with_its_gradients(causal):
    # torch.compile cannot trace the launches (cached launchers, per-signature host state):
    # gma_triton runs eagerly between the compiled graphs, the same output and gradients
    torch._dynamo.reset()
    ins = _inputs(1, 40, 2, 16, 16, 4, torch.float32, seed=9)
    step = torch.compile(lambda *a: gma_triton(*a, causal=causal).square() * 2, backend="aot_eager")
    out = step(*ins)
    grads = torch.autograd.grad(out.sum(), ins)
    ref = gma_triton(*ins, causal=causal).square() * 2
    assert torch.equal(out, ref)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), ins)):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("B,N,H", [(1, 0, 2), (0, 5, 2), (2, 3, 0)])
def test_no_tokens_gives_an_empty_output_and_zero_parameter_gradients(B, N, H, causal):
    # an empty batch, sequence or head set launches nothing (the plans divide by the tokens):
    # the output is empty, the mixture's gradients zero, and bad shapes are still refused
    q, k = (torch.randn(B, N, H, 16, device=DEVICE) for _ in range(2))
    v = torch.randn(B, N, H, 32, device=DEVICE, requires_grad=True)
    mu, ls = (torch.randn(H, 3, 16, device=DEVICE, requires_grad=True) for _ in range(2))
    mix = torch.randn(H, 3, device=DEVICE, requires_grad=True)
    o = gma_triton(q, k, v, mu, ls, mix, causal=causal)
    assert o.shape == (B, N, H, 32) and o.dtype == v.dtype
    grads = torch.autograd.grad(o.sum() + 0 * (mu.sum() + ls.sum() + mix.sum()), (v, mu, ls, mix))
    assert [tuple(g.shape) for g in grads] == [(B, N, H, 32), (H, 3, 16), (H, 3, 16), (H, 3)]
    assert not any(g.any() for g in grads)
    with pytest.raises(ValueError, match="Dv must be"):
        gma_triton(q, k, torch.randn(B, N, H, 24, device=DEVICE), mu, ls, mix, causal=causal)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_gpu_real_sizes(dtype, causal):
    errs, base = _errors(2, 2048 + 37, 4, 64, 64, 64, dtype, causal, seed=13)
    _assert_spec(errs, base, dtype)
    # inference (no gradient): bf16 takes the scaled-fp16 forward
    ins = _inputs(2, 2048 + 37, 4, 64, 64, 64, dtype, seed=17)
    err, base_o = _forward_errors(ins, causal)
    assert err <= 2 * base_o + _floor(dtype, "o"), (err, base_o)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_fused_causal_inference_matches_two_kernels(dtype):
    # plan key fuse_fwd: programs that publish their segment's total and wait for the earlier
    # ones. Against the key pass and walk launched apart: the same output (within a rounding of
    # the 16-bit output: the two builds may contract float32 products apart), one segment per
    # head to more programs than the GPU holds at once (the tickets keep waits on started
    # programs), every repeat and CUDA-graph replay the same bits, every ticket-and-flags buffer
    # in the state whole launches leave.
    from gmabench.gma.triton import call as call_mod
    # (one head of 8197 and three of 131072 tokens: the cost model's segments of 3 and 24 blocks)
    for B, H, N, segments in ((2, 4, 1, None), (2, 4, 2048, None), (2, 4, 4133, None),
                              (2, 4, 131072, None), (2, 4, 131072, 200), (1, 1, 8197, None),
                              (1, 3, 131072, None)):
        ins = [t.detach() for t in _inputs(B, N, H, 64, 64, 64, dtype, seed=N % 97)]
        TUNING.update(segments=segments, fuse_fwd=0)
        try:
            with torch.no_grad():
                apart = gma_triton(*ins, causal=True)
                TUNING.update(fuse_fwd=None)
                fused = [gma_triton(*ins, causal=True) for _ in range(3)]
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = gma_triton(*ins, causal=True)
                for _ in range(3):
                    out.zero_()
                    graph.replay()
                    fused.append(out.clone())
        finally:
            TUNING.update(segments=None, fuse_fwd=None)
        torch.cuda.synchronize()
        for f in fused[1:]:
            assert torch.equal(f, fused[0]), N
        assert _rel(fused[0], apart.double()) < 1e-4, N
        assert torch.isfinite(fused[0]).all(), N
        assert all(_launches_completed(b) is not None
                   for c in call_mod._CALLS.values() for b in c.sync_buffers())


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gpu_deterministic_mode_repeats_training_bit_for_bit(causal):
    # torch.use_deterministic_algorithms(True): impl="auto" leaves the kernels' atomic sums for
    # PyTorch, so two training calls give the same bits, output and every gradient
    from gmabench.gma import gma_attention
    ins = _inputs(2, 1000, 4, 64, 64, 64, torch.bfloat16, seed=21)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            o = gma_attention(*ins, causal=causal)
            runs.append([o, *torch.autograd.grad(o.float().square().sum(), ins)])
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.gpus2
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gpu_inputs_on_another_device_than_the_current_one(causal):
    # The launches take the current device's stream: a call with every tensor on cuda:1 while
    # cuda:0 is current must run on cuda:1 and give what the call made there gives (to the
    # order of float32 atomic sums)
    ins = [t.detach().to("cuda:1").requires_grad_() for t in
           _inputs(2, 3000, 4, 64, 64, 64, torch.bfloat16, seed=41)]
    with torch.cuda.device(1):
        there = gma_triton(*ins, causal=causal)
        grads_there = torch.autograd.grad(there.float().square().sum(), ins)
    with torch.cuda.device(0):
        here = gma_triton(*ins, causal=causal)
        grads_here = torch.autograd.grad(here.float().square().sum(), ins)
    torch.cuda.synchronize(0), torch.cuda.synchronize(1)
    assert here.device == torch.device("cuda", 1)
    for a, b in zip([here, *grads_here], [there, *grads_there]):
        assert a.device == b.device and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
def test_gpu_fused_causal_inference_on_two_streams_at_once():
    # Two calls of one signature running at the same time, eagerly on two streams and as two
    # CUDA graphs replayed on two streams: each launch takes a counters-and-flags buffer no
    # other running launch uses (Call.sync_buffer; with one buffer per signature, tickets drawn
    # by both launches named segments past the grid). 8 segments per head, 64 programs a
    # launch, so that the two launches fit on the GPU together. Every output the bits of the
    # same input's call alone, every buffer in the state whole launches leave.
    from gmabench.gma.triton import call as call_mod
    a, b = ([t.detach() for t in _inputs(2, 4133, 4, 64, 64, 64, torch.bfloat16, seed=s)]
            for s in (5, 6))
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    TUNING.update(segments=8)
    try:
        with torch.no_grad():
            alone = [gma_triton(*x, causal=True) for x in (a, b)]
            torch.cuda.synchronize()
            eager = []
            for _ in range(20):
                for x, st in zip((a, b), streams):
                    st.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(st):
                        eager.append(gma_triton(*x, causal=True))
            torch.cuda.synchronize()
            graphs, outs = [], []
            for x in (a, b):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    outs.append(gma_triton(*x, causal=True))
                graphs.append(g)
            replayed = []
            for _ in range(20):
                for g, o, st in zip(graphs, outs, streams):
                    st.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(st):
                        g.replay()
                        replayed.append(o.clone())
            torch.cuda.synchronize()
    finally:
        TUNING.update(segments=None)
    call = next(c for c in call_mod._CALLS.values() if c.dims == (2, 4133, 4, 64, 64, 64)
                and c.plan.FUSE_FWD and c.plan.P == 8)
    assert len(call.syncs) >= 2 and len(call.captured) == 2
    assert len({x.data_ptr() for x in call.sync_buffers()}) == len(call.sync_buffers())
    for i, o in enumerate(eager + replayed):
        assert torch.equal(o, alone[i % 2]), i
    # 2 eager launches on the default stream, 20 on each side stream, 20 replays of the graph
    # that took the spare, and 1 launch in the buffer whose zero fill the other graph replays
    assert sorted(_launches_completed(x) for x in call.sync_buffers()) == [1, 2, 20, 20, 20]


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("D,K,dl_store,dx_pass", [(64, 64, 1, 0), (64, 64, 2, 0), (128, 64, 2, 0),
                                                   (64, 256, 2, 0), (64, 64, 2, 1)],
                         ids=["D64-K64-query-side", "D64-K64-both", "D128-K64-both",
                              "D64-K256-both", "D64-K64-both-dx-pass"])
def test_gpu_stored_dl_meets_spec(causal, D, K, dl_store, dx_pass):
    # the parameter sums (dx_pass: and dq, dk) made from a stored dl, at real sizes in bf16, the
    # SPEC criterion
    TUNING.update(dl_store=dl_store, dx_pass=dx_pass)
    try:
        errs, base = _errors(1, 2048 + 37, 4, D, D, K, torch.bfloat16, causal, seed=43)
    finally:
        TUNING.update(dl_store=None, dx_pass=None)
    _assert_spec(errs, base, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
def test_gpu_d_and_dd_moved_by_the_sums_pass_are_the_ones_read_from_their_own_buffer():
    # AUXCP: the causal query side's sums pass writes each row's d, dd over the dl it has just
    # read, for the key side to read there; with aux_dl 0 the key side reads them from their own
    # buffer, nothing moved. Any row written before all of its dl was read would change dq's
    # parameter sums or the key side's dk, dv: at a size with many programs per (b, h) and
    # repeated, o, dq, dk, dv bit for bit, the parameter gradients to float32 summation order
    ins = _inputs(1, 65536 + 37, 4, 64, 64, 64, torch.bfloat16, seed=47)
    do = (0.5 * torch.randn(1, 65536 + 37, 4, 64, generator=torch.Generator().manual_seed(48))
          ).to(device=ins[0].device, dtype=torch.bfloat16)
    runs = {}
    for aux_dl in (0, 1, 1):
        TUNING.update(dl_store=2, aux_dl=aux_dl)
        try:
            runs.setdefault(aux_dl, []).append(
                _run(lambda *a: gma_triton(*a, causal=True), ins, do))
        finally:
            TUNING.update(dl_store=None, aux_dl=None)
    (own,), moved = runs[0], runs[1]
    for run in moved:
        for name, x, y in zip(NAMES, run, own):
            if name in ("mu", "log_sigma", "mix_logits"):
                assert _rel(x, y.double()) < 1e-5, name
            else:
                assert torch.equal(x, y), name


def test_float32_inputs_take_tf32x3_products_at_the_tuned_shapes():
    # beyond K (padded) = 64 or D, Dv = 64 tf32x3's split operands overflow an H200 block's
    # shared memory (up to 458 KB; ieee's fit), so float32 keeps exact products there
    from gmabench.gma.triton.autograd import precision_name
    assert precision_name(torch.float32, None) == "tf32x3"
    assert precision_name(torch.float32, None, (64, 64, 64)) == "tf32x3"
    assert precision_name(torch.float32, None, (1, 16, 32)) == "tf32x3"
    for wide in ((65, 64, 64), (256, 32, 32), (64, 128, 64), (64, 64, 128)):
        assert precision_name(torch.float32, None, wide) == "ieee", wide
    assert precision_name(torch.float32, "tf32x3", (256, 32, 32)) == "tf32x3"   # asked for
    assert precision_name(torch.float32, "ieee") == "ieee"
    assert precision_name(torch.bfloat16, None) == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_name(torch.float32, "tf32")


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gpu_tf32x3_matches_its_exact_float32_twin(causal):
    # float32 inputs: three tf32 tensor-core products per matmul (the default) against exact
    # float32 products ("ieee", no tensor cores), on fresh random inputs at a real size, training:
    # the output and all six gradients agree to about float32's own rounding, and both meet the
    # SPEC criterion (test_gpu_real_sizes checks the default alone)
    ins = _inputs(2, 2048 + 37, 4, 64, 64, 64, torch.float32, seed=71)
    do = 0.5 * torch.randn(2, 2048 + 37, 4, 64, generator=torch.Generator().manual_seed(72))
    do = do.to(ins[0].device)
    fast = _run(lambda *a: gma_triton(*a, causal=causal, precision="tf32x3"), ins, do)
    exact = _run(lambda *a: gma_triton(*a, causal=causal, precision="ieee"), ins, do)
    for name, x, y in zip(NAMES, fast, exact):
        assert 0 < _rel(x, y.double()) < 2e-5, (name, _rel(x, y.double()))


def _errors_noting_fallback(monkeypatch, record_property, shape, dtype, causal, seed):
    """_errors, and whether the call fell back to PyTorch (a kernel over the GPU's shared memory:
    autograd.TOO_LARGE), which the warning, the mixers' fallback note and the JUnit XML of a GPU
    run must agree on. Either way the result must meet the SPEC."""
    import json
    import warnings
    from gmabench.gma.triton import autograd
    B, N, H, D, Dv, K = shape
    monkeypatch.setattr(autograd, "TOO_LARGE", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errs, base = _errors(B, N, H, D, Dv, K, dtype, causal, seed=seed)
    q = torch.empty(1, 1, 1, D, device=DEVICE, dtype=dtype)
    v = torch.empty(1, 1, 1, Dv, device=DEVICE, dtype=dtype)
    note = autograd.fallback_note(q, v, torch.empty(1, K, D), causal)
    fell_back = any("shared memory" in str(w.message) for w in caught)
    record_property("fallback", note or "none")    # in the JUnit XML of a GPU run
    record_property("errors", json.dumps({n: [float(f"{errs[n]:.3g}"), float(f"{base[n]:.3g}")]
                                          for n in errs}))   # [kernels, gma_reference]
    assert bool(note) == fell_back, (note, [str(w.message) for w in caught])
    _assert_spec(errs, base, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dx16", [None, 0], ids=["plan", "no_wide_dx16"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_gpu_wide_training_meets_spec(monkeypatch, record_property, causal, dx16):
    # D=64, K=256: the backward's wide form fits an H200's shared memory at compile time
    # (docs/kernels.md); should the GPU refuse a kernel anyway, the call falls back to PyTorch.
    # Also without the fp16 input-gradient products of plan key wide_dx16 (Version 2.38).
    monkeypatch.setitem(TUNING, "wide_dx16", dx16)
    _errors_noting_fallback(monkeypatch, record_property, (1, 1000, 2, 64, 64, 256),
                            torch.bfloat16, causal, seed=19)


# The support matrix at GPU launch plans: every D and Dv of {16, 32, 64, 128}, K from 1
# to 256 (KP 16 to 256, non-powers of two padded), training (output and six gradients) and
# inference, B=2 and a masked tail over several segments. Which plan family each takes
# (plan.py): the tuned table (KP, D, Dv <= 64), the wider rule (32-token blocks; 16-token backward
# blocks at KP=256), the wide backward (KP x max(D, Dv) > 8192: weights made per block).
SUPPORT = [
    pytest.param(16, 16, 1, id="D16-Dv16-K1"),
    pytest.param(64, 16, 7, id="D64-Dv16-K7"),
    pytest.param(16, 128, 33, id="D16-Dv128-K33"),
    pytest.param(32, 64, 100, id="D32-Dv64-K100"),
    pytest.param(32, 32, 256, id="D32-Dv32-K256"),
    pytest.param(128, 32, 64, id="D128-Dv32-K64"),
    pytest.param(128, 128, 100, id="D128-Dv128-K100"),
    pytest.param(64, 128, 256, id="D64-Dv128-K256"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("D,Dv,K", SUPPORT)
def test_gpu_support_matrix(monkeypatch, record_property, D, Dv, K, causal):
    _errors_noting_fallback(monkeypatch, record_property, (2, 1000 + 37, 2, D, Dv, K),
                            torch.bfloat16, causal, seed=D + Dv + K)
    ins = _inputs(2, 1000 + 37, 2, D, Dv, K, torch.bfloat16, seed=D * Dv + K)
    err, base_o = _forward_errors(ins, causal)
    record_property("inference", f"{err:.3g} (gma_reference {base_o:.3g})")
    assert err <= 2 * base_o + _floor(torch.bfloat16, "o"), (err, base_o)


@pytest.mark.gpu
@pytest.mark.skipif(not _ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("D,Dv,K", [(64, 64, 256), (128, 128, 128), (128, 128, 256), (16, 32, 1)],
                         ids=["D64-K256", "D128-K128", "D128-K256", "D16-Dv32-K1"])
def test_gpu_raw_float16_at_the_edge_shapes(causal, D, Dv, K):
    # The raw and scaled forward kernels at the shapes whose plans take other blocks (32 or 16
    # tokens) and whose shared memory is tightest: the same output within float16 rounding, and
    # within 1.1x of gma_reference's error.
    ins = _inputs(1, 1000, 2, D, Dv, K, torch.bfloat16, seed=41)
    raw, scaled = _raw_and_scaled(ins, causal)
    assert _rel(raw, scaled.double()) < 1e-3
    _, base = _forward_errors(ins, causal)
    with torch.no_grad():
        ref = gma_spec_float64(*[t.double() for t in ins], causal=causal)
    assert _rel(raw, ref) <= 1.1 * base, (_rel(raw, ref), base)


def test_inference_and_training_calls_take_their_own_plans():
    from gmabench.gma.triton import plan as plan_mod
    ins = _inputs(1, 20, 1, 16, 16, 3, torch.float32, seed=2)
    plan_mod._PLANS.clear()
    with torch.no_grad():
        gma_triton(*ins, causal=True)
    assert [key[7] for key in plan_mod._PLANS] == [False]      # key[7]: grad
    gma_triton(*ins, causal=True).sum().backward()
    assert sorted(key[7] for key in plan_mod._PLANS) == [False, True]


def test_gma_mixer_records_precision_plan_source_and_launch_path(monkeypatch):
    from gmabench.gma.triton import launch as launch_mod
    from gmabench.gma.triton import plan as plan_mod
    from gmabench.mixers.gma import GMAMixer
    def inputs(dtype):
        return dict(zip(("q", "k", "v", "mu", "log_sigma", "mix_logits"),
                        _inputs(1, 4, 1, 16, 16, 3, dtype, seed=1)))

    q16, q32 = inputs(torch.bfloat16), inputs(torch.float32)
    source = plan_mod.PLAN_SOURCE
    monkeypatch.setattr(launch_mod, "ENABLED", False)
    assert GMAMixer("triton").backend(q16, False) == \
        ("triton fp16 (training: state and backward split, dq/dk/dv products fp16), plans: "
         f"{source}, launches: triton")
    assert GMAMixer("triton").backend(q32, True) == \
        f"triton tf32x3, plans: {source}, launches: triton"
    wide32 = dict(zip(("q", "k", "v", "mu", "log_sigma", "mix_logits"),
                      _inputs(1, 4, 1, 16, 16, 100, torch.float32, seed=1)))   # K pads to 128
    assert GMAMixer("triton").backend(wide32, True).startswith("triton ieee,")
    monkeypatch.setattr(launch_mod, "ENABLED", True)
    assert GMAMixer("triton").backend(q32, True).endswith("launches: cached")
    assert GMAMixer("triton", precision="fast").backend(q16, True).startswith("triton fast,")
    assert GMAMixer("triton").backend(inputs(torch.float16), True).startswith("triton split,")
    assert GMAMixer("chunked").backend(q16, True) == "chunked"


def test_causal_inference_launches_by_segments_and_fuse_fwd(monkeypatch):
    # one segment: the walk alone; several: the key pass and the walk in one kernel (plan key
    # fuse_fwd, the default), or apart; all three the same output, bit for bit, call after call,
    # and the fused kernel's ticket counter and flags as its launches leave them
    from gmabench.gma.triton import autograd, call as call_mod
    launched = []
    real = autograd._launch
    monkeypatch.setattr(autograd, "_launch",
                        lambda kernel, *a, **kw: launched.append(kernel.fn.__name__) or real(kernel, *a, **kw))
    ins = _inputs(2, 40, 2, 16, 16, 4, torch.float32, seed=31)
    outs, launches = {}, {}
    for knobs in (dict(segments=1), dict(segments=3, fuse_fwd=0), dict(segments=3)):
        TUNING.update(knobs)
        try:
            for _ in range(2):
                launched.clear()
                with torch.no_grad():
                    out = gma_triton(*ins, causal=True)
                key = tuple(sorted(knobs.items()))
                assert key not in outs or torch.equal(out, outs[key])
                outs[key], launches[key] = out, list(launched)
        finally:
            TUNING.update({k: None for k in knobs})
    one, apart, fused = (tuple(sorted(k.items())) for k in
                         (dict(segments=1), dict(segments=3, fuse_fwd=0), dict(segments=3)))
    assert launches[one] == ["_causal_out_kernel"]
    assert launches[apart] == ["_state_kernel", "_causal_out_kernel"]
    assert launches[fused] == ["_causal_fused_kernel"]
    assert torch.equal(outs[fused], outs[apart])
    assert _rel(outs[one], outs[fused].double()) < 1e-5
    # the fused kernel's buffer after its two launches: the ticket counter at 2 x 12 programs,
    # every flag the second launch's mark
    (sync,) = [b for c in call_mod._CALLS.values() for b in c.sync_buffers()
               if b.numel() == 2 + 2 * 2 * 3]
    assert _launches_completed(sync) == 2 and sync[2:].eq(2).all()
    # a training call keeps the two kernels (its key pass and walk take other precisions)
    launched.clear()
    TUNING.update(segments=3)
    try:
        gma_triton(*ins, causal=True)
    finally:
        TUNING.update(segments=None)
    assert launched == ["_state_kernel", "_causal_out_kernel"]


def _too_large_for(names):
    """A stand-in for autograd._launch whose kernels in `names` do not fit the GPU; counts the
    launches made."""
    from gmabench.gma.triton import autograd
    from gmabench.gma.triton.launch import KernelTooLarge
    real = autograd._launch
    launched = []

    def fake(kernel, *args, **kw):
        launched.append(kernel.fn.__name__)
        if kernel.fn.__name__ in names:
            raise KernelTooLarge(f"GMA kernel {kernel.fn.__name__} needs 400000 of shared memory")
        return real(kernel, *args, **kw)
    return fake, launched


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_a_backward_over_shared_memory_recomputes_in_pytorch(monkeypatch, causal):
    from gmabench.gma.triton import autograd
    monkeypatch.setattr(autograd, "TOO_LARGE", {})
    fake, launched = _too_large_for({"_causal_bwd_q_kernel", "_bidir_bwd_q_kernel"})
    monkeypatch.setattr(autograd, "_launch", fake)
    ins = _inputs(1, 29, 2, 16, 32, 5, torch.float32, seed=41)
    do = torch.randn(1, 29, 2, 32, generator=torch.Generator().manual_seed(42))
    ref = _run(gma_spec_float64, [t.detach().double().requires_grad_() for t in ins], do.double(),
               causal=causal)
    with pytest.warns(RuntimeWarning, match="needs 400000 of shared memory.*Training calls of this "
                                            "shape run through gma_chunked"):
        got = _run(lambda *a: gma_triton(*a, causal=causal), ins, do)
    assert any("bwd" in name for name in launched)            # the kernels were tried first
    for name, x, r in zip(NAMES, got, ref):
        assert _rel(x, r) < 1e-5, name                        # float32 PyTorch gradients
    assert autograd.fallback_note(ins[0], ins[2], ins[3], causal) == (
        "training in PyTorch (gma_chunked): kernels over the GPU's shared memory")
    assert autograd.fallback_note(ins[0], ins[2], ins[3], not causal) == ""
    # Later training calls of the shape go straight to PyTorch; inference still runs the kernels.
    launched.clear()
    again = _run(lambda *a: gma_triton(*a, causal=causal), ins, do)
    assert launched == []
    for x, y in zip(again, got):
        assert _rel(x, y.double()) < 1e-6
    with torch.no_grad():
        gma_triton(*ins, causal=causal)
    assert launched and not any("bwd" in name for name in launched)


def test_a_forward_over_shared_memory_runs_in_pytorch(monkeypatch):
    from gmabench.gma.triton import autograd
    from gmabench.gma.chunked import gma_chunked
    monkeypatch.setattr(autograd, "TOO_LARGE", {})
    # (causal inference over several segments: one kernel, key pass and walk)
    fake, launched = _too_large_for({"_causal_fused_kernel"})
    monkeypatch.setattr(autograd, "_launch", fake)
    ins = _inputs(1, 33, 1, 16, 16, 4, torch.bfloat16, seed=43)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="Inference calls of this shape"):
        out = gma_triton(*ins, causal=True, temperature=0.7)
        ref = gma_chunked(*ins, causal=True, temperature=0.7)
    assert launched == ["_causal_fused_kernel"] and out.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    assert autograd.fallback_note(ins[0], ins[2], ins[3], True).startswith("inference in PyTorch")


def test_gma_mixer_trains_wide_shapes_in_the_kernels(monkeypatch):
    # Since Version 2.18 "auto" trains the wide shapes in the fused kernels as well: the record's
    # backend names the kernels, and PyTorch only where a kernel did not fit (fallback_note).
    import gmabench.gma.api as gma_api
    from gmabench.gma.triton import autograd
    from gmabench.mixers.gma import GMAMixer
    monkeypatch.setattr(gma_api, "triton_available", lambda device: (True, ""))
    monkeypatch.setattr(autograd, "TOO_LARGE", {})
    wide = dict(zip(("q", "k", "v", "mu", "log_sigma", "mix_logits"),
                    _inputs(1, 4, 1, 64, 64, 256, torch.bfloat16, seed=3)))
    mixer = GMAMixer("auto")
    for t in wide.values():
        t.requires_grad_()
    assert mixer._resolve(wide, False) == "triton"
    assert mixer.backend(wide, False).startswith("triton fp16")
    assert "PyTorch" not in mixer.backend(wide, False)
