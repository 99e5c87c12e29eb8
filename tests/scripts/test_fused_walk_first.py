"""scripts/fused_walk_first.py's forms of the fused causal inference kernel, under Triton's
interpreter: those that compute GMA within the SPEC's bound, the walk without its start outside."""

import pytest

pytest.importorskip("triton")


def test_walk_first_forms_compute_gma_and_walk_only_does_not(form_timing):
    done, rows = form_timing.run_interpreted("fused_walk_first.py")
    assert done.returncode == 0, done.stdout + done.stderr
    exact = [n for n in rows if n != "walk_only"]
    assert {"fused", "walk_first", "walk_first_grp4", "walk_first_f16"} <= set(exact)
    for name in exact:
        err, bound = rows[name]
        assert err <= bound, (name, err, bound)
    err, bound = rows["walk_only"]
    assert err > 100 * bound   # its segments past the first miss their start
    assert done.stdout.strip().endswith("ok")
