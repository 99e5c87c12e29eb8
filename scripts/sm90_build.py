"""The fused GMA kernels of one call, built for Hopper (sm_90a) on a machine without a GPU.

    TRITON_INTERPRET=1 python scripts/sm90_build.py --d 128 --k 64 --causal \
        --knobs '{"warps_fwd": 8}' [--dtype bf16] [--inference-only] [--sass-dir DIR] \
        [--plan-shape 1,131072,16] [--python /path/to/venv-with-the-GPU's-triton/bin/python]

A training call (and an inference call before it) of a small shape is run under Triton's CPU
interpreter with the launch plan an H200 would get for the shape (plan.py; the knobs are
plan.TUNING's; with --plan-shape B,N,H the plan of that shape on an H200, whose rules can
differ from the small one's: at the table's shapes from B*H*N = 2^15 tokens (2^16, 2^20: plan.py)
the backward stores dl and walks 32-token query blocks), each kernel launch is recorded, and every distinct launch is compiled ahead of
time for sm_90a in a subprocess where the kernels are ordinary JIT functions. Printed per kernel:
warps, stages, registers per thread, spill bytes (ptxas -v), shared memory and the SASS's
instruction counts, the block loop's apart (sass_counts). What the GPU would
run, minus the timing: the way to weigh a plan before a device call (docs/kernels.md).
tests/gma/test_triton_compile.py checks with the same two functions that every launch compiles.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMEM = 232448   # bytes of shared memory one block may use on sm_90
H200_SMS = 132   # the GPU whose plans --plan-shape builds
TYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32",
         "torch.int32": "i32"}


def _describe(value):
    import torch
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype)}
    if isinstance(value, bool):
        return {"kind": "i1", "value": value}
    if isinstance(value, int):
        return {"kind": "i32", "value": value}
    if isinstance(value, float):
        return {"kind": "fp32", "value": value}
    return {"kind": "other", "value": value}


def _plan_at(plan_mod, shape: tuple[int, int, int], sms: int = H200_SMS):
    """plan_mod.make_plan giving the plan of the shape (B, N, H) on a GPU of `sms` SMs instead of
    the call's own, with the call's own segments (P, blocks per segment) so that it runs under
    the interpreter: the kernels' constants, warps and stages are the larger shape's."""
    import dataclasses

    import triton
    make_plan = plan_mod.make_plan

    def at_shape(B, N, H, K, D, DV, causal, device, grad=True, split_dx=False, f32=False,
                 tf32x3=False):
        count = plan_mod._sm_count
        plan_mod._sm_count = lambda device: sms   # the segments, and what rests on them
        try:
            big = make_plan(*shape, K, D, DV, causal, device, grad, split_dx, f32, tf32x3)
        finally:
            plan_mod._sm_count = count
        own = make_plan(B, N, H, K, D, DV, causal, device, grad, split_dx, f32, tf32x3)
        bps = triton.cdiv(triton.cdiv(N, big.BLOCK), own.P)
        P = triton.cdiv(triton.cdiv(N, big.BLOCK), bps)
        return dataclasses.replace(
            big, P=P, bps=bps, bps_bwd=bps * (big.BLOCK // big.BLOCK_BWD),
            bps_key=bps * (big.BLOCK // big.BLOCK_KEY),
            bps_bwd_k=bps * (big.BLOCK // big.BLOCK_BWD_K), FUSE_FWD=big.FUSE_FWD and P > 1)
    return at_shape


def record_launches(causal: bool, dtype, D: int, DV: int, K: int, knobs: dict | None = None,
                    inference_only: bool = False, N: int = 200,
                    plan_shape: tuple[int, int, int] | None = None) -> list[dict]:
    """The distinct kernel launches of an inference call and (unless inference_only) a training
    call at (B=1, N, H=1, D, DV, K), with the plans a GPU would get. Needs TRITON_INTERPRET=1 set
    before triton is imported. N=200 is long enough for the causal plans to take several segments
    (a key pass); at every shape the tests build, it records the same launches as N=600 did
    (kernels, constants, warps, stages), 2.5-3x sooner under the interpreter. plan_shape:
    (B, N, H) whose plan the call takes (_plan_at)."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from gmabench.gma.triton import call as call_mod
    from gmabench.gma.triton import gma_triton
    from gmabench.gma.triton import plan as plan_mod

    launches = []
    original = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in kwargs}
        names = self.arg_names
        bound = dict(zip(names, args), **kwargs)
        bound = {k: (False if k == "INTERP" else v) for k, v in bound.items()}   # the GPU build
        launches.append({"module": self.fn.__module__, "name": self.fn.__name__,
                         "options": options, "args": [_describe(bound[n]) for n in names]})
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    saved = (InterpretedFunction.run, plan_mod.INTERPRET, dict(plan_mod.TUNING),
             call_mod.make_plan)
    InterpretedFunction.run = recording_run
    if plan_shape:
        call_mod.make_plan = _plan_at(plan_mod, plan_shape)
    plan_mod.INTERPRET = False     # the GPU's plan (the interpreter's picks block 16, 1 stage)
    plan_mod._PLANS.clear()
    plan_mod.TUNING.update(knobs or {})
    try:
        g = torch.Generator().manual_seed(3)
        B, H = 1, 1
        q = (0.5 * torch.randn(B, N, H, D, generator=g)).to(dtype)
        k = (0.5 * torch.randn(B, N, H, D, generator=g)).to(dtype)
        v = (0.5 * torch.randn(B, N, H, DV, generator=g)).to(dtype)
        mu = 0.5 * torch.randn(H, K, D, generator=g)
        log_sigma = 0.1 * torch.randn(H, K, D, generator=g)
        mix = torch.randn(H, K, generator=g)
        inputs = [t.requires_grad_() for t in (q, k, v, mu, log_sigma, mix)]
        with torch.no_grad():   # inference: the forward kernels in fp16 precision
            gma_triton(*inputs, causal=causal)
        if not inference_only:
            out = gma_triton(*inputs, causal=causal)   # training: forward and backward
            out.float().sum().backward()
    finally:
        InterpretedFunction.run, plan_mod.INTERPRET, call_mod.make_plan = saved[0], saved[1], saved[3]
        plan_mod.TUNING.clear()
        plan_mod.TUNING.update(saved[2])
        plan_mod._PLANS.clear()
    unique = {json.dumps(x, sort_keys=True): x for x in launches}
    return list(unique.values())


def _ptxas_stats(ptx: str, ptxas: str) -> dict:
    """Registers per thread and spill bytes of a kernel's PTX, as ptxas -v reports them, and
    the counts of its SASS (sass_counts; cuobjdump beside ptxas)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(src), "-o",
                               str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
        sass = subprocess.run([str(Path(ptxas).with_name("cuobjdump")), "-sass",
                               str(Path(tmp) / "k.cubin")], capture_output=True, text=True).stdout
    if os.environ.get("SM90_SASS_DIR"):   # the SASS kept, one file per launch (--sass-dir):
        name = re.search(r"\.entry\s+(\w+)", ptx)   # NAME.sass, a kernel's later launches
        name = name.group(1) if name else "kernel"   # with other constants NAME-2.sass, ...
        out = Path(os.environ["SM90_SASS_DIR"], f"{name}.sass")
        for i in itertools.count(2):
            if not out.exists():
                break
            out = out.with_name(f"{name}-{i}.sass")
        out.write_text(sass)
    text = done.stdout + done.stderr
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {"regs": int(regs.group(1)) if regs else None,
            "spill_stores": int(stores.group(1)) if stores else None,
            "spill_loads": int(loads.group(1)) if loads else None, **sass_counts(sass)}


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_counts(sass: str) -> dict:
    """Static instruction counts of a kernel's SASS (cuobjdump -sass): all of them and the
    tensor-core products (HMMA for mma.sync, HGMMA for wgmma); then those of its longest loop,
    the instructions between the target and the source of the branch that jumps back the
    farthest, which in these kernels is the block loop: per warp and block, its instructions,
    products, barriers (BAR), shuffles (SHFL) and spill loads and stores (LDL, STL)."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _SASS_LINE.findall(sass)]
    loop = None
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            span = (int(target.group(1), 16), addr)
            if loop is None or span[1] - span[0] > loop[1] - loop[0]:
                loop = span
    body = [op.split(".")[0] for addr, op, _ in ins if loop and loop[0] <= addr <= loop[1]]
    return {"sass": len(ins), "mma": sum(op.startswith(("HMMA", "HGMMA")) for _, op, _ in ins),
            "loop": len(body), "loop_mma": sum(op in ("HMMA", "HGMMA") for op in body),
            **{f"loop_{op.lower()}": body.count(op) for op in ("BAR", "SHFL", "LDL", "STL")}}


def _compile_all(launches: list[dict], stats: bool) -> tuple[list[dict], list[str]]:
    """Compile each launch for sm_90a (no interpreter); a launch over the shared memory of an
    sm_90 block is retried with one stage, as the launcher does on OutOfResources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.backends.nvidia.compiler import get_ptxas   # the one Triton builds sm_90a with
    ptxas = get_ptxas(90).path
    rows, failures = [], []
    for launch in launches:
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
        # What the GPU's JIT assumes of every fresh torch allocation: pointers 16-byte aligned.
        # Without it the loads are not vectorised and the build is another kernel (twice the
        # instructions per block, other spills) than the one the H200 runs.
        attrs = {(i,): [["tt.divisibility", 16]]
                 for i, (p, arg) in enumerate(zip(fn.params, launch["args"]))
                 if not p.is_constexpr and arg["kind"] == "tensor"}
        options = dict(launch["options"])
        try:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
            if kernel.metadata.shared > SMEM and options.get("num_stages", 3) > 1:
                options["num_stages"] = 1
                kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        except Exception as exc:   # noqa: BLE001 - reported, and the exit status says so
            failures.append(f"{launch['name']}: {type(exc).__name__}: {str(exc)[:2000]}")
            continue
        row = {"name": launch["name"], **options, "shared": kernel.metadata.shared,
               # programmatic dependent launch: the waits in the PTX (common._gdc, GDC)
               "gdc_waits": kernel.asm["ptx"].count("griddepcontrol.wait")}
        if kernel.metadata.shared > SMEM:
            failures.append(f"{launch['name']} {options}: {kernel.metadata.shared} B of shared memory")
        if stats:
            row.update(_ptxas_stats(kernel.asm["ptx"], ptxas))
        rows.append(row)
        print("compiled", json.dumps(row), flush=True)
    return rows, failures


def compile_launches(launches: list[dict], stats: bool = False, timeout: int = 900):
    """Build the launches for sm_90a in a fresh process without the interpreter. Returns
    (returncode, rows, output): one row per launch built (name, num_warps, num_stages, shared,
    and with stats the registers and spill bytes). $SM90_PYTHON (--python): the interpreter that
    builds them, e.g. a virtual environment with the GPU machine's Triton, whose ptxas allocates
    registers otherwise than a newer one's (docs/kernels.md, Version 2.21)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    python = os.environ.get("SM90_PYTHON") or sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--compile-stdin"]
    if stats:
        cmd.append("--stats")
    done = subprocess.run(cmd, input=json.dumps(launches), text=True, capture_output=True,
                          env=env, timeout=timeout)
    rows = [json.loads(line[len("compiled "):]) for line in done.stdout.splitlines()
            if line.startswith("compiled ")]
    return done.returncode, rows, done.stdout[-4000:] + done.stderr[-4000:]


def _shape(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--plan-shape wants B,N,H (positive integers), got {text!r}")
    return tuple(int(p) for p in parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile-stdin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stats", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, default=64, help="D (and Dv unless --dv)")
    ap.add_argument("--dv", type=int, default=None)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--knobs", default="{}", help="plan.TUNING knobs as JSON")
    ap.add_argument("--inference-only", action="store_true")
    ap.add_argument("--plan-shape", help="B,N,H: build the kernels with the plan of that shape "
                    "(e.g. 1,131072,16, the targets'), not the small recorded call's")
    ap.add_argument("--sass-dir", help="keep each kernel's SASS there (NAME.sass)")
    ap.add_argument("--python", help="build with this Python (and its Triton), e.g. a virtual "
                    "environment with the GPU machine's Triton version; the launches are "
                    "still recorded under this one's interpreter")
    args = ap.parse_args(argv)
    try:
        plan_shape = _shape(args.plan_shape)
    except ValueError as e:
        ap.error(str(e))   # exit code 2
    if args.python:   # read by compile_launches
        os.environ["SM90_PYTHON"] = args.python
    if args.sass_dir:   # read by the compiling subprocess, which inherits the environment
        Path(args.sass_dir).mkdir(parents=True, exist_ok=True)
        for old in Path(args.sass_dir).glob("*.sass"):   # numbered per build: none left over
            old.unlink()
        os.environ["SM90_SASS_DIR"] = str(Path(args.sass_dir).resolve())
    if args.compile_stdin:
        rows, failures = _compile_all(json.loads(sys.stdin.read()), args.stats)
        print("\n".join(failures))
        return 1 if failures else 0
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("sm90_build.py: set TRITON_INTERPRET=1 (the launches are recorded under the "
              "interpreter)", file=sys.stderr)
        return 2
    import torch
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    launches = record_launches(args.causal, dtype, args.d, args.dv or args.d, args.k,
                               json.loads(args.knobs), args.inference_only,
                               plan_shape=plan_shape)
    code, rows, output = compile_launches(launches, stats=True)
    for r in rows:
        print(f"{r['name']:26s} warps {r.get('num_warps')} stages {r.get('num_stages')}: "
              f"{r.get('regs')} regs, spill {r.get('spill_stores')} B, {r['shared']} B shared, "
              f"{r.get('sass')} SASS instructions ({r.get('mma')} MMA); longest loop "
              f"{r.get('loop')} ({r.get('loop_mma')} MMA, {r.get('loop_bar')} BAR, "
              f"{r.get('loop_shfl')} SHFL, {r.get('loop_ldl')} LDL, {r.get('loop_stl')} STL)")
    if code:
        print(output, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
