"""What `avo evolve` prints before and after the loop: the run's setup (and, without a GPU, that
timings come from Triton's interpreter), then the best version per task, the report path and the
commands to read the lineage."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from avo.progress import fmt_elapsed

if TYPE_CHECKING:
    from avo.evolve import Evolution


def _rel(p: Path) -> str:
    """Relative to the current folder when inside it, else absolute."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def print_start(evo: "Evolution", interpreter_banner: str) -> None:
    c, cfg = evo.console, evo.cfg
    c.print(f"[bold]avo evolve[/] run [bold]{cfg.run}[/] -> {_rel(cfg.lineage_path)}", highlight=False)
    for name, s in evo.tasks.items():
        isl = [i for i in evo.islands if i.task == name]
        ops = sorted({i.operator for i in isl})
        c.print(f"  task {name}: seed {_rel(Path(s.seed_path))}, {len(s.workloads)} workloads, "
                f"{len(isl)} islands ({', '.join(ops)})", highlight=False)
    c.print(f"  budget: {evo._budget_text()}; gate: gain > max({cfg.gate.min_gain:.1%}, noise); "
            f"supervisor after {cfg.supervisor.stagnation_k} attempts without a commit", highlight=False)
    if evo.device == "interpret":
        c.print(f"[bold yellow]device: interpret (CPU).[/] [yellow]{interpreter_banner}[/]", highlight=False)
    else:
        c.print(f"  device: {evo.device}", highlight=False)


def print_summary(evo: "Evolution", why: str, write: bool) -> None:
    from avo.report import write_report
    c, cfg, lin = evo.console, evo.cfg, evo.lineage
    evo.progress.stop()
    s = evo.stats
    c.print(f"[bold]{why or 'done'}[/] after {fmt_elapsed(s.elapsed_s)}: {s.attempts} attempts, "
            f"{s.accepted} accepted, {s.evals_per_hour:.0f} evals/hour this session", highlight=False)
    t = Table(title=f"best per task ({evo.device})")
    for col in ("task", "commit", "island", "vs seed", "vs baseline", "% SOL"):
        t.add_column(col, no_wrap=True, justify="left" if col in ("task", "commit") else "right")
    notes = []
    for name in evo.tasks:
        try:
            b = lin.best(name)
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
    if evo.device == "interpret":
        c.print("[yellow]Triton interpreter on CPU: these speedups rank kernels in the interpreter; "
                "they are not GPU performance.[/]", highlight=False)
    if write:
        evo.stop.phase = "report"
        path = write_report(lin.path)
        evo.stop.phase = "idle"
        c.print(f"report -> {_rel(path)}", highlight=False)
    run = cfg.run
    c.print(f"lineage: avo lineage log {run} | avo lineage best {run} | git -C {_rel(lin.path)} log --all --graph --oneline",
            highlight=False, soft_wrap=True)
    if why == "interrupted" or evo.stop.count:
        c.print("stopped cleanly; run the same command again to resume", highlight=False)
    elif why.startswith("budget") and evo.stats.evals_session == 0 and s.attempts:
        c.print("this run's budget was already spent: extend it with --attempts/--minutes, "
                "or start a fresh run with --run NAME", highlight=False)
