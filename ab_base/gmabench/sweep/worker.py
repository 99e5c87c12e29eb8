"""The worker process: owns one device, measures the cells it is sent, answers with records.

Started with the "spawn" method so the supervisor never touches CUDA and every worker begins
with a clean CUDA context and allocator. This module imports torch only inside the process.

Protocol over a Pipe: the worker first sends ("ready", env); then for each ("cell", dict) it
answers ("record", dict); ("stop", None) ends it. After a CUDA error the context may be
poisoned, so the worker exits right after answering.
"""

from __future__ import annotations

import os
from typing import Any


def worker_main(conn, device_kind: str, gpu_index: int, measure_ceilings: bool) -> None:
    if device_kind == "cuda":
        # One GPU per worker, chosen among those the user made visible; set before torch
        # initialises CUDA. NVML numbers GPUs physically, so clocks use the physical index.
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        physical = visible[gpu_index] if gpu_index < len(visible) else str(gpu_index)
        os.environ["CUDA_VISIBLE_DEVICES"] = physical
        gpu_index = int(physical) if physical.isdigit() else gpu_index
    import torch

    from gmabench.measure.environment import device_environment
    from gmabench.sweep.cell import run_cell
    from gmabench.sweep.plan import Cell

    device = torch.device("cuda:0" if device_kind == "cuda" else "cpu")
    try:
        env: dict[str, Any] = device_environment(device, ceilings=measure_ceilings)
    except Exception as exc:  # report, do not die silently
        env = {"device_name": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    env["worker_pid"] = os.getpid()
    conn.send(("ready", env))
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            break
        record = run_cell(Cell.from_dict(payload), device, gpu_index)
        record["worker_pid"] = os.getpid()
        if device_kind == "cuda":
            record["gpu_index"] = gpu_index
        conn.send(("record", record))
        if record["status"] == "cuda_error":
            break
    conn.close()
