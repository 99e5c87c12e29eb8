"""GPU clocks, temperature, power and throttle reasons through NVML (nvidia-ml-py).

Read around each cell so a slow number can be traced to a hot or throttled GPU. Where NVML is
missing or refuses (no driver, a CPU run, a sandbox), every field reads "unknown": never fail.
"""

from __future__ import annotations

from typing import Any

UNKNOWN = "unknown"

_THROTTLE_NAMES = {
    "clocksEventReasonGpuIdle": "gpu_idle",
    "clocksEventReasonApplicationsClocksSetting": "applications_clocks",
    "clocksEventReasonSwPowerCap": "sw_power_cap",
    "clocksEventReasonHwSlowdown": "hw_slowdown",
    "clocksEventReasonSyncBoost": "sync_boost",
    "clocksEventReasonSwThermalSlowdown": "sw_thermal",
    "clocksEventReasonHwThermalSlowdown": "hw_thermal",
    "clocksEventReasonHwPowerBrakeSlowdown": "hw_power_brake",
    "clocksEventReasonDisplayClockSetting": "display_clocks",
}


def _nvml():
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def read_clocks(index: int = 0) -> dict[str, Any]:
    """One NVML reading of GPU `index` (physical NVML order); "unknown" fields when unavailable."""
    fields = ("sm_clock_mhz", "mem_clock_mhz", "temperature_c", "power_w", "throttle_reasons")
    nv = _nvml()
    if nv is None:
        return {f: UNKNOWN for f in fields}
    out: dict[str, Any] = {}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return {f: UNKNOWN for f in fields}

    def read(name, call):
        try:
            out[name] = call()
        except Exception:
            out[name] = UNKNOWN

    read("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
    read("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
    read("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
    read("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)

    def reasons():
        mask = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
        names = [label for attr, label in _THROTTLE_NAMES.items()
                 if hasattr(nv, attr) and mask & getattr(nv, attr)]
        return names
    read("throttle_reasons", reasons)
    return out


def driver_info() -> dict[str, Any]:
    nv = _nvml()
    if nv is None:
        return {"driver": UNKNOWN, "gpus": UNKNOWN}
    try:
        n = nv.nvmlDeviceGetCount()
        names = [nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(n)]
        names = [x.decode() if isinstance(x, bytes) else x for x in names]
        drv = nv.nvmlSystemGetDriverVersion()
        return {"driver": drv.decode() if isinstance(drv, bytes) else drv, "gpus": names}
    except Exception:
        return {"driver": UNKNOWN, "gpus": UNKNOWN}
