"""Planning: expand a validated suite into the ordered list of cells to measure.

Cells a mixer can never run here (unavailable package, no causal form, unsupported dtype,
a suite cap on N) are planned as skips with the reason, so they become "skipped" records
instead of silently missing rows. Planning never initialises CUDA.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from gmabench.results.schema import KEY_FIELDS, cell_key
from gmabench.sweep.suite import Suite, Timing


@dataclass(frozen=True)
class Cell:
    mixer: str
    causal: bool
    mode: str
    scope: str
    B: int
    N: int
    H: int
    D: int
    Dv: int
    K: int
    dtype: str
    device: str
    k_applies: bool = True
    skip_reason: str = ""                 # non-empty: record as skipped without running
    timing: Timing = field(default_factory=Timing, compare=False, hash=False)

    def key(self) -> tuple:
        """The same identity a record of this cell carries (results.schema.KEY_FIELDS)."""
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    def label(self) -> str:
        kind = "causal" if self.causal else "bidir"
        k = f" K={self.K}" if self.k_applies else ""
        return f"{self.mixer} {kind} {self.mode} {self.dtype} B={self.B} N={self.N} H={self.H} D={self.D}{k}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        d = dict(d)
        d["timing"] = Timing(**d.get("timing", {}))
        return cls(**d)


def resolve_device(device: str) -> str:
    """"auto" means CUDA when a GPU is visible (without creating a CUDA context), else CPU."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _static_skip_reason(mixer_name: str, causal: bool, dtype: str, device: str, n: int,
                        caps: dict[str, int]) -> str:
    import torch

    from gmabench.mixers.registry import availability, load_mixer

    ok, why = availability(mixer_name)
    if not ok:
        return why
    if mixer_name in caps and n > caps[mixer_name]:
        return f"suite caps {mixer_name} at N <= {caps[mixer_name]}"
    mixer = load_mixer(mixer_name)
    if causal and not mixer.supports_causal:
        return f"{mixer_name} has no causal form"
    if not causal and not mixer.supports_bidirectional:
        return f"{mixer_name} has no bidirectional form"
    if getattr(torch, dtype) not in mixer.supported_dtypes:
        return f"{mixer_name} does not support {dtype}"
    if mixer.cuda_only and device != "cuda":
        return f"{mixer_name} needs a CUDA device"
    return ""


def _grid(suite: Suite, device: str) -> Iterator[tuple[Cell, dict[str, int]]]:
    """Every cell of the suite's sweeps in order (repeats included), with its sweep's N caps.
    Mixers for which K does not apply get the smallest K of the grid, with k_applies=False."""
    from gmabench.mixers.registry import get_entry

    for sweep in suite.sweeps:
        grid = itertools.product(sweep.mixers, sweep.causal, sweep.modes, sweep.scopes, sweep.batch,
                                 sweep.heads, sweep.head_dims, sweep.dtypes, sweep.components, sweep.seq_lens)
        for mixer, causal, mode, scope, B, H, D, dtype, K, N in grid:
            k_applies = get_entry(mixer).k_applies
            yield Cell(mixer=mixer, causal=causal, mode=mode, scope=scope, B=B, N=N, H=H, D=D, Dv=D,
                       K=K if k_applies else min(sweep.components), dtype=dtype, device=device,
                       k_applies=k_applies, timing=suite.timing), sweep.max_seq_len


def plan_sweep(suite: Suite) -> list[Cell]:
    """All cells of the suite, de-duplicated across sweeps, each with the reason it will be
    skipped here (empty when it will run).

    Ordered by tokens (B x N), then as the suite lists them: a run cut short by --time-budget
    (or an interruption) holds every mixer side by side at the sizes it reached, instead of
    every size of the first mixers and nothing of the last ones.
    """
    device = resolve_device(suite.device)
    cells: dict[tuple, Cell] = {}
    for cell, caps in _grid(suite, device):
        if cell.key() not in cells:
            reason = _static_skip_reason(cell.mixer, cell.causal, cell.dtype, device, cell.N, caps)
            cells[cell.key()] = replace(cell, skip_reason=reason)
    return _by_size(cells.values())


def _by_size(cells) -> list[Cell]:
    return sorted(cells, key=lambda c: c.B * c.N)  # stable: the suite's order within a size


def unrecorded_cells(suite: Suite, device: str, records: list[dict[str, Any]]) -> list[Cell]:
    """Cells of a run's suite with no record: what a time budget or an interruption left out
    (`gmabench run ... --resume` measures them). Needs no GPU and no mixer package."""
    seen = {cell_key(r) for r in records if all(k in r for k in KEY_FIELDS)}
    out: dict[tuple, Cell] = {}
    for cell, _ in _grid(suite, device):
        if cell.key() not in seen:
            out.setdefault(cell.key(), cell)
    return _by_size(out.values())
