"""`avo lineage log|show|diff|best` (rich tables on the console), and the per-workload table of an
evaluation that `avo eval` and `avo lineage show` print."""
from __future__ import annotations

import difflib
from typing import Optional

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from avo.evolve.final import describe
from avo.harness import RUNNER_WORK
from avo.lineage import Lineage, LineageError, Version, resolve_run


def _f(x: Optional[float], spec: str = ".2f", suffix: str = "x") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def print_report(rep, console: Console) -> None:
    """An EvalReport (avo/harness/runner.py) as a table: status, errors, times, speedup, SOL."""
    t = Table(title=f"{rep.task} / {rep.solution} on {rep.hardware} ({rep.device_mode})")
    for col in ("workload", "status", "max abs err", "max rel err", "ms", "baseline ms", "speedup", "% SOL", "SOL score"):
        t.add_column(col, justify="right" if col not in ("workload", "status") else "left")
    for tr in rep.traces:
        e = tr.evaluation
        c, p = e.correctness, e.performance
        status = e.status.value + (f" ({e.hack_check})" if e.hack_check else "")
        t.add_row(tr.workload.uuid, status, _f(c and c.max_absolute_error, ".2e", ""),
                  _f(c and c.max_relative_error, ".2e", ""), _f(p and p.latency_ms, ".4f", ""),
                  _f(p and p.reference_latency_ms, ".4f", ""), _f(p and p.speedup_factor, ".2f", "x"),
                  _f(p and p.sol_fraction and 100 * p.sol_fraction, ".1f", "%"), _f(p and p.sol_score, ".3f", ""))
    console.print(t)
    if rep.device_mode == "interpret" and rep.status.value != "COMPILED_NOT_RUN":
        console.print("[yellow]Triton interpreter on CPU: timings are not GPU performance.[/]")
    elif getattr(rep, "sol_model", ""):
        console.print(f"SOL bound: {rep.sol_model}", highlight=False, soft_wrap=True)
    if rep.message:
        console.print(f"[bold]{rep.status.value}[/]: {rep.message[:1500]}", highlight=False)
    for w in getattr(rep, "warnings", [])[:12]:  # static rules the runtime layer covers: the candidate ran
        console.print(f"[yellow]static warning[/] {w}", highlight=False, soft_wrap=True)
    if len(getattr(rep, "warnings", [])) > 12:
        console.print(f"[yellow]static warning[/] ... and {len(rep.warnings) - 12} more", highlight=False)
    if getattr(rep, "sandbox", ""):
        console.print(rep.sandbox, highlight=False, soft_wrap=True)
    if rep.phase_s:
        main = [f"{k} {v:.1f}" for k, v in rep.phase_s.items() if k not in RUNNER_WORK]
        sub = [f"{k} {rep.phase_s[k]:.1f}" for k in RUNNER_WORK if k in rep.phase_s]
        console.print(f"harness seconds: {' · '.join(main)}" + (f" (of which {', '.join(sub)})" if sub else ""),
                      highlight=False)


def resolve_ref(lin: Lineage, ref: str) -> Version:
    """A commit sha (or prefix), a branch (grammar_bitmask/island-0), a git rev (HEAD~1 on a
    branch), an attempt id (a00012), or a task name (its best version)."""
    if ref in lin.tasks():
        return lin.best(ref)
    for a in lin.attempts():
        if a.id == ref:
            if not a.commit:
                raise LineageError(f"attempt {ref} was not accepted ({a.status}); it has no commit")
            return lin.version(a.commit)
    sha = lin.rev_parse(ref)
    if sha is None:
        raise LineageError(f"unknown ref {ref!r} in {lin.path} (a commit, a branch like task/island-0, an attempt id or a task)")
    return lin.version(sha)


def _gain(gain: Optional[float], noise: Optional[float]) -> str:
    if gain is None:
        return "-"
    return f"{gain:+.1%}" + (f" ±{noise:.1%}" if noise is not None else "")


def log_cmd(run: str, task: Optional[str], attempts: bool, console: Console) -> None:
    with Lineage.open(resolve_run(run)) as lin:
        log_lineage(lin, task, attempts, console)


def show_cmd(run: str, ref: str, console: Console) -> None:
    with Lineage.open(resolve_run(run)) as lin:
        show_version(lin, ref, console)


def diff_cmd(run: str, a: str, b: str, console: Console) -> None:
    with Lineage.open(resolve_run(run)) as lin:
        diff_versions(lin, a, b, console)


def best_cmd(run: str, task: Optional[str], console: Console) -> None:
    with Lineage.open(resolve_run(run)) as lin:
        best_versions(lin, task, console)


def log_lineage(lin: Lineage, task: Optional[str], attempts: bool, console: Console) -> None:
    if task is not None and task not in lin.tasks():
        raise LineageError(f"task {task!r} is not in this run (tasks: {', '.join(lin.tasks()) or 'none'})")
    for name in ([task] if task else lin.tasks()):
        if attempts:
            t = Table(title=f"{lin.path.name}: attempts on {name}")
            for col, just in (("id", "left"), ("isl", "right"), ("outcome", "left"), ("gain ± noise", "right"),
                              ("eval s", "right"), ("commit", "left"), ("note | error", "left")):
                t.add_column(col, justify=just, no_wrap=col != "note | error")
            for a in lin.attempts():
                if a.task != name:
                    continue
                status = "ACCEPTED" if a.accepted else a.status + (f" ({a.hack_check})" if a.hack_check else "")
                text = a.note if a.accepted or not a.error else f"{a.note} | {' '.join(a.error.split())[:80]}"
                t.add_row(a.id, str(a.island), status, _gain(a.gain, a.noise), f"{a.eval_s:.1f}", (a.commit or "")[:8], text)
        else:
            t = Table(title=f"{lin.path.name}: versions of {name}")
            for col, just in (("commit", "left"), ("isl", "right"), ("attempt", "left"), ("vs seed", "right"),
                              ("gain ± noise", "right"), ("% SOL", "right"), ("change", "left")):
                t.add_column(col, justify=just, no_wrap=col != "change")
            for v in lin.versions(name):
                m, g, s = v.meta, v.meta.gate, v.meta.scores
                t.add_row(v.sha[:8], str(m.island), m.attempt or m.kind, _f(v.speedup), _gain(g and g.gain, g and g.noise),
                          _f(s.sol_fraction and 100 * s.sol_fraction, ".1f", "%"), m.note)
        console.print(t)


def show_version(lin: Lineage, ref: str, console: Console) -> None:
    from avo.harness.runner import EvalReport  # torch: only when a version is shown
    from avo.schema import EvaluationStatus
    v = resolve_ref(lin, ref)
    m = v.meta
    console.print(f"[bold]{v.sha}[/] {m.task}/island-{m.island} {m.kind} {m.attempt or ''} by {m.operator}", highlight=False)
    console.print(f"  {m.note}", highlight=False)
    console.print(f"  parent {m.parent or '-'}  speedup vs seed {_f(m.scores.speedup_vs_seed)}  "
                  f"vs baseline {_f(m.scores.speedup_vs_baseline)}  % SOL {_f(m.scores.sol_fraction and 100 * m.scores.sol_fraction, '.1f', '%')}",
                  highlight=False)
    if m.gate:
        g = m.gate
        ci = f", {g.ci_level or 0.95:.0%} CI [{g.ci_lo:+.2%}, {g.ci_hi:+.2%}] ({g.ci_method}, {g.ci_rounds} paired rounds)" \
            if g.ci_lo is not None else ""
        console.print(f"  gate: gain {g.gain:+.2%} vs {g.against[:10]}, noise {g.noise:.2%}, threshold {g.threshold:.2%}, "
                      f"{g.rounds} rounds{ci}", highlight=False)
    if m.transcript:
        console.print(f"  transcript: {m.transcript}", highlight=False)
    traces = v.traces
    if traces:
        rep = EvalReport(task=m.task, solution=v.sha[:10], status=EvaluationStatus.PASSED, device_mode=m.device_mode or "cuda",
                         hardware=m.hardware or "?", traces=traces)
        print_report(rep, console)
    console.print(Syntax(v.source, "python", line_numbers=True))


def diff_versions(lin: Lineage, a: str, b: str, console: Console) -> None:
    va, vb = resolve_ref(lin, a), resolve_ref(lin, b)
    lines = list(difflib.unified_diff(va.source.splitlines(keepends=True), vb.source.splitlines(keepends=True),
                                      fromfile=f"{va.sha[:10]}/kernel.py", tofile=f"{vb.sha[:10]}/kernel.py"))
    if not lines:
        console.print("no difference in kernel.py")
        return
    console.print(Syntax("".join(lines), "diff"))
    console.print(f"speedup vs seed: {_f(va.meta.scores.speedup_vs_seed)} -> {_f(vb.meta.scores.speedup_vs_seed)}",
                  highlight=False)


def best_versions(lin: Lineage, task: Optional[str], console: Console) -> None:
    tasks = [task] if task else lin.tasks()
    if task is not None and task not in lin.tasks():
        raise LineageError(f"task {task!r} is not in this run (tasks: {', '.join(lin.tasks()) or 'none'})")
    t = Table(title=f"best versions of {lin.path.name}")
    for col, just in (("task", "left"), ("commit", "left"), ("isl", "right"), ("attempt", "left"), ("vs seed", "right"),
                      ("vs baseline", "right"), ("% SOL", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    bests = {name: lin.best(name) for name in tasks}
    for name, v in bests.items():
        s = v.meta.scores
        t.add_row(name, v.sha[:10], str(v.meta.island), v.meta.attempt or v.meta.kind, _f(v.speedup),
                  _f(s.speedup_vs_baseline), _f(s.sol_fraction and 100 * s.sol_fraction, ".1f", "%"))
    console.print(t)
    for name, v in bests.items():
        console.print(f"{name}: {v.meta.note}", highlight=False)
        if v.measured is not None:  # decided by the run's final measurement (evolve/final.py)
            console.print("  " + describe(lin.measurement(name)), highlight=False, soft_wrap=True)
    if any(v.meta.device_mode == "interpret" for v in bests.values()):
        console.print("[yellow]Triton interpreter on CPU: timings are not GPU performance.[/]")
