"""scripts/quad_form.py's quadratic form of causal GMA under Triton's interpreter: every
configuration within the SPEC's bound against float64, N a multiple of no block size."""

import pytest

pytest.importorskip("triton")


def test_quadratic_form_computes_causal_gma(form_timing):
    done, rows = form_timing.run_interpreted("quad_form.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(rows) == {"quad_16x16_w4_s2", "quad_32x16_w4_s2", "quad_16x32_w4_s2",
                         "quad_16x16_w4_s2_raw"}
    for name, (err, bound) in rows.items():
        assert 0 < err <= bound, (name, err, bound)
    assert done.stdout.strip().endswith("ok")
