"""scripts/quad_form.py's quadratic form of causal GMA under Triton's interpreter: every
configuration within the SPEC's bound against float64, N a multiple of no block size."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quad_form.py"


def test_quadratic_form_computes_causal_gma():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = dict((m.group(1), (float(m.group(2)), float(m.group(3)))) for m in re.finditer(
        r"^(\w+)\s+max error / max \|o\| (\S+)\s+\(bound (\S+)\)$", done.stdout, re.M))
    assert set(rows) == {"quad_16x16_w4_s2", "quad_32x16_w4_s2", "quad_16x32_w4_s2",
                         "quad_16x16_w4_s2_raw"}
    for name, (err, bound) in rows.items():
        assert 0 < err <= bound, (name, err, bound)
    assert done.stdout.strip().endswith("ok")
