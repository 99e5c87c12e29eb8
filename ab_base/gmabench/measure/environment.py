"""What a run ran on: GPU, driver, CUDA, library versions, CPU, memory, gmabench version, commit.

`host_environment` is safe in the supervising process (it never initialises CUDA);
`device_environment` runs in a worker, which owns the GPU, and may measure the copy-bandwidth
and matmul ceilings that the report sets achieved throughput against.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

import gmabench
from gmabench.measure.clocks import driver_info

OPTIONAL_PACKAGES = ("triton", "flash-linear-attention", "fla-core", "mamba-ssm", "flash-attn",
                     "flash-attn-4", "nvidia-ml-py", "numpy", "scipy", "pandas", "plotly", "typer", "rich")


def git_commit() -> str:
    """HEAD of the checkout gmabench runs from ("-dirty" with uncommitted changes), "unknown" outside
    a git checkout. GMABENCH_GIT_COMMIT overrides it, for a copy of a checkout without its .git
    (a GPU host that received only the working tree)."""
    given = os.environ.get("GMABENCH_GIT_COMMIT", "").strip()
    if given:
        return given
    root = Path(gmabench.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_environment() -> dict[str, Any]:
    import torch  # importing torch does not create a CUDA context

    mem = psutil.virtual_memory()
    return {
        "gmabench_version": gmabench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_bytes": mem.total,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "packages": {p: v for p in OPTIONAL_PACKAGES if (v := _version(p))},
        **{f"nvml_{k}": v for k, v in driver_info().items()},
    }


def measure_ceilings(device) -> dict[str, float]:
    """Device-to-device copy bandwidth (bytes read + written per s) and bf16 matmul FLOP/s."""
    import torch

    def best_ms(fn, reps=10):
        fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize(device)
            times.append(s.elapsed_time(e))
        return sorted(times)[len(times) // 2]

    src = torch.randn(1 << 30 >> 1, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = best_ms(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3)
    del src, dst
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_ms = best_ms(lambda: a @ b)
    return {"copy_bytes_per_s": copy_bw, "matmul_flops_per_s": 2 * n**3 / (mm_ms * 1e-3),
            "matmul_shape": f"{n}x{n}x{n} bf16 random"}


def device_environment(device, ceilings: bool = False) -> dict[str, Any]:
    import torch

    if device.type != "cuda":
        return {"device_name": platform.processor() or platform.machine(), "device_type": "cpu",
                "torch_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    env = {
        "device_name": props.name,
        "device_type": "cuda",
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "device_memory_bytes": props.total_memory,
        "cudnn": torch.backends.cudnn.version(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if ceilings:
        env["ceilings"] = measure_ceilings(device)
    return env
