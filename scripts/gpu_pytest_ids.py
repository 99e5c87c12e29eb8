"""The GPU-marked tests of a device call's pytest job, one per line with the GPUs it may see.

    python3 scripts/gpu_pytest_ids.py --gpus 0,1 [-k EXPR] [--durations JUNIT.xml] > ids.txt

Each line is `GPUS NODEID`. A test marked `gpus2` (it needs two GPUs) gets every GPU of the lane;
every other test one GPU of the lane, in turn, so that a lane of several GPUs runs its tests on
all of them at once: scripts/gpu_session.sh, job `pytest` with GPU_PYTEST_PROCS > 1, where each
test is a process of its own started with CUDA_VISIBLE_DEVICES=GPUS. With --durations (the JUnit
XML of an earlier run), the longest tests come first and tests it does not list before them,
so that no long test starts last (longest processing time first): on two H200s, 12 at a time in
collection order, every GPU test took 434 s, its slowest (fla's, 156-203 s each) among the
last 50 (results/2026-12-01-h200x2-gpu-tests-2/, whose pytest-gpu.xml gpu_session.sh passes).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assign(single: list[str], multi: list[str], gpus: list[str]) -> list[tuple[str, str]]:
    """(GPUS, test) for every test: `single` ones round-robin over the lane's GPUs, `multi` ones
    (marked gpus2) with all of them."""
    if not gpus:
        raise ValueError("no GPU in the lane")
    return [(gpus[i % len(gpus)], t) for i, t in enumerate(single)] + \
           [(",".join(gpus), t) for t in multi]


def durations(junit: Path) -> dict[str, float]:
    """Seconds per node id of the tests in a JUnit XML file (pytest's, one test per testcase:
    classname `tests.gma.test_triton` and name `test_x[p]` for tests/gma/test_triton.py::test_x[p])."""
    secs = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module, name = case.get("classname", ""), case.get("name", "")
        if module and name:
            secs[f"{module.replace('.', '/')}.py::{name}"] = float(case.get("time", 0))
    return secs


def longest_first(tests: list[str], secs: dict[str, float]) -> list[str]:
    """tests by their earlier run's time, longest first; those it did not time (new ones) ahead of
    all, in collection order."""
    return sorted(tests, key=lambda t: -secs.get(t, math.inf))


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
    ap.add_argument("--durations", type=Path, help="an earlier run's JUnit XML: longest first")
    args = ap.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",")]
    if not all(g.isdigit() for g in gpus):
        ap.error(f"--gpus {args.gpus!r}: expected GPU indices such as 0 or 0,1")
    try:
        secs = durations(args.durations) if args.durations else {}
    except (OSError, ET.ParseError) as err:
        ap.error(f"--durations {args.durations}: {err}")
    select = ["-k", args.expr] if args.expr else []
    single = longest_first(collect("gpu and not gpus2", select), secs)
    for dev, test in assign(single, collect("gpu and gpus2", select), gpus):
        print(dev, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
