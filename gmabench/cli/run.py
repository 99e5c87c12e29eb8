"""`gmabench run [SUITE]`: validate, plan, measure in isolated workers, record, then report."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gmabench.cli.common import console, fail, split_list

STATUS_STYLE = {"ok": "green", "skipped": "dim", "oom": "yellow", "timeout": "yellow"}


def _default_suite() -> str:
    import torch
    return "paper" if torch.cuda.is_available() else "smoke"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _device_slug(device: str) -> str:
    if device == "cuda":
        from gmabench.measure.clocks import driver_info
        gpus = driver_info().get("gpus")
        if isinstance(gpus, list) and gpus:
            return _slug(gpus[0].replace("NVIDIA ", ""))
        return "cuda"
    return "cpu"


VARIANTS = {"causal": True, "bidirectional": False, "bidir": False}


def _variants(text: str | None) -> list[bool] | None:
    """--variants as the suite's `causal` list (causal: true, bidirectional or bidir: false)."""
    names = split_list("--variants", text)
    if names is None:
        return None
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        fail(f"--variants: unknown variant {unknown[0]!r} (known: causal, bidirectional)")
    return list(dict.fromkeys(VARIANTS[n] for n in names))


def run(
    suite: Annotated[Optional[str], typer.Argument(help="Suite name (see `gmabench suites`) or a .toml path. Default: paper on a GPU, smoke otherwise.")] = None,
    mixers: Annotated[Optional[str], typer.Option(help="Comma-separated mixers, replacing the suite's.")] = None,
    seq_lens: Annotated[Optional[str], typer.Option("--seq-lens", help="Comma-separated sequence lengths N.")] = None,
    components: Annotated[Optional[str], typer.Option(help="Comma-separated mixture sizes K.")] = None,
    heads: Annotated[Optional[str], typer.Option(help="Comma-separated head counts H.")] = None,
    head_dims: Annotated[Optional[str], typer.Option("--head-dims", help="Comma-separated head sizes D.")] = None,
    dtypes: Annotated[Optional[str], typer.Option(help="Comma-separated dtypes (float32, bfloat16, float16).")] = None,
    modes: Annotated[Optional[str], typer.Option(help="Comma-separated modes (fwd, fwd_bwd).")] = None,
    variants: Annotated[Optional[str], typer.Option(help="Comma-separated variants (causal, bidirectional), replacing the suite's causal list.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cuda or cpu.")] = None,
    timer: Annotated[Optional[str], typer.Option(help="How GPU cells are timed: events (each call issued from Python, host work included) or graph (each call captured once in a CUDA graph and replayed: the GPU's time alone). Default: the suite's, else events.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory. Default: results/<date>-<device>-<suite>/.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a run in --out, skipping cells already recorded.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: one per visible GPU, one on CPU).")] = None,
    ceilings: Annotated[bool, typer.Option(help="Measure copy-bandwidth and matmul ceilings on the GPU first.")] = True,
    report: Annotated[bool, typer.Option(help="Write report.html when the run ends.")] = True,
    time_budget: Annotated[Optional[float], typer.Option("--time-budget", help="Start no cell after this many minutes; --resume runs the rest.")] = None,
) -> None:
    """Run a suite: every cell in an isolated worker, one JSON record per cell as it finishes."""
    from gmabench.sweep.plan import plan_sweep, resolve_device
    from gmabench.sweep.suite import SuiteError, load_suite

    overrides = {
        "mixers": split_list("--mixers", mixers),
        "seq_lens": split_list("--seq-lens", seq_lens, int),
        "components": split_list("--components", components, int),
        "heads": split_list("--heads", heads, int),
        "head_dims": split_list("--head-dims", head_dims, int),
        "dtypes": split_list("--dtypes", dtypes),
        "modes": split_list("--modes", modes),
        "causal": _variants(variants),
        "device": device,
        "timer": timer,
    }
    if workers is not None and workers <= 0:
        fail(f"--workers: must be positive, got {workers}")
    if time_budget is not None and time_budget <= 0:
        fail(f"--time-budget: must be positive, got {time_budget}")
    name = suite or _default_suite()
    try:
        resolved = load_suite(name, overrides)
    except SuiteError as exc:
        fail(str(exc))
    device_kind = resolve_device(resolved.device)
    if device_kind == "cuda":
        import torch
        if not torch.cuda.is_available():
            fail("device: 'cuda' was asked for but no CUDA GPU is visible")
        n_workers = workers or torch.cuda.device_count()
    else:
        n_workers = workers or 1
    if resolved.timing.timer == "graph" and device_kind != "cuda":
        fail("--timer graph: CUDA graphs need a CUDA device; this run is on the CPU (--timer events times "
             "it there)")
    cells = plan_sweep(resolved)
    run_dir = out or Path("results") / f"{date.today().isoformat()}-{_device_slug(device_kind)}-{resolved.name}"

    from gmabench.results.store import ARCHIVE_FILE, CorruptResultsError, load_records
    if (run_dir / ARCHIVE_FILE).exists():
        fail(f"--out: {run_dir} is an archived run ({ARCHIVE_FILE}); gunzip it to add cells, or choose "
             "another --out (nothing was run or changed)")
    try:
        existing = load_records(run_dir) if run_dir.exists() else []
    except CorruptResultsError as exc:
        fail(f"--out: {exc}; nothing was run or changed")
    if existing and resume:
        before = _run_timer(run_dir)
        if before != resolved.timing.timer:
            fail(f"--timer: {run_dir} was timed with {before!r}, not {resolved.timing.timer!r}; one run "
                 "keeps one timer (nothing was run or changed)")
    if existing and not resume:
        fail(f"--out: {run_dir} already holds {len(existing)} records; pass --resume to continue that run "
             "or choose another --out (nothing was overwritten)")
    _run_and_report(resolved, cells, run_dir, device_kind, n_workers, resume, ceilings, report,
                    time_budget * 60 if time_budget else None)


def _run_timer(run_dir: Path) -> str:
    """The timer a run was made with (its suite.json; runs from before timers were named: events)."""
    try:
        suite = json.loads((run_dir / "suite.json").read_text())
    except (OSError, ValueError):
        return "events"
    return (suite.get("timing") or {}).get("timer", "events")


def _run_and_report(resolved, cells, run_dir: Path, device_kind: str, n_workers: int, resume: bool,
                    ceilings: bool, report: bool, time_budget_s: float | None) -> None:
    from gmabench.measure.environment import host_environment
    from gmabench.sweep.runner import Runner

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "suite.json").write_text(json.dumps(resolved.to_dict(), indent=2) + "\n")
    host_env = host_environment()
    console.print(f"[bold]gmabench[/] suite [cyan]{resolved.name}[/]: {len(cells)} cells on {device_kind} "
                  f"({n_workers} worker{'s' if n_workers > 1 else ''}) -> {run_dir}", soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("measuring", total=len(cells))

        def on_record(rec: dict) -> None:
            progress.advance(task)
            if rec["status"] == "skipped":
                return  # skips are grouped by reason in the table printed at the end
            style = STATUS_STYLE.get(rec["status"], "red")
            timing = f"{rec['median_ms']:.4g} ms" if rec.get("median_ms") is not None else rec["reason"][:60]
            progress.console.print(f"  [{style}]{rec['status']:>8}[/] {rec['mixer']} "
                                   f"{'causal' if rec['causal'] else 'bidir'} {rec['mode']} {rec['dtype']} "
                                   f"N={rec['N']} K={rec['K']}: {timing}", highlight=False)

        runner = Runner(run_dir, suite_name=resolved.name, host_env=host_env,
                        ceilings=ceilings and device_kind == "cuda", on_record=on_record)
        try:
            summary = runner.run(cells, device_kind=device_kind, n_workers=n_workers, resume=resume,
                                 time_budget_s=time_budget_s)
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"[yellow]interrupted[/]: the records so far are in {run_dir / 'results.jsonl'}; "
                          f"continue with --resume --out {run_dir}", soft_wrap=True)
            raise typer.Exit(130)
        finally:
            env = {**host_env, **runner.device_env}
            (run_dir / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
        progress.update(task, completed=len(cells))
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.by_status.items())) or "nothing new"
    console.print(f"recorded {summary.ran} cells ({counts}); {summary.skipped_existing} already present")
    if summary.left_for_resume:
        console.print(f"[yellow]time budget spent: {summary.left_for_resume} cells not run; "
                      f"continue with --resume --out {run_dir}[/]", soft_wrap=True)
    console.print(f"results: {run_dir / 'results.jsonl'}", soft_wrap=True)   # paths unbroken
    if report:
        from gmabench.cli.report import render_report
        render_report(run_dir)
