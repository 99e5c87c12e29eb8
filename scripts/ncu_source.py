"""Where a fused GMA kernel's warps wait, per instruction and per source line (Nsight Compute).

Two commands, used by gpu_session.sh's job `srcprofile`:

    python3 scripts/ncu_source.py call [--n 131072] [--bidir] [--mode fwd_bwd]
        one warm-up call of gma_triton (compiles), then one call between cudaProfilerStart and
        cudaProfilerStop: what `ncu --profile-from-start off` profiles
    python3 scripts/ncu_source.py summarize PAGE.csv [--top 40]
        a source page exported by `ncu -i REP --page source --csv --print-source sass` (or cuda):
        the sampled warp stalls summed per opcode (SASS) or per source line, and the
        instructions or lines that hold the most of them

The summary reads whatever stall-sampling columns the page has (their names differ between
Nsight Compute versions), so it prints the columns it used.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def call(n: int, causal: bool, mode: str) -> None:
    import torch

    from gmabench.gma.triton import gma_triton

    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, grad=False, dtype=torch.bfloat16):
        t = (torch.randn(*shape, device="cuda", generator=g) * 0.5).to(dtype)
        return t.requires_grad_(grad)

    B, H, D, K = 1, 16, 64, 64
    train = mode == "fwd_bwd"
    q, k, v = (rnd(B, n, H, D, grad=train) for _ in range(3))
    mu = rnd(H, K, D, grad=train, dtype=torch.float32)
    ls = (rnd(H, K, D, dtype=torch.float32) * 0.2).requires_grad_(train)
    mix = rnd(H, K, grad=train, dtype=torch.float32)
    do = rnd(B, n, H, D)

    def once():
        o = gma_triton(q, k, v, mu, ls, mix, causal=causal)
        if train:
            torch.autograd.grad(o, (q, k, v, mu, ls, mix), do)
        torch.cuda.synchronize()

    once()
    torch.cuda.cudart().cudaProfilerStart()
    once()
    torch.cuda.cudart().cudaProfilerStop()


def _num(s: str) -> float | None:
    s = s.strip().replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def _tables(path: str):
    """The CSV tables of a page: a row equal to the first header starts a new one."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header, body, out = None, [], []
    for r in rows:
        if header is None:
            if any("Source" in c or "Address" in c for c in r):
                header = r
            continue
        if r == header:
            out.append((header, body))
            body = []
            continue
        body.append(r)
    if header is not None:
        out.append((header, body))
    return out


OPCODE = re.compile(r"^\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?")


def summarize(path: str, top: int) -> None:
    for header, body in _tables(path):
        src = next(i for i, c in enumerate(header) if c.strip() in ("Source", "# Source")
                   or c.strip().endswith("Source"))
        stall_cols = [i for i, c in enumerate(header) if "Sampl" in c or "stall" in c.lower()]
        inst_col = next((i for i, c in enumerate(header) if c.startswith("Instructions Executed")
                         or c == "Warp Instructions Executed"), None)
        if not stall_cols:
            print(f"{path}: no stall-sampling column in {header}")
            continue
        main = next((i for i in stall_cols if "All" in header[i]), stall_cols[0])
        print(f"== {os.path.basename(path)}: {len(body)} rows; columns used: "
              f"{[header[i] for i in stall_cols]}" + (f", {header[inst_col]}" if inst_col else ""))
        total = sum(_num(r[main]) or 0.0 for r in body if len(r) > main)
        if not total:
            print("no samples")
            continue
        sass = any(OPCODE.match(r[src]) for r in body[:50] if len(r) > src)
        groups: dict[str, list[float]] = defaultdict(lambda: [0.0] * (len(stall_cols) + 2))
        for r in body:
            if len(r) <= max(stall_cols + [src]):
                continue
            if sass:
                m = OPCODE.match(r[src])
                key = m.group(1) + (m.group(2) or "") if m else "?"
                key = re.sub(r"\.(\d+|[A-Z]\d*)$", "", key) if key.startswith(("LDS", "STS")) else key
            else:
                key = r[src].strip()[:90]
            g = groups[key]
            for j, i in enumerate(stall_cols):
                g[j] += _num(r[i]) or 0.0
            g[-2] += 1
            g[-1] += (_num(r[inst_col]) or 0.0) if inst_col is not None else 0.0
        label = "opcode" if sass else "source line"
        print(f"-- samples per {label} ({header[main]}: {total:.0f} in all)")
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][stall_cols.index(main)])
        for key, g in ranked[:top]:
            share = g[stall_cols.index(main)] / total
            extra = "  ".join(f"{header[i].split('(')[-1].rstrip(')')[:18]}={g[j]:.0f}"
                              for j, i in enumerate(stall_cols) if i != main)
            print(f"{share:7.2%}  {g[stall_cols.index(main)]:9.0f}  n={g[-2]:<5.0f} "
                  f"inst={g[-1]:<11.0f} {key}  {extra}")
        if sass:
            print(f"-- the {top} instructions with the most samples")
            rows = sorted((r for r in body if len(r) > main), key=lambda r: -(_num(r[main]) or 0))
            for r in rows[:top]:
                print(f"{(_num(r[main]) or 0) / total:7.2%}  {r[src].strip()[:100]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call")
    c.add_argument("--n", type=int, default=131072)
    c.add_argument("--bidir", action="store_true")
    c.add_argument("--mode", choices=("fwd", "fwd_bwd"), default="fwd_bwd")
    s = sub.add_parser("summarize")
    s.add_argument("pages", nargs="+")
    s.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    if a.cmd == "call":
        call(a.n, not a.bidir, a.mode)
    else:
        for p in a.pages:
            summarize(p, a.top)


if __name__ == "__main__":
    main()
