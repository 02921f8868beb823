"""`avo` command line: commands only. Each is a thin shell over a function of the layer below
(tasks, harness, ui, apply); user errors are one line on stderr and exit code 2 (bad usage) or 1
(evaluation failed). Imports happen inside the commands so `avo --help` loads no torch."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="avo: evolve GPU kernels with coding agents as the variation operator.")
lineage_app = typer.Typer(no_args_is_help=True, help="Read a run's lineage (git) and attempts log.")
app.add_typer(lineage_app, name="lineage")
workspace_app = typer.Typer(no_args_is_help=True, help="Drive a variation step by hand (any coding agent): open an "
                            "island's step folder, then submit what the agent left there.")
app.add_typer(workspace_app, name="workspace")
apply_app = typer.Typer(no_args_is_help=True, help="Artifacts in engines: re-measure them on this GPU.")
app.add_typer(apply_app, name="apply")
console = Console()
err = Console(stderr=True)


def die(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def tasks() -> None:
    """List the tasks under evaluators/: workloads per target and their SOL model."""
    from avo.tasks import TaskError, list_tasks
    try:
        ts = list_tasks()
    except TaskError as e:
        die(str(e))
    t = Table(title="avo tasks")
    for col in ("task", "op_type", "gpu wl", "cpu wl", "SOL flops", "SOL bytes", "tolerance"):
        t.add_column(col)
    for task in ts:
        d = task.definition
        t.add_row(d.name, d.op_type, str(len(task.select("gpu"))), str(len(task.select("cpu"))),
                  d.sol.flops or "(from reference)", d.sol.bytes or "(unique I/O)",
                  f"atol {d.tolerance.atol:g} rtol {d.tolerance.rtol:g}")
    console.print(t)


COMPILE_TIMEOUT_HELP = "seconds for the import and each workload's first call, which compiles and runs " \
                       "(default: 300 on a GPU, 60 in the interpreter; CUDA C++ builds 300)"
RUN_TIMEOUT_HELP = "seconds for each later phase (default: 10x this candidate's own measured calls, at least 30)"


def check_timeouts(*limits: Optional[float]) -> None:
    if any(x is not None and not x > 0 for x in limits):
        die("--compile-timeout and --run-timeout take a number of seconds above 0")


@app.command("eval")
def eval_cmd(target: str = typer.Argument(..., help="task name, problem directory, or FlashInfer-Trace dataset root"),
             candidate: Optional[Path] = typer.Argument(None, help="kernel .py or solution .json (default: the problem dir's solution)"),
             device: str = typer.Option("auto", help="auto | cuda | interpret"),
             workloads: str = typer.Option("", help="comma-separated workload uuids (default: all for the device)"),
             json_out: Optional[Path] = typer.Option(None, "--json", help="write the traces (JSONL) here"),
             peer: bool = typer.Option(False, help="trusted peer implementation: allow library calls that do the task"),
             definition: Optional[str] = typer.Option(None, help="in a FlashInfer-Trace dataset root: the definition's name"),
             compile_timeout: Optional[float] = typer.Option(None, help=COMPILE_TIMEOUT_HELP),
             run_timeout: Optional[float] = typer.Option(None, help=RUN_TIMEOUT_HELP)) -> None:
    """Evaluate one candidate on a task: correctness on every workload, timing, SOL score."""
    from avo.tasks import TaskError, load_solution, load_task, own_solution
    if device not in ("auto", "cuda", "interpret"):
        die(f"--device must be auto, cuda or interpret, not {device!r}")
    check_timeouts(compile_timeout, run_timeout)
    try:
        task = load_task(target, definition)
        if candidate is None:
            found = own_solution(target, definition)
            if found is None:
                die("no CANDIDATE given and the target has no solution (solution.json, solution_*.json, solutions/)")
            candidate = found
        sol = load_solution(task, candidate)
    except TaskError as e:
        die(str(e))
    from avo.harness.runner import EvalConfig  # torch: after the cheap checks
    from avo.harness.served import ADDRESS_ENV, NotServed, served_or_local
    from avo.harness.workerproc import HarnessError
    served = os.environ.get(ADDRESS_ENV) or None  # `avo workspace serve`'s evaluator: no worker start-up
    if served and not Path(served).exists():
        die(f"{ADDRESS_ENV}={served}: no such socket (is `avo workspace serve` running?)")
    cfg = EvalConfig(device=device, peer=peer, compile_timeout_s=compile_timeout, run_timeout_s=run_timeout)
    note = lambda text: console.print(f"[yellow]{text}[/yellow]", highlight=False)  # noqa: E731

    def evaluate_on(ev):
        if ev.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                die("--device cuda but no CUDA device is visible")
        wls = ev.default_workloads(task)
        if workloads:
            want = workloads.split(",")
            wls = [w for w in task.workloads if w.uuid in want]
            missing = set(want) - {w.uuid for w in wls}
            if missing:
                die(f"unknown workloads: {', '.join(sorted(missing))}")
        return ev.evaluate(task, sol, wls)
    try:
        try:
            with served_or_local(Path(served) if served else None, cfg, note) as ev:
                rep = evaluate_on(ev)
        except NotServed as e:  # another task than the served run's: this process evaluates it
            note(f"{e}: evaluating here instead")
            with served_or_local(None, cfg, note) as ev:
                rep = evaluate_on(ev)
    except HarnessError as e:
        die(str(e), 1)
    from avo.schema import EvaluationStatus
    from avo.ui.lineage_view import print_report
    print_report(rep, console)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text("".join(t.model_dump_json() + "\n" for t in rep.traces))
        console.print(f"traces -> {json_out}")
    # compiled where no GPU is to run it (a CUDA C++ solution in interpreter mode): checked as far as
    # this machine can, so not a failure; the message says it was not run
    raise typer.Exit(0 if rep.passed or rep.status == EvaluationStatus.COMPILED_NOT_RUN else 1)


@app.command()
def evolve(config: Path = typer.Option(Path("configs/quickstart.yaml"), "--config", "-c", help="run config (YAML)"),
           backend: str = typer.Option("local", help="local | ray"),
           address: Optional[str] = typer.Option(None, help="Ray cluster address (with --backend ray)"),
           run: Optional[str] = typer.Option(None, help="override the run name (lineages/<run>)"),
           minutes: Optional[float] = typer.Option(None, help="override budget.wall_minutes"),
           attempts: Optional[int] = typer.Option(None, help="override budget.attempts"),
           device: Optional[str] = typer.Option(None, help="override device: auto | cuda | interpret"),
           compile_timeout: Optional[float] = typer.Option(None, help="override eval.compile_timeout_s: " + COMPILE_TIMEOUT_HELP),
           run_timeout: Optional[float] = typer.Option(None, help="override eval.run_timeout_s: " + RUN_TIMEOUT_HELP),
           live: bool = typer.Option(True, help="rich live display")) -> None:
    """Run (or resume) an evolution: islands of variation steps, each gated into a git lineage."""
    from avo.config import ConfigError, load_config
    from avo.harness.sandbox import protect_self
    protect_self()  # API keys in this environment: not readable by a candidate worker (sandbox.py)
    check_timeouts(compile_timeout, run_timeout)
    try:
        cfg = load_config(config, run=run, minutes=minutes, attempts=attempts, device=device,
                          compile_timeout_s=compile_timeout, run_timeout_s=run_timeout)
    except ConfigError as e:
        die(str(e))
    if backend == "ray":
        from avo.ui.run import evolve_ray
        code = evolve_ray(cfg, address=address, live=live)
    elif backend == "local":
        from avo.ui.run import evolve_local
        code = evolve_local(cfg, live=live)
    else:
        die(f"--backend must be local or ray, not {backend!r}")
    raise typer.Exit(code)


@app.command()
def report(run: str = typer.Argument(..., help="run name under lineages/ or a lineage path"),
           out: Optional[Path] = typer.Option(None, help="output folder (default: <lineage>/report)")) -> None:
    """Write an HTML + PNG report of a run."""
    from avo.lineage import LineageError, resolve_run
    from avo.ui.report import write_report
    try:
        path = write_report(resolve_run(run), out)
    except LineageError as e:
        die(str(e))
    console.print(f"report -> {path}")


@lineage_app.command("log")
def lineage_log(run: str, task: Optional[str] = None, attempts: bool = typer.Option(False, help="every attempt, not only commits")) -> None:
    """Accepted versions (or every attempt) of a run."""
    from avo.lineage import LineageError
    from avo.ui.lineage_view import log_cmd
    try:
        log_cmd(run, task=task, attempts=attempts, console=console)
    except LineageError as e:
        die(str(e))


@lineage_app.command("show")
def lineage_show(run: str, ref: str) -> None:
    """One version: meta, per-workload traces, kernel source."""
    from avo.lineage import LineageError
    from avo.ui.lineage_view import show_cmd
    try:
        show_cmd(run, ref, console=console)
    except LineageError as e:
        die(str(e))


@lineage_app.command("diff")
def lineage_diff(run: str, a: str, b: str) -> None:
    """Kernel diff between two versions."""
    from avo.lineage import LineageError
    from avo.ui.lineage_view import diff_cmd
    try:
        diff_cmd(run, a, b, console=console)
    except LineageError as e:
        die(str(e))


@lineage_app.command("best")
def lineage_best(run: str, task: Optional[str] = None) -> None:
    """The best version per task (commit, speedups, % SOL)."""
    from avo.lineage import LineageError
    from avo.ui.lineage_view import best_cmd
    try:
        best_cmd(run, task=task, console=console)
    except LineageError as e:
        die(str(e))


@workspace_app.command("open")
def workspace_open(run: str = typer.Argument(..., help="run name under lineages/ or a lineage path"),
                   island: int = typer.Option(0, help="the island's number"),
                   task: Optional[str] = typer.Option(None, help="the task (needed when the run has several)"),
                   agent: str = typer.Option("workspace", help="the name the attempt is recorded under")) -> None:
    """Make a step folder for an island (kernel, AGENTS.md, CONTEXT.md, git repo with the parent)
    and print its path."""
    from avo.config import ConfigError
    from avo.evolve.state import EvolveError
    from avo.evolve.workspace import open_workspace
    from avo.lineage import LineageError
    try:
        folder = open_workspace(run, island=island, task=task, agent=agent)
    except (LineageError, ConfigError, EvolveError) as e:
        die(str(e), getattr(e, "code", 2))
    print(folder)


@workspace_app.command("serve")
def workspace_serve(run: str = typer.Argument(..., help="run name under lineages/ or a lineage path")) -> None:
    """Keep the run's evaluator up for its submits (and `avo eval` with AVO_EVALUATOR set): no worker
    start-up per call. Runs until Ctrl-C."""
    from avo.config import ConfigError
    from avo.evolve.state import EvolveError
    from avo.evolve.workspace import serve_run
    from avo.harness.workerproc import HarnessError
    from avo.lineage import LineageError
    try:
        serve_run(run, say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    except (LineageError, ConfigError, EvolveError) as e:
        die(str(e), getattr(e, "code", 2))
    except HarnessError as e:
        die(f"evaluator: {e}", 1)


@workspace_app.command("submit")
def workspace_submit(run: str = typer.Argument(..., help="run name under lineages/ or a lineage path"),
                     folder: Path = typer.Argument(..., help="the folder `avo workspace open` printed"),
                     rebase: bool = typer.Option(False, help="merge the change onto the island best as it is now "
                                                 "(when it moved since the workspace opened) before judging it")) -> None:
    """Judge, gate and record what the agent left in a workspace (SUBMIT.md + kernel, or
    GIVEUP.md), as an external-agent step; exit 0 when committed, 1 when not."""
    from avo.config import ConfigError
    from avo.evolve.state import EvolveError
    from avo.evolve.workspace import submit_workspace
    from avo.harness.workerproc import HarnessError
    from avo.lineage import LineageError
    try:
        rec, events = submit_workspace(run, folder, rebase=rebase)
    except (LineageError, ConfigError, EvolveError) as e:
        die(str(e), getattr(e, "code", 2))
    except HarnessError as e:
        die(f"evaluator: {e}", 1)
    for text, style in events:
        console.print(text, style=style or None, highlight=False, soft_wrap=True)
    console.print(f"attempt {rec.id}: {rec.status}" + (f", commit {rec.commit[:10]}" if rec.accepted else "")
                  + (f"; transcript {rec.transcript}" if rec.transcript else ""), highlight=False, soft_wrap=True)
    raise typer.Exit(0 if rec.accepted else 1)


@app.command()
def export(run: str = typer.Argument(...), out: Path = typer.Option(Path("artifacts"), "--out"),
           task: Optional[str] = typer.Option(None),
           ship: Optional[Path] = typer.Option(None, help="write the task's best version as the one artifact at "
                                               "this folder (e.g. kernels/<family>/evolved/<name>); needs --task"),
           fmt: str = typer.Option("artifact", "--format", help="artifact (apply()) | sol-execbench (problem "
                                   "directories) | flashinfer-trace (a dataset root) | kernelbench (ModelNew files)"),
           checked_range: list[str] = typer.Option([], "--checked-range", help="AXIS=LO:HI (repeatable; needs --task): "
                                                   "the best artifact also serves keys with AXIS in [LO, HI]; both "
                                                   "ends must be workloads it passed")) -> None:
    """Export the best solution per task (and per workload key) as apply() artifacts, or the best
    per task back in a problem format."""
    from avo.apply.export import ExportError, export_foreign, export_run, ship_best
    ranges = _checked_ranges(checked_range)
    if ranges and task is None:
        die("--checked-range needs --task (a range is one task's axis)")
    try:
        if fmt != "artifact":
            if ship is not None or ranges:
                die("--ship and --checked-range write an artifact; they do not take --format")
            for p in export_foreign(run, out, fmt, task=task):
                console.print(f"{fmt} -> {p}")
            return
        if ship is not None:
            if task is None:
                die("--ship needs --task (one task's best version per artifact folder)")
            paths = [ship_best(run, task, ship, checked_ranges=ranges)]
        else:
            paths = export_run(run, out, task=task, checked_ranges=ranges)
    except ExportError as e:
        die(str(e))
    for p in paths:
        console.print(f"artifact -> {p}")


def _checked_ranges(specs: list[str]) -> Optional[dict[str, list[int]]]:
    """--checked-range AXIS=LO:HI values as {axis: [lo, hi]} (None when none given)."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        axis, _, r = spec.partition("=")
        lo, _, hi = r.partition(":")
        try:
            out[axis.strip()] = [int(lo), int(hi)]
        except ValueError:
            die(f"--checked-range {spec!r}: expected AXIS=LO:HI with integers, e.g. seq_len=128:8192")
    return out or None


@apply_app.command("measure")
def apply_measure(dirs: list[Path] = typer.Argument(..., help="artifact folders (what avo.apply.enable() takes)"),
                  task: Optional[str] = typer.Option(None, help="only this task's artifacts"),
                  device: str = typer.Option("cuda", help="cuda | interpret (interpret writes rows that claim no speed)"),
                  out: Optional[Path] = typer.Option(None, help="speed file (default DIR/speed-<gpu>.jsonl; one DIR)"),
                  baseline: Optional[Path] = typer.Option(None, help="a .py whose run(*inputs) is the call the kernels "
                                                          "replace in your engine (needs --task)")) -> None:
    """Re-measure artifacts on this GPU against the call each replaces; enable() serves a key on a
    GPU only where its record there says faster."""
    from avo.apply.artifact import ArtifactError
    from avo.apply.measure import measure
    from avo.harness.workerproc import HarnessError
    from avo.tasks import TaskError
    if device not in ("cuda", "interpret"):
        die(f"--device {device!r}: expected cuda or interpret")
    if out is not None and len(dirs) > 1:
        die("--out takes one artifact folder")
    if baseline is not None and task is None:
        die("--baseline needs --task (a baseline is one task's call)")
    for d in dirs:
        if not d.is_dir():
            die(f"{d}: not an artifact folder")
    try:
        written = measure(dirs, device, task, out, baseline, log=lambda s: console.print(s, highlight=False))
    except (ArtifactError, HarnessError, TaskError) as e:
        die(f"{e}", 1)
    for path, rows in written.items():
        console.print(f"{len(rows)} records -> {path}")
    if not written:
        die("no records written (no artifact passed on this device)", 1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
