"""What the scripts that time forms of one GMA kernel share (fused_walk_first.py, quad_form.py).

Each of them launches several forms of the same function on the issue's target shape, checks
every form's output, and times them replayed from a CUDA graph after an L2 flush, as gmabench's
cells are, interleaved so that drift hits every form alike. Under Triton's interpreter they time
nothing and check each form against the float64 formula instead, printing one `check_line` per
form; their tests run them so (`run_interpreted`) and read those lines back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import torch

CHECK_LINE = re.compile(r"^(\w+)\s+max error / max \|o\| (\S+)\s+\(bound (\S+)\)$", re.M)


def arg_parser(doc):
    """--out, --n (2048) and --reps (3), described by the script's docstring's first line."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    return ap


def verdict(bad):
    """End of an interpreter check: print the failed forms (or ok); the exit status."""
    print("FAILED: " + ", ".join(bad) if bad else "ok")
    return 1 if bad else 0


def inputs(N, B=1, H=16, D=64, K=64, device="cpu", seed=0):
    """q, k, v (B, N, H, D) bf16 at 0.5 x unit scale, and a mixture of K components per head."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (0.5 * torch.randn(B, N, H, D, generator=g) for _ in range(3))
    mu = torch.randn(H, K, D, generator=g) * 0.5
    ls = torch.randn(H, K, D, generator=g) * 0.1
    mix = torch.randn(H, K, generator=g) * 0.1
    bf = [t.to(device, torch.bfloat16) for t in (q, k, v)]
    return (*bf, *(t.to(device) for t in (mu, ls, mix)))


def rel_err(a, b):
    """Largest elementwise difference over the largest |b|."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def check_line(name, err, bound):
    """The interpreter check's line for one form (CHECK_LINE reads it back)."""
    print(f"{name:24s} max error / max |o| {err:.3e}  (bound {bound:.3e})")


def time_interleaved(runs, device, reps):
    """{name: [median us of each repetition]}: every form replayed from a CUDA graph after an L2
    flush (gmabench.measure.timing), the forms taking turns, reps times."""
    from gmabench.measure.timing import time_callable
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            times[name].append(time_callable(fn, device, graph=True).median_ms * 1e3)
    return times


def print_times(times, errors):
    for name, ts in times.items():
        print(f"{name:24s} {' '.join(f'{t:7.2f}' for t in ts)} us"
              + (f"   err vs call {errors[name]:.2e}" if name in errors else ""))


def write_json(out_dir, filename, payload):
    """payload with the machine and the timer, as DIR/filename (nothing without out_dir)."""
    import triton
    if not out_dir:
        return
    os.makedirs(out_dir, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__,
            "timer": "cuda_graph replay after an L2 flush (gmabench.measure.timing), median us"}
    with open(os.path.join(out_dir, filename), "w") as fh:
        json.dump({**payload, **meta}, fh, indent=1)


def run_interpreted(name, timeout=600):
    """Run scripts/NAME under TRITON_INTERPRET=1; (its CompletedProcess, {form: (error, bound)})."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                          timeout=timeout)
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in CHECK_LINE.finditer(done.stdout)}
    return done, rows
