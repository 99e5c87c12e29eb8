"""The GPU-marked tests of a device call's pytest job, one per line with the GPUs it may see.

    python3 scripts/gpu_pytest_ids.py --gpus 0,1 [-k EXPR] > ids.txt

Each line is `GPUS NODEID`. A test marked `gpus2` (it needs two GPUs) gets every GPU of the lane;
every other test one GPU of the lane, in turn, so that a lane of several GPUs runs its tests on
all of them at once: scripts/gpu_session.sh, job `pytest` with GPU_PYTEST_PROCS > 1, where each
test is a process of its own started with CUDA_VISIBLE_DEVICES=GPUS. (On two H200s, two lanes
split by folder ran every GPU test of the project in 451 + 47 s, where one GPU had not finished
them in 7 minutes: results/2026-11-30-h200x2-gpu-tests/.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assign(single: list[str], multi: list[str], gpus: list[str]) -> list[tuple[str, str]]:
    """(GPUS, test) for every test: `single` ones round-robin over the lane's GPUs, `multi` ones
    (marked gpus2) with all of them."""
    if not gpus:
        raise ValueError("no GPU in the lane")
    return [(gpus[i % len(gpus)], t) for i, t in enumerate(single)] + \
           [(",".join(gpus), t) for t in multi]


def collect(marks: str, select: list[str]) -> list[str]:
    """Node ids of the tests pytest selects with -m MARKS (and -k, when given), the report's
    tests left out as gpu_session.sh always has (they need plotly, absent on the GPU image)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marks, *select,
           "--ignore=tests/report", "-p", "no:cacheprovider", "-o", "addopts="]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode not in (0, 5):   # 5: nothing selected
        raise SystemExit(f"pytest could not collect the tests:\n{out.stdout}{out.stderr}")
    return [line for line in out.stdout.splitlines() if "::" in line]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", required=True, help="the lane's GPU indices, comma-separated")
    ap.add_argument("-k", dest="expr", help="pytest -k: the tests to select")
    args = ap.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",")]
    if not all(g.isdigit() for g in gpus):
        ap.error(f"--gpus {args.gpus!r}: expected GPU indices such as 0 or 0,1")
    select = ["-k", args.expr] if args.expr else []
    for dev, test in assign(collect("gpu and not gpus2", select), collect("gpu and gpus2", select),
                            gpus):
        print(dev, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
