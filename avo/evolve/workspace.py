"""The workspace protocol: any coding agent (or a person) drives one variation step by hand.

`open_workspace(run, island, task)` makes the folder an external-operator step would get
(`lineages/<run>/work/ws-<time>-<task>-<island>/agent/`: the island's kernel, AGENTS.md,
CONTEXT.md, a git repository whose first commit is the parent) and notes in `workspace.json`
beside it which run, island and parent it belongs to. The agent works there as AGENTS.md says
(`avo eval`, `avo lineage`, the knowledge base) and leaves SUBMIT.md or GIVEUP.md (NOTES.md too,
if it likes). `submit_workspace(run, folder)` then takes that outcome through the same step as
the evolve loop (avo/evolve/loop.py `step`: admitted, evaluated, gated against the island best
as it is now, settled, recorded in attempts.jsonl, committed when accepted), with
`workspace.log` (opening, submission, NOTES.md) as the transcript.

Both take the run's lock: not while `avo evolve` runs the same run. `serve_run` keeps one evaluator
up for a run's submits (avo/harness/served.py): without it each submit starts its own workers."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import yaml
from pydantic import ValidationError

from avo.config import ConfigError, ExternalSpec, RunConfig
from avo.evolve.setup import IslandRef
from avo.evolve.state import EXIT_USAGE, EvolveError, RunState, version_view
from avo.harness.served import ADDRESS_ENV, address_for, serve, served_or_local
from avo.lineage import AttemptRecord, Lineage, resolve_run
from avo.lineage.records import now_iso
from avo.lineage.repo import CONFIG_FILE
from avo.operators.base import GiveUp, LineageView, Proposal, Review, StepContext
from avo.operators.external import ExternalOperator, keep_notes

WORKSPACE_FILE = "workspace.json"
LOG_FILE = "workspace.log"


class _ByHand:
    """The islands' operators while a workspace is opened or submitted: never asked to propose."""

    def __init__(self, name: str):
        self.name = name

    def propose(self, view: LineageView, ctx: StepContext):
        return GiveUp(operator=self.name, reason="not run by avo workspace")

    def review(self, view: LineageView, ctx: StepContext) -> Review:
        return Review()


def run_state(run: str) -> RunState:
    """The run's state as `avo evolve` would rebuild it (config from the lineage's root commit),
    with stand-in operators; the caller opens the lineage."""
    from avo.evolve.loop import resolve_run_device
    path = resolve_run(run).resolve()
    with Lineage.open(path) as lin:
        raw = yaml.safe_load(lin.root_file(CONFIG_FILE)) or {}
    (raw.get("eval") or {}).pop("device", None)  # stored resolved; a config sets it at the top level
    try:
        cfg = RunConfig.model_validate({**raw, "lineage_dir": str(path)})
    except ValidationError as e:
        raise ConfigError(f"{path / CONFIG_FILE}: {' '.join(str(e).split())[:300]}") from None
    names = {o.name for o in cfg.operators}
    return RunState(cfg, resolve_run_device(cfg.device), operators={n: _ByHand(n) for n in names})


def _island(state: RunState, task: Optional[str], island: int) -> IslandRef:
    tasks = sorted({i.task for i in state.islands})
    if task is None:
        if len(tasks) > 1:
            raise EvolveError(f"this run has several tasks ({', '.join(tasks)}): name one with --task", EXIT_USAGE)
        task = tasks[0]
    found = next((i for i in state.islands if i.task == task and i.island == island), None)
    if found is None:
        raise EvolveError(f"no island {island} of task {task!r} in this run; islands: "
                          f"{', '.join(i.label for i in state.islands)}", EXIT_USAGE)
    return found


def _operator(state: RunState, name: str) -> ExternalOperator:
    return ExternalOperator(ExternalSpec(name=name, command="(driven by hand: avo workspace)"),
                            device=state.device, knowledge_dir=state.knowledge_dir)


def open_workspace(run: str, island: int = 0, task: Optional[str] = None, agent: str = "workspace") -> Path:
    """A step folder for `agent` on the island (see the module docstring); its path."""
    state = run_state(run)
    try:
        state.open_lineage()
        isl = _island(state, task, island)
        start, head = state.start_and_head(isl)
        if head is None:
            raise EvolveError(f"{isl.label} has no version yet: `avo evolve` this run first (it commits the seeds)",
                              EXIT_USAGE)
        view = state.view_for(isl, start, head)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = state.lineage.path / "work" / f"ws-{stamp}-{isl.task}-{isl.island}"
        wd, k = base, 1
        while wd.exists():
            k += 1
            wd = base.with_name(f"{base.name}-{k}")
        ctx = StepContext(seed=0, workdir=wd, knowledge_dir=state.knowledge_dir, lineage_root=state.lineage.path)
        folder = wd / "agent"
        finish = (f"Then run `avo workspace submit {run} {folder}`: it evaluates the kernel, passes it through "
                  f"the commit gate against the island best as it is then, and records the attempt (a commit "
                  f"when accepted). Not while `avo evolve` runs this run: both need it to themselves. "
                  f"Where `avo workspace serve {run}` runs, submits use its evaluator (no worker start-up "
                  f"each time), and so does `avo eval` with {ADDRESS_ENV}={address_for(state.lineage.path)} set.")
        try:
            _operator(state, agent).prepare(view, ctx, finish_note=finish)
        except BaseException:
            shutil.rmtree(wd, ignore_errors=True)  # no half-made step folder left in the lineage
            raise
        meta = {"run": state.cfg.run, "lineage": str(state.lineage.path), "task": isl.task, "island": isl.island,
                "label": isl.label, "agent": agent, "parent": start.sha, "head": head.sha, "opened": now_iso(),
                "submitted": None}
        (wd / WORKSPACE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (wd / LOG_FILE).write_text(f"[avo] {now_iso()} workspace opened for {agent} on {isl.label}, "
                                   f"parent {start.sha[:10]} (island best {head.sha[:10]})\n")
        return folder
    finally:
        state.close()


def workspace_of(folder: Path) -> tuple[Path, Path, dict]:
    """(step folder, agent folder, workspace.json) for an agent folder or its step folder."""
    folder = Path(folder).resolve()
    wd = folder if (folder / WORKSPACE_FILE).exists() else folder.parent
    if not (wd / WORKSPACE_FILE).exists():
        raise EvolveError(f"{folder}: not a workspace (no {WORKSPACE_FILE} beside it); open one with "
                          f"`avo workspace open RUN --island I`", EXIT_USAGE)
    return wd, wd / "agent", json.loads((wd / WORKSPACE_FILE).read_text())


class _Submitted:
    """The operator of a submitted workspace: its outcome is what the agent left in the folder,
    judged against the parent the workspace was opened on."""

    def __init__(self, state: RunState, wd: Path, folder: Path, meta: dict):
        self.name = meta["agent"]
        self.state, self.wd, self.folder, self.meta = state, wd, folder, meta

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp:
        parent = self.state.lineage.version(self.meta["parent"])
        log = self.wd / LOG_FILE
        with open(log, "a") as f:
            f.write(f"[avo] {now_iso()} submitted as {Path(ctx.workdir).name}\n")
        keep_notes(self.folder, log)
        out = _operator(self.state, self.name).outcome(view.model_copy(update={"best": version_view(parent)}),
                                                       self.folder, log, code=0, timed_out=False)
        if isinstance(out, GiveUp) and out.reason.startswith("agent gave up: "):
            out.reason = out.reason.replace("agent gave up: ", f"{self.name} gave up: ", 1)
        return out


def _rebase(state: RunState, wd: Path, folder: Path, meta: dict) -> None:
    """The agent's change (workspace parent -> its kernel) merged onto the island best as it is now
    (`git merge-file`), so an edit written for an older best lands on the current one; the
    agent's own file stays beside it as <kernel>.agent. A conflict is an error naming the hunks."""
    import subprocess
    import tempfile
    head = state.lineage.head(meta["task"], meta["island"])
    if head is None or head.sha == meta["parent"]:
        return
    name = state.view_for(state.island(meta["label"]), head, head).kernel_name
    mine = folder / name
    if not mine.exists() or (folder / "GIVEUP.md").exists():
        return
    base = state.lineage.version(meta["parent"]).source
    with tempfile.TemporaryDirectory() as tmp:
        b, h = Path(tmp) / "base", Path(tmp) / "head"
        b.write_text(base)
        h.write_text(head.source)
        r = subprocess.run(["git", "merge-file", "-p", "-L", "yours", "-L", f"parent {meta['parent'][:10]}",
                            "-L", f"island best {head.sha[:10]}", str(mine), str(b), str(h)],
                           capture_output=True, text=True)
    if r.returncode != 0:
        why = f"{r.returncode} conflicting hunk(s)" if r.returncode > 0 else r.stderr.strip()
        raise EvolveError(f"{mine}: the change does not merge onto the island best {head.sha[:10]} ({why}); "
                          f"submit without --rebase, or open a new workspace on the best", EXIT_USAGE)
    (folder / f"{name}.agent").write_text(mine.read_text())
    mine.write_text(r.stdout)
    with open(wd / LOG_FILE, "a") as log:
        log.write(f"[avo] {now_iso()} rebased: the change from parent {meta['parent'][:10]} merged onto the "
                  f"island best {head.sha[:10]} (the agent's file: {name}.agent)\n")
    meta["parent"] = head.sha


def submit_workspace(run: str, folder: Path, rebase: bool = False) -> tuple[AttemptRecord, list[tuple[str, str]]]:
    """Judge, gate and record what the agent left in a workspace, as an external step's outcome;
    (the attempt's record, the run's event lines). `rebase`: the agent's change is first merged
    onto the island best as it is now (`_rebase`), when the best moved since the workspace opened."""
    from avo.evolve.loop import step
    wd, folder, meta = workspace_of(folder)
    if meta.get("submitted"):
        raise EvolveError(f"{wd.name} was already submitted (attempt {meta['submitted']}); open a new workspace",
                          EXIT_USAGE)
    if not (folder / "SUBMIT.md").exists() and not (folder / "GIVEUP.md").exists():
        raise EvolveError(f"{folder} has neither SUBMIT.md (first line: what changed and why) nor GIVEUP.md: "
                          f"write one, then submit", EXIT_USAGE)
    state = run_state(run)
    if state.cfg.lineage_path.resolve() != Path(meta["lineage"]).resolve():
        state.close()
        raise EvolveError(f"{wd.name} belongs to run {meta['run']} ({meta['lineage']}), not {run}", EXIT_USAGE)
    try:
        with served_or_local(address_for(state.cfg.lineage_path), state.cfg.eval_config(),
                             lambda text: state.display.event(text, "yellow")) as ev:
            state.open_lineage()
            if state.lineage.rev_parse(meta["parent"]) is None:
                raise EvolveError(f"the workspace's parent {meta['parent'][:10]} is not in this lineage", EXIT_USAGE)
            if rebase:
                _rebase(state, wd, folder, meta)
            rec = step(state, ev, state.island(meta["label"]), op=_Submitted(state, wd, folder, meta))
    finally:
        state.close()
    meta["submitted"] = rec.id
    (wd / WORKSPACE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    events = state.display.take()
    # The verdict joins the transcript, so the step folder alone says how its submission went.
    with open(wd / LOG_FILE, "a") as log:
        log.write(f"[avo] {now_iso()} {rec.id}: {rec.status}" + (f", commit {rec.commit[:10]}" if rec.accepted else "")
                  + "".join(f"\n[avo] {text}" for text, _ in events) + "\n")
    return rec, events


def serve_run(run: str, say=print) -> None:
    """`avo workspace serve RUN`: the run's evaluator kept up for its submits (and `avo eval`s)
    until Ctrl-C or SIGTERM (avo/harness/served.py). It holds no lineage lock: submits do."""
    state = run_state(run)
    address, cfg = address_for(state.cfg.lineage_path), state.cfg.eval_config()
    tasks = [setup.task for setup in state.tasks.values()]
    state.close()
    say(f"submits of run {state.cfg.run} use it; for `avo eval`: export {ADDRESS_ENV}={address}")
    serve(address, cfg, tasks, say)
