"""Every fused-kernel launch compiles for Hopper (sm_90), checked on a machine without a GPU.

Triton's CPU interpreter accepts code the real compiler rejects (a module-level constant that is
not a tl.constexpr reached the H200 that way once). So the launches that gma_triton makes for a
real-size shape are recorded under the interpreter, then compiled ahead of time for sm_90 in a
subprocess where the kernels are ordinary JIT functions, with the interpreter-only switch off and
the block size the GPU plan would choose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("on a GPU the kernels are compiled by the GPU tests themselves", allow_module_level=True)

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from gmabench.gma.triton import plan as plan_mod  # noqa: E402
from gmabench.gma.triton import gma_triton  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

COMPILE = r'''
import importlib, json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.int32": "i32"}
failures = []
for launch in json.loads(sys.stdin.read()):
    fn = getattr(importlib.import_module(launch["module"]), launch["name"])
    signature, constexprs = {}, {}
    for p, arg in zip(fn.params, launch["args"]):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = arg["value"]
        elif arg["kind"] == "tensor":
            signature[p.name] = "*" + TYPES[arg["dtype"]]
        else:
            signature[p.name] = arg["kind"]
    try:
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32), options=launch["options"])
        print("compiled", launch["name"], launch["options"], flush=True)
    except Exception as exc:
        failures.append(f"{launch['name']}: {type(exc).__name__}: {str(exc)[:2000]}")
print("\n".join(failures))
sys.exit(1 if failures else 0)
'''


def _describe(value):
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype)}
    if isinstance(value, bool):
        return {"kind": "i1", "value": value}
    if isinstance(value, int):
        return {"kind": "i32", "value": value}
    if isinstance(value, float):
        return {"kind": "fp32", "value": value}
    return {"kind": "other", "value": value}


def _record_launches(monkeypatch, causal: bool, dtype: torch.dtype) -> list[dict]:
    launches = []
    original = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        names = self.arg_names
        bound = dict(zip(names, args), **kwargs)
        # The GPU build: no interpreter workarounds.
        bound = {k: (False if k == "INTERP" else v) for k, v in bound.items()}
        launches.append({"module": self.fn.__module__, "name": self.fn.__name__, "options": options,
                         "args": [_describe(bound[n]) for n in names]})
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    # The block the GPU plan picks for D = Dv = K = 64 (the interpreter plan picks 16).
    monkeypatch.setitem(plan_mod.TUNING, "block", 64)
    monkeypatch.setattr(plan_mod, "_PLANS", {})
    g = torch.Generator().manual_seed(3)
    B, N, H, D, K = 1, 70, 1, 64, 64
    q, k = (0.5 * torch.randn(B, N, H, D, generator=g)).to(dtype), (0.5 * torch.randn(B, N, H, D, generator=g)).to(dtype)
    v = (0.5 * torch.randn(B, N, H, D, generator=g)).to(dtype)
    mu, log_sigma, mix = 0.5 * torch.randn(H, K, D, generator=g), 0.1 * torch.randn(H, K, D, generator=g), torch.randn(H, K, generator=g)
    inputs = [t.requires_grad_() for t in (q, k, v, mu, log_sigma, mix)]
    with torch.no_grad():   # inference: the forward kernels in fp16 precision
        gma_triton(*inputs, causal=causal)
    out = gma_triton(*inputs, causal=causal)   # training: split forward and backward
    out.float().sum().backward()
    unique = {json.dumps(x, sort_keys=True): x for x in launches}
    return list(unique.values())


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_launches_compile_for_sm90(monkeypatch, causal):
    launches = _record_launches(monkeypatch, causal, torch.bfloat16)
    names = {x["name"] for x in launches}
    assert len(names) >= 4, names  # prep, forward passes, backward passes, parameter gradients
    # the key pass twice: fp16 products (inference) and split (training)
    assert sum(x["name"] == "_state_kernel" for x in launches) == 2, launches
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", COMPILE], input=json.dumps(launches), text=True,
                          capture_output=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert done.stdout.count("compiled") == len(launches)
