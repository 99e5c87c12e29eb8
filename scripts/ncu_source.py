"""Where a fused GMA kernel's warps wait, per SASS instruction (Nsight Compute's stall sampling).

Two commands, used by gpu_session.sh's job `srcprofile`:

    python3 scripts/ncu_source.py call [--n 131072] [--bidir] [--mode fwd_bwd]
        one warm-up call of gma_triton (compiles), then one call between cudaProfilerStart and
        cudaProfilerStop: what `ncu --profile-from-start off` profiles
    python3 scripts/ncu_source.py summarize PAGE.csv[.gz] ... [--top 25]
        a source page exported by `ncu -i REP --page source --csv --print-source sass`: the
        sampled warp stalls by reason, per opcode and per instruction, and the share of them
        that waits on a spilled register coming back (summarize's docstring)
"""

from __future__ import annotations

import argparse
import csv
import gzip
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


def _num(s: str) -> float:
    try:
        return float(s.strip().replace(",", ""))
    except ValueError:
        return 0.0


def read_page(path: str) -> tuple[str, list[dict]]:
    """(kernel name, one dict per SASS instruction) of a source page exported with
    `ncu -i REP --page source --csv --print-source sass` (plain or gzipped): a "Kernel Name" line,
    then a header row and one row per instruction."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    kernel = next((r[1] for r in rows if r[0] == "Kernel Name" and len(r) > 1), "?")
    at = next(i for i, r in enumerate(rows) if "Source" in r and "Address" in r)
    header = rows[at]
    return kernel, [dict(zip(header, r)) for r in rows[at + 1:] if len(r) == len(header)]


OPCODE = re.compile(r"^\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
LOADS = ("LDL", "LDG", "LDS", "LDSM", "ATOM")   # whose results a long or short scoreboard waits on
NO_DEST = ("ST", "RED", "BAR", "BRA", "WARPGROUP", "FENCE", "EXIT", "NOP")   # their first R is read


def _dest_and_sources(text: str) -> tuple[str, set[str]]:
    ops = text.split(None, 1)[1] if " " in text.strip() else ""
    ops = ops.split(" ", 1)[1] if text.strip().startswith("@") and " " in ops else ops
    regs = re.findall(r"\bR(\d+)\b", ops)
    return (regs[0] if regs else ""), set(regs[1:])


BRANCH = re.compile(r"\bBRA\s+(0x[0-9a-fA-F]+)")


def _where(rows: list[dict], samples: str, total: float) -> str:
    """Samples before, in and after the block loop: the widest backward branch that ran (the
    walk over blocks; a branch that never ran, such as a fallback walk's, does not count, and
    neither does a narrower loop inside a kernel's start that runs more often at small N, such
    as the sum of the earlier segments' totals). What lies outside it is a kernel's fixed cost."""
    at = [int(r["Address"], 16) for r in rows]
    loop = None
    for a, r in zip(at, rows):
        m = BRANCH.search(r["Source"])
        if not m or _num(r["Instructions Executed"]) <= 0:
            continue
        target = int(m.group(1), 16)
        if target < a and (loop is None or a - target > loop[1] - loop[0]):
            loop = (target, a)
    if loop is None:
        return "samples by place: no loop"
    parts = [0.0, 0.0, 0.0]
    for a, r in zip(at, rows):
        parts[0 if a < loop[0] else 1 if a <= loop[1] else 2] += _num(r[samples])
    return ("samples by place: before the block loop {:.1%}, in it {:.1%}, after it {:.1%}"
            .format(*(x / total for x in parts)))


def summarize(path: str, top: int = 25) -> str:
    """The sampled stall reasons of one kernel: in all, per opcode, the instructions holding the
    most samples, and how many samples wait on a register that a local-memory load (a spill)
    brings back: an instruction stalled on the long scoreboard whose source register was last
    written by an LDL."""
    kernel, rows = read_page(path)
    samples = "Warp Stall Sampling (All Samples)"
    reasons = [c for c in rows[0] if c.startswith("stall_") and "(" not in c]
    total = sum(_num(r[samples]) for r in rows) or 1.0
    out = [f"== {kernel}: {len(rows)} SASS instructions, {total:.0f} samples, "
           f"{sum(_num(r['Instructions Executed']) for r in rows):.4g} warp instructions executed"]
    by_reason = {c[6:]: sum(_num(r[c]) for r in rows) / total for c in reasons}
    out.append("stall reasons: " + "  ".join(
        f"{k} {v:.1%}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]) if v >= 0.005))
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in rows:
        m = OPCODE.match(r["Source"])
        g = ops[m.group(1) if m else "?"]
        g[0] += _num(r[samples])
        g[1] += _num(r["Instructions Executed"])
        g[2] += 1
    executed = sum(g[1] for g in ops.values()) or 1.0
    out.append("-- per opcode: share of samples, of instructions executed, count in the code")
    for op, g in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        out.append(f"{op:12s} {g[0] / total:6.1%} {g[1] / executed:6.1%} {g[2]:5.0f}")
    waits: dict[str, float] = defaultdict(float)
    last_load: dict[str, str] = {}
    for r in rows:     # program order; a loop's back edge is ignored (the text is straight)
        dest, srcs = _dest_and_sources(r["Source"])
        stalled = _num(r.get("stall_long_sb", "0"))
        if stalled:
            kinds = {last_load[x] for x in srcs if x in last_load}
            waits["LDL" if "LDL" in kinds else (sorted(kinds)[0] if kinds else "no writer seen")] \
                += stalled
        m = OPCODE.match(r["Source"])
        op = m.group(1) if m else ""
        if dest and not op.startswith(NO_DEST):
            last_load[dest] = op if op.startswith(LOADS) else "not a load"
    out.append("long-scoreboard samples by the load that last wrote a source register: " +
               "  ".join(f"{k} {v / total:.1%}" for k, v in
                         sorted(waits.items(), key=lambda kv: -kv[1])))
    out.append(_where(rows, samples, total))
    out.append(f"-- the {top} instructions with the most samples (share, top reasons)")
    for r in sorted(rows, key=lambda r: -_num(r[samples]))[:top]:
        why = sorted(((_num(r[c]), c[6:]) for c in reasons), reverse=True)[:2]
        out.append(f"{_num(r[samples]) / total:6.2%}  {r['Source'].strip()[:64]:64s} " +
                   " ".join(f"{k} {v:.0f}" for v, k in why if v))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call")
    c.add_argument("--n", type=int, default=131072)
    c.add_argument("--bidir", action="store_true")
    c.add_argument("--mode", choices=("fwd", "fwd_bwd"), default="fwd_bwd")
    s = sub.add_parser("summarize")
    s.add_argument("pages", nargs="+")
    s.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    if a.cmd == "call":
        call(a.n, not a.bidir, a.mode)
    else:
        for p in a.pages:
            print(summarize(p, a.top))


if __name__ == "__main__":
    main()
