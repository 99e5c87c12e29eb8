"""The supervisor: hands cells to isolated workers, survives their failures, writes every record.

One worker process per GPU (one on CPU), started with "spawn"; the supervisor itself never
initialises CUDA. A cell that runs out of memory or hits a CUDA error gets its status and the
worker is replaced, so the next cell starts with a clean context and an unfragmented allocator.
A worker that dies (a segfault) gives "crashed"; one that runs past the cell's timeout is killed
and gives "timeout". Each record is appended and fsync'ed as its cell finishes; with resume,
cells already recorded (same parameters, device and code version) are not run again.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

from gmabench.results.schema import KEY_FIELDS, Record, cell_key
from gmabench.results.store import ResultStore
from gmabench.sweep.plan import Cell

REPLACE_AFTER = ("oom", "cuda_error")   # statuses after which a worker is not trusted again
START_TIMEOUT_S = 300.0


class RunLog:
    """Human-readable log of a run, beside its results (what ran, where, how long, who died)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with open(self.path, "a") as f:
            f.write(f"{stamp} {message}\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class Worker:
    def __init__(self, ctx, device_kind: str, gpu_index: int, ceilings: bool, log: RunLog):
        from gmabench.sweep.worker import worker_main

        self.device_kind, self.gpu_index, self.log = device_kind, gpu_index, log
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, device_kind, gpu_index, ceilings), daemon=True)
        self.proc.start()
        child.close()
        self.cell: Cell | None = None
        self.deadline = 0.0
        self.started_at = 0.0
        self.env: dict[str, Any] = {}

    def wait_ready(self) -> dict[str, Any]:
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"worker for {self.device_kind}:{self.gpu_index} did not start")
        kind, env = self.conn.recv()
        self.env = env
        self.log(f"worker pid={self.proc.pid} ready on {self.device_kind}:{self.gpu_index} ({env.get('device_name')})")
        return env

    def send(self, cell: Cell) -> None:
        self.cell = cell
        self.started_at = time.monotonic()
        self.deadline = self.started_at + cell.timing.timeout_s
        self.conn.send(("cell", cell.to_dict()))

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.kill()


@dataclass
class RunSummary:
    ran: int = 0
    skipped_existing: int = 0
    left_for_resume: int = 0        # cells not started because the time budget ran out
    by_status: dict[str, int] = field(default_factory=dict)


class Runner:
    """Runs planned cells into run_dir/results.jsonl. `on_record(record_dict)` sees each record."""

    def __init__(self, run_dir: Path, *, suite_name: str, host_env: dict[str, Any], ceilings: bool = False,
                 on_record: Callable[[dict[str, Any]], None] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = ResultStore(self.run_dir)
        self.log = RunLog(self.run_dir / "run.log")
        self.suite_name = suite_name
        self.host_env = host_env
        self.ceilings = ceilings
        self.on_record = on_record or (lambda r: None)
        self.ctx = mp.get_context("spawn")
        self.device_env: dict[str, Any] = {}
        self.stop_at: float | None = None

    # ---- records -------------------------------------------------------------------------
    def _record(self, cell: Cell, fields: dict[str, Any]) -> dict[str, Any]:
        base = {k: getattr(cell, k) for k in (*KEY_FIELDS, "k_applies")}
        rec = Record(**base, status="error", suite=self.suite_name,
                     gmabench_version=self.host_env.get("gmabench_version", ""),
                     git_commit=self.host_env.get("git_commit", ""), timestamp=_now(),
                     device_name=self.device_env.get("device_name", ""))
        out = rec.to_dict()
        out.update({k: v for k, v in fields.items() if k in out})
        return out

    def _write(self, record: dict[str, Any], summary: RunSummary) -> None:
        self.store.append(record)
        summary.ran += 1
        summary.by_status[record["status"]] = summary.by_status.get(record["status"], 0) + 1
        self.on_record(record)

    def resume_key(self, d: dict[str, Any]) -> tuple:
        return (*cell_key(d), d.get("device_name", ""), d.get("git_commit", ""))

    # ---- the loop ------------------------------------------------------------------------
    def run(self, cells: list[Cell], *, device_kind: str, n_workers: int = 1, resume: bool = False,
            time_budget_s: float | None = None) -> RunSummary:
        """Run every cell not yet recorded (with resume). With a time budget, no cell starts after
        it is spent; the cells left are counted in the summary and a later --resume runs them."""
        summary = RunSummary()
        self.stop_at = time.monotonic() + time_budget_s if time_budget_s else None
        torn = self.store.repair()
        if torn:
            self.log(f"repaired a torn last record ({torn} bytes cut)")
        self.log(f"run of {len(cells)} cells on {device_kind} with {n_workers} worker(s), resume={resume}")
        runnable = [c for c in cells if not c.skip_reason]
        workers: list[Worker] = []
        try:
            if runnable:
                workers = [self._start(device_kind, i) for i in range(n_workers)]
            else:
                self.device_env = {"device_name": self.host_env.get("cpu", "")}
            done = {self.resume_key(r) for r in self.store.records()} if resume else set()
            pending = []
            for cell in cells:
                probe = self._record(cell, {})
                if self.resume_key(probe) in done:
                    summary.skipped_existing += 1
                    continue
                if cell.skip_reason:
                    self._write(self._record(cell, {"status": "skipped", "reason": cell.skip_reason}), summary)
                else:
                    pending.append(cell)
            self._dispatch(pending, workers, device_kind, summary)
        except KeyboardInterrupt:
            # Ctrl-C or SIGINT (a batch system's soft stop): every record written so far is on
            # disk; the cells in flight are dropped and their workers killed, not waited for.
            self.log("interrupted (SIGINT): cells in flight not recorded; --resume measures them")
            for w in workers:
                w.kill()
            workers = []
            raise
        finally:
            for w in workers:
                w.stop()
        self.log(f"run finished: {summary.ran} recorded, {summary.skipped_existing} already present, {summary.by_status}")
        return summary

    def _start(self, device_kind: str, index: int) -> Worker:
        w = Worker(self.ctx, device_kind, index, self.ceilings and not self.device_env, self.log)
        env = w.wait_ready()
        if not self.device_env:
            self.device_env = env
        return w

    def _dispatch(self, pending: list[Cell], workers: list[Worker], device_kind: str, summary: RunSummary) -> None:
        queue = list(pending)
        busy: dict[int, Worker] = {}
        idle = list(range(len(workers)))
        while queue or busy:
            if queue and self.stop_at is not None and time.monotonic() >= self.stop_at:
                summary.left_for_resume = len(queue)
                self.log(f"time budget spent: {len(queue)} cells left for --resume")
                queue.clear()
                if not busy:
                    break
            while queue and idle:
                i = idle.pop(0)
                cell = queue.pop(0)
                self.log(f"start  {cell.label()} on worker pid={workers[i].proc.pid}")
                workers[i].send(cell)
                busy[i] = workers[i]
            now = time.monotonic()
            timeout = max(0.0, min(w.deadline for w in busy.values()) - now)
            ready = wait([w.conn for w in busy.values()] + [w.proc.sentinel for w in busy.values()], timeout)
            for i, w in list(busy.items()):
                fields = self._collect(w, ready)
                if fields is None:
                    continue
                cell = w.cell
                fields.setdefault("wall_s", time.monotonic() - w.started_at)
                record = self._record(cell, fields)
                self.log(f"finish {cell.label()}: {record['status']} {record['reason']}".rstrip())
                self._write(record, summary)
                del busy[i]
                if record["status"] in REPLACE_AFTER or not w.proc.is_alive() or fields.get("_dead"):
                    w.kill()
                    self.log(f"worker pid={w.proc.pid} replaced after {record['status']}")
                    workers[i] = self._start(device_kind, i)
                idle.append(i)

    def _collect(self, w: Worker, ready: list) -> dict[str, Any] | None:
        """The finished cell's fields, a synthetic failure record, or None while it still runs."""
        if w.conn in ready:
            try:
                kind, payload = w.conn.recv()
                return payload
            except (EOFError, OSError):
                pass  # the pipe closed: the process died mid-cell
        if w.conn in ready or w.proc.sentinel in ready or not w.proc.is_alive():
            w.proc.join(5)
            why = _signal_name(w.proc.exitcode)
            if w.proc.exitcode == -signal.SIGKILL:
                # Nobody here sent it: on Linux that is almost always the kernel's OOM killer.
                why += " (not by gmabench: on Linux usually the kernel's out-of-memory killer)"
            self.log(f"worker pid={w.proc.pid} died during {w.cell.label()}: {why}")
            return {"status": "crashed", "reason": f"worker process {why}", "_dead": True}
        if time.monotonic() >= w.deadline:
            self.log(f"worker pid={w.proc.pid} timed out after {w.cell.timing.timeout_s:g} s on {w.cell.label()}")
            w.kill()
            return {"status": "timeout", "reason": f"cell exceeded its {w.cell.timing.timeout_s:g} s timeout",
                    "_dead": True}
        return None
