"""Suites: named sweeps in TOML, loaded and validated before anything is measured.

A suite file holds defaults at top level and, optionally, several `[[sweep]]` tables that
override them (so quadratic mixers can stop at a smaller N than linear-time ones). Every key is
checked: an unknown key, a bad value or an unknown mixer raises SuiteError naming the field and
the value, so the CLI can exit with code 2 before any worker starts.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The repository's suites/ (an editable install, or running from a checkout).
SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"

DTYPES = ("float32", "bfloat16", "float16")
MODES = ("fwd", "fwd_bwd")
SCOPES = ("core", "layer")
DEVICES = ("auto", "cpu", "cuda")

# Grid keys: each a list; every combination is a cell.
GRID_KEYS = {
    "mixers": str, "seq_lens": int, "components": int, "heads": int, "head_dims": int,
    "batch": int, "dtypes": str, "modes": str, "causal": bool, "scopes": str,
}
POSITIVE_KEYS = ("seq_lens", "components", "heads", "head_dims", "batch")
SWEEP_ONLY_KEYS = {"max_seq_len"}  # per-mixer caps: {"softmax-naive" = 16384}
TOP_KEYS = {"name", "description", "device", "timing", "sweep", "baseline"}
TIMING_KEYS = {
    "warmup_ms": float, "rep_ms": float, "min_reps": int, "max_reps": int,
    "max_ms": float, "noise_threshold": float, "timeout_s": float,
    "accuracy_tokens": int, "timer": str,
}
# How a GPU cell is timed (measure/timing.py): "events", each call issued from Python between
# CUDA events (what an eager caller pays, host work included); "graph", the call captured once in
# a CUDA graph and replayed between events (the GPU's time alone, as a captured training step runs).
TIMERS = ("events", "graph")


class SuiteError(ValueError):
    """A suite (or an override) is invalid; the message names the field and the bad value."""


@dataclass
class Timing:
    warmup_ms: float = 25.0        # at least this long warming up (after a first, compiling call)
    rep_ms: float = 100.0          # at least this long repeating
    min_reps: int = 5
    max_reps: int = 1000
    max_ms: float = 2000.0         # stop repeating after this, noisy or not
    noise_threshold: float = 0.10  # IQR / median above this flags the cell as noisy
    timeout_s: float = 300.0       # a cell running longer is killed and recorded as "timeout"
    accuracy_tokens: int = 1024    # rel_error is measured on the first this-many tokens
    timer: str = "events"          # one of TIMERS


@dataclass
class Sweep:
    mixers: list[str]
    seq_lens: list[int]
    components: list[int] = field(default_factory=lambda: [64])
    heads: list[int] = field(default_factory=lambda: [16])
    head_dims: list[int] = field(default_factory=lambda: [64])
    batch: list[int] = field(default_factory=lambda: [1])
    dtypes: list[str] = field(default_factory=lambda: ["bfloat16"])
    modes: list[str] = field(default_factory=lambda: ["fwd"])
    causal: list[bool] = field(default_factory=lambda: [False])
    scopes: list[str] = field(default_factory=lambda: ["core"])
    max_seq_len: dict[str, int] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    description: str
    device: str
    timing: Timing
    sweeps: list[Sweep]
    baseline: str | None = None   # the mixer the report measures speed-ups against

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Suite":
        """The inverse of to_dict: a resolved suite as a run saved it (suite.json)."""
        return cls(name=d["name"], description=d.get("description", ""), device=d["device"],
                   timing=Timing(**d.get("timing", {})), sweeps=[Sweep(**s) for s in d["sweeps"]],
                   baseline=d.get("baseline"))


def available_suites() -> dict[str, Path]:
    """Named suites: GMABENCH_SUITES (a folder), then ./suites, then the checkout's suites/.
    A name found earlier wins, so a project can shadow a shipped suite."""
    found: dict[str, Path] = {}
    dirs = [os.environ.get("GMABENCH_SUITES", ""), "suites", str(SUITES_DIR)]
    for folder in dirs:
        if folder and Path(folder).is_dir():
            for p in sorted(Path(folder).glob("*.toml")):
                found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def _check_list(where: str, key: str, value: Any) -> list:
    kind = GRID_KEYS[key]
    if not isinstance(value, list) or not value:
        raise SuiteError(f"{where}.{key}: expected a non-empty list, got {value!r}")
    for item in value:
        # bool is an int subclass in Python; keep the two apart.
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise SuiteError(f"{where}.{key}: expected {kind.__name__} items, got {item!r}")
        if key in POSITIVE_KEYS and item <= 0:
            raise SuiteError(f"{where}.{key}: must be positive, got {item!r}")
    allowed = {"dtypes": DTYPES, "modes": MODES, "scopes": SCOPES}.get(key)
    if allowed:
        for item in value:
            if item not in allowed:
                raise SuiteError(f"{where}.{key}: unknown value {item!r} (known: {', '.join(allowed)})")
    if key == "mixers":
        from gmabench.mixers.registry import mixer_names
        try:
            known = mixer_names()
        except ValueError as exc:  # a malformed GMABENCH_MIXERS is bad input too
            raise SuiteError(str(exc)) from None
        for item in value:
            if item not in known:
                raise SuiteError(f"{where}.mixers: unknown mixer {item!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(value))  # drop repeats, keep order


def _parse_sweep(where: str, table: dict[str, Any]) -> Sweep:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in GRID_KEYS:
            values[key] = _check_list(where, key, value)
        elif key == "max_seq_len":
            if not isinstance(value, dict):
                raise SuiteError(f"{where}.max_seq_len: expected a table of mixer = N, got {value!r}")
            for mixer, cap in value.items():
                if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
                    raise SuiteError(f"{where}.max_seq_len.{mixer}: must be a positive integer, got {cap!r}")
            values[key] = dict(value)
        else:
            raise SuiteError(f"{where}: unknown key {key!r} (known: {', '.join(sorted([*GRID_KEYS, *SWEEP_ONLY_KEYS]))})")
    for required in ("mixers", "seq_lens"):
        if required not in values:
            raise SuiteError(f"{where}: missing {required!r}")
    return Sweep(**values)


def _parse_timing(table: Any) -> Timing:
    if not isinstance(table, dict):
        raise SuiteError(f"timing: expected a table, got {table!r}")
    values = {}
    for key, value in table.items():
        if key not in TIMING_KEYS:
            raise SuiteError(f"timing: unknown key {key!r} (known: {', '.join(TIMING_KEYS)})")
        kind = TIMING_KEYS[key]
        if kind is str:
            if value not in TIMERS:
                raise SuiteError(f"timing.{key}: unknown value {value!r} (known: {', '.join(TIMERS)})")
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise SuiteError(f"timing.{key}: expected a {kind.__name__}, got {value!r}")
        if value <= 0:
            raise SuiteError(f"timing.{key}: must be positive, got {value!r}")
        values[key] = kind(value)
    return Timing(**values)


def parse_suite(data: dict[str, Any], name: str = "suite", overrides: dict[str, Any] | None = None) -> Suite:
    """Validate a suite mapping (from TOML) and apply CLI overrides to every sweep."""
    data = copy.deepcopy(data)
    for key in data:
        if key not in TOP_KEYS and key not in GRID_KEYS and key not in SWEEP_ONLY_KEYS:
            raise SuiteError(f"unknown key {key!r} (known: {', '.join(sorted([*TOP_KEYS, *GRID_KEYS, *SWEEP_ONLY_KEYS]))})")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    device = overrides.pop("device", None) or data.get("device", "auto")
    timer = overrides.pop("timer", None)
    if device not in DEVICES:
        raise SuiteError(f"device: unknown value {device!r} (known: {', '.join(DEVICES)})")
    defaults = {k: v for k, v in data.items() if k in GRID_KEYS or k in SWEEP_ONLY_KEYS}
    tables = data.get("sweep", [{}])
    if not isinstance(tables, list) or not tables:
        raise SuiteError(f"sweep: expected a list of [[sweep]] tables, got {tables!r}")
    sweeps = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise SuiteError(f"sweep[{i}]: expected a table, got {table!r}")
        merged = {**defaults, **table, **overrides}
        sweeps.append(_parse_sweep(f"sweep[{i}]" if "sweep" in data else "suite", merged))
    timing = data.get("timing", {})
    if timer is not None and isinstance(timing, dict):
        timing = {**timing, "timer": timer}
    timing = _parse_timing(timing)
    if timing.timer == "graph" and device == "cpu":
        raise SuiteError("timing.timer: 'graph' (CUDA graphs) needs device 'cuda' or 'auto', not 'cpu' "
                         "(--timer events times a CPU run)")
    baseline = data.get("baseline")
    if baseline is not None:
        from gmabench.mixers.registry import mixer_names
        if baseline not in mixer_names():
            raise SuiteError(f"baseline: unknown mixer {baseline!r} (known: {', '.join(mixer_names())})")
    return Suite(
        baseline=baseline,
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        device=device,
        timing=timing,
        sweeps=sweeps,
    )


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None) -> Suite:
    """Load a suite by name (suites/NAME.toml) or by path, validated, with overrides applied."""
    path = Path(name_or_path)
    if not path.suffix == ".toml" or not path.exists():
        known = available_suites()
        if name_or_path not in known:
            raise SuiteError(f"suite: unknown suite {name_or_path!r} (known: {', '.join(known)}; or a path to a .toml file)")
        path = known[name_or_path]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite {path}: malformed TOML ({exc})") from None
    return parse_suite(data, name=path.stem, overrides=overrides)
