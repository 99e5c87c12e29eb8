"""scripts/gpu_session.sh refuses what a device command cannot finish, before touching anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args, env=None):
    out = tmp_path / "out"
    out.mkdir()
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), *args],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(out), **(env or {})}, timeout=60), out


def test_more_minutes_than_a_device_command_leaves_room_for_exit_2(tmp_path):
    proc, out = _run(tmp_path, "13", "0/check")
    assert proc.returncode == 2
    assert "13 minutes is over the 8" in proc.stderr
    assert list(out.iterdir()) == []          # nothing started, nothing written


def test_the_limit_can_be_raised_for_longer_commands_elsewhere(tmp_path):
    proc, _ = _run(tmp_path, "13", env={"GPU_SESSION_MAX_MINUTES": "20"})
    assert proc.returncode == 2 and "usage" in proc.stderr     # past the minutes check: no jobs


def test_no_jobs_is_a_usage_error(tmp_path):
    proc, _ = _run(tmp_path, "5")
    assert proc.returncode == 2 and "usage: gpu_session.sh MINUTES JOB" in proc.stderr
