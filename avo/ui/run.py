"""What `avo evolve` shows around a backend: the run's setup (and, without a GPU, that timings come
from Triton's interpreter), the live progress while the loop runs, then the best version per task,
the report path and the commands to read the lineage. `evolve_local` and `evolve_ray` wire a
backend (avo/evolve/loop.py, avo/ray/driver.py) to the console; both return the exit code."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from avo.config import ConfigError, RunConfig
from avo.evolve.final import describe
from avo.evolve.loop import RunEnd, resolve_run_device, run_local
from avo.evolve.setup import IslandRef, TaskSetup
from avo.evolve.state import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EvolveError, RunState, RunStats
from avo.evolve.stop import StopSignal
from avo.lineage import Lineage
from avo.operators.base import Operator
from avo.ui.progress import Progress, fmt_elapsed
from avo.ui.report import write_report

INTERPRETER_BANNER = ("No GPU: kernels run in Triton's interpreter on the CPU. Timings rank candidates "
                      "for this demo only; they are not GPU performance.")


def _rel(p: Path) -> str:
    """Relative to the current folder when inside it, else absolute."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _error(err: Console, msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)


def print_start(c: Console, cfg: RunConfig, device: str, tasks: dict[str, TaskSetup], islands: list[IslandRef],
                stats: RunStats) -> None:
    c.print(f"[bold]avo evolve[/] run [bold]{cfg.run}[/] -> {_rel(cfg.lineage_path)}", highlight=False)
    for name, s in tasks.items():
        isl = [i for i in islands if i.task == name]
        ops = sorted({i.operator for i in isl})
        seed = s.seed_text(lambda p: _rel(Path(p)))
        c.print(f"  task {name}: seed {seed}, {len(s.workloads)} workloads, "
                f"{len(isl)} islands ({', '.join(ops)})", highlight=False)
    c.print(f"  budget: {stats.budget}; gate: gain > max({cfg.gate.min_gain:.1%}, noise); "
            f"supervisor after {cfg.supervisor.stagnation_k} attempts without a commit", highlight=False)
    if device == "interpret":
        c.print(f"[bold yellow]device: interpret (CPU).[/] [yellow]{INTERPRETER_BANNER}[/]", highlight=False)
    else:
        c.print(f"  device: {device}", highlight=False)


def print_summary(c: Console, cfg: RunConfig, device: str, tasks: dict[str, TaskSetup], lin: Lineage,
                  stats: RunStats, stop: StopSignal, why: str, write: bool) -> None:
    s = stats
    c.print(f"[bold]{why or 'done'}[/] after {fmt_elapsed(s.elapsed_s)}: {s.attempts} attempts, "
            f"{s.accepted} accepted, {s.evals_per_hour:.0f} evals/hour this session", highlight=False)
    t = Table(title=f"best per task ({device})")
    for col in ("task", "commit", "island", "vs seed", "vs baseline", "% SOL"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("task", "commit") else "right")
    notes, bests = [], {}
    for name in tasks:
        try:
            b = bests[name] = lin.best(name)
        except Exception:
            continue
        sc = b.meta.scores
        t.add_row(name, b.sha[:10], str(b.meta.island), f"{b.speedup:.2f}x",
                  f"{sc.speedup_vs_baseline:.2f}x" if sc.speedup_vs_baseline else "-",
                  f"{100 * sc.sol_fraction:.1f}%" if sc.sol_fraction else "n/a")
        notes.append(f"  {name}: {b.meta.note}")
    c.print(t)
    for line in notes:
        c.print(line, highlight=False, soft_wrap=True)
    for name, b in bests.items():
        if b.measured is not None:
            c.print("  " + describe(lin.measurement(name)), highlight=False, soft_wrap=True)
        elif b.meta.kind != "seed":
            c.print(f"  {name}: vs seed is the version's recorded figure (not re-measured with the seed)",
                    highlight=False, soft_wrap=True)
    if device == "interpret":
        c.print("[yellow]Triton interpreter on CPU: these speedups rank kernels in the interpreter; "
                "they are not GPU performance.[/]", highlight=False)
    if write:
        stop.phase = "report"
        path = write_report(lin.path)
        stop.phase = "idle"
        c.print(f"report -> {_rel(path)}", highlight=False)
    run = cfg.run
    c.print(f"lineage: avo lineage log {run} | avo lineage best {run} | git -C {_rel(lin.path)} log --all --graph --oneline",
            highlight=False, soft_wrap=True)
    if why == "interrupted" or stop.count:
        c.print("stopped cleanly; run the same command again to resume", highlight=False)
    elif why.startswith("budget") and s.attempts_session == 0 and s.attempts:
        c.print("this run's budget was already spent: extend it with --attempts/--minutes, "
                "or start a fresh run with --run NAME", highlight=False)


def evolve_local(cfg: RunConfig, live: bool = True, operators: Optional[dict[str, Operator]] = None) -> int:
    """Run or resume an evolution on this machine; returns the exit code."""
    console, err = Console(), Console(stderr=True)
    try:
        state = RunState(cfg, resolve_run_device(cfg.device), operators)
    except (EvolveError, ConfigError) as e:
        _error(err, str(e))
        return getattr(e, "code", EXIT_USAGE)
    progress = Progress(console, state.stats, live)
    state.display = progress
    print_start(console, cfg, state.device, state.tasks, state.islands, state.stats)
    state.stop.install()
    try:
        end = run_local(state)
        if end.error:
            progress.stop()
            _error(err, end.error)
        if state.lineage is not None and end.code in (EXIT_OK, EXIT_INTERRUPTED):
            progress.stop()
            print_summary(console, cfg, state.device, state.tasks, state.lineage, state.stats, state.stop, end.why,
                          write=end.code == EXIT_OK or state.stop.count < 2)
    except KeyboardInterrupt:
        end = RunEnd(EXIT_INTERRUPTED)
    finally:
        state.stop.restore()
        state.close()
    return end.code


def evolve_ray(cfg: RunConfig, address: Optional[str] = None, live: bool = True,
               operators: Optional[dict[str, Any]] = None, run_out: Optional[list] = None) -> int:
    """Run or resume an evolution on a Ray cluster; returns the exit code. `operators` (tests,
    embedding code) replaces the config's operators by name, as for evolve_local; `run_out`
    receives the RayRun (what its session measured: `session_stats`)."""
    from avo.ray.cluster import ClusterError
    from avo.ray.driver import run_ray, start_ray
    console, err = Console(), Console(stderr=True)
    try:
        run = start_ray(cfg, address, operators)
    except ClusterError as e:
        _error(err, str(e))
        return EXIT_USAGE
    if run_out is not None:
        run_out.append(run)
    progress = Progress(console, run.stats, live)
    run.display = progress
    prepared = []
    try:
        end = run_ray(run, on_start=lambda: (prepared.append(1), print_start(console, cfg, run.stats.device,
                                                                             run.tasks, run.islands, run.stats)))
        if end.error:
            progress.stop()
            _error(err, end.error)
        if prepared and end.code in (EXIT_OK, EXIT_INTERRUPTED) and (cfg.lineage_path / ".git").exists():
            progress.stop()
            with Lineage.open(cfg.lineage_path) as lin:
                ss = run.session_stats
                print_summary(console, cfg, run.stats.device, run.tasks, lin, run.stats, run.stop, end.why,
                              write=end.code == EXIT_OK or run.stop.count < 2)
                console.print(f"ray: {ss.attempts} attempts this session, evaluators busy "
                              f"{100 * ss.busy_fraction:.0f}% of the loop's {ss.loop_s:.0f} s (idle "
                              f"{100 * (1 - ss.busy_fraction):.0f}%), {ss.regates} re-gates, "
                              f"{ss.evaluator_restarts} evaluator restarts, {ss.actor_errors} tasks lost with an "
                              f"actor, {ss.dropped_at_stop} queued proposals not evaluated at the stop",
                              highlight=False)
    except KeyboardInterrupt:
        end = RunEnd(EXIT_INTERRUPTED)
    finally:
        run.close()
    return end.code
