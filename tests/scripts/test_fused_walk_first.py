"""scripts/fused_walk_first.py's forms of the fused causal inference kernel, under Triton's
interpreter: those that compute GMA within the SPEC's bound, the walk without its start outside."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fused_walk_first.py"


def test_walk_first_forms_compute_gma_and_walk_only_does_not():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = dict((m.group(1), (float(m.group(2)), float(m.group(3)))) for m in re.finditer(
        r"^(\w+)\s+max error / max \|o\| (\S+)\s+\(bound (\S+)\)$", done.stdout, re.M))
    exact = [n for n in rows if n != "walk_only"]
    assert {"fused", "walk_first", "walk_first_grp4", "walk_first_f16"} <= set(exact)
    for name in exact:
        err, bound = rows[name]
        assert err <= bound, (name, err, bound)
    err, bound = rows["walk_only"]
    assert err > 100 * bound   # its segments past the first miss their start
    assert done.stdout.strip().endswith("ok")
