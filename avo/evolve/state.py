"""A run's state between steps, shared by both backends: the resolved tasks and islands, the
operators, the supervisor's ladder per island, the open lineage with its attempts, what has been
tried (duplicate check), the budget, and the counters a display shows. Opening resumes a run from
its lineage, and the ladder is rebuilt from its logs. The local loop (loop.py) and the Ray lineage
store (avo/ray/store.py) both drive a RunState through the functions of attempt.py (seeds and
attempts) and supervision.py (the supervisor's turn).

The state tells its story to a `Display` it is given (avo/ui/progress.py on a terminal, the Ray
store's event buffer); it never imports display code."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Protocol

import yaml
from pydantic import BaseModel, Field

from avo.config import BudgetConfig, RunConfig, SupervisorConfig
from avo.evolve.setup import IslandRef, TaskSetup, identity_mismatch, resolve_islands, resolve_tasks, run_identity
from avo.evolve.stop import StopSignal
from avo.lineage import Lineage, LineageError, Version
from avo.lineage.records import AttemptRecord, now_iso
from avo.operators.base import AttemptView, LineageView, Operator, StepContext, TrajectoryReview, VersionView
from avo.operators.factory import make_meter, make_operators, review_hook
from avo.operators.recipes import RecipeError
from avo.tasks import REPO_ROOT, kernel_solution, reference_seed, source_hash

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RECENT_ATTEMPTS = 24  # attempts of the island an operator sees
GIVE_UPS_TO_STOP = 3  # consecutive give-ups on every island end the run (search space exhausted)


class EvolveError(Exception):
    def __init__(self, msg: str, code: int = EXIT_USAGE):
        super().__init__(msg)
        self.code = code


# ---- what a display sees ----
@dataclass
class IslandLine:
    label: str
    operator: str
    attempts: int = 0
    commits: int = 0
    last: str = "-"
    best: float = 1.0
    widen: int = 0


@dataclass
class TaskLine:
    best_speedup: float = 1.0
    best_sol: Optional[float] = None
    best_commit: str = ""


@dataclass
class RunStats:
    run: str
    device: str
    budget: str
    prev_elapsed_s: float = 0.0  # earlier sessions of a resumed run
    attempts: int = 0
    accepted: int = 0
    evals_session: int = 0
    attempts_session: int = 0
    started: float = field(default_factory=time.monotonic)
    islands: dict[str, IslandLine] = field(default_factory=dict)
    tasks: dict[str, TaskLine] = field(default_factory=dict)
    now: str = ""  # the step in progress ("a00012 grammar_bitmask/island-1: evaluating")

    @property
    def session_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def elapsed_s(self) -> float:
        return self.prev_elapsed_s + self.session_s

    @property
    def evals_per_hour(self) -> float:
        return self.evals_session / max(self.session_s, 1e-9) * 3600


class Display(Protocol):
    """Where a run's story goes. `event` prints a line (an attempt, a commit, an intervention);
    entering it shows a live view while the loop runs, leaving (or `stop`) ends that view."""

    def event(self, text: str, style: str = "") -> None: ...

    def __enter__(self): ...

    def __exit__(self, *exc) -> None: ...

    def stop(self) -> None: ...


class EventLog:
    """A Display that keeps the lines (the Ray store hands them to its driver; the default)."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def event(self, text: str, style: str = "") -> None:
        self.lines.append((text, style))

    def take(self) -> list[tuple[str, str]]:
        lines, self.lines = self.lines, []
        return lines

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def stop(self) -> None:
        pass


# ---- the supervisor's ladder (its turn in a run: supervision.py) ----
ELITES = 5


def elite_versions(versions: list[Version]) -> list[Version]:
    """The best few distinct kernels (a seed or a migrated copy lives on several islands)."""
    out, seen = [], set()
    for v in sorted(versions, key=lambda v: -v.speedup):
        if v.meta.source_hash not in seen:
            seen.add(v.meta.source_hash)
            out.append(v)
    return out[:ELITES]


# ---- the ladder ----
class IslandState(BaseModel):
    task: str
    island: int
    widen: int = 0
    since_commit: int = 0  # attempts since the last commit or intervention
    episode: int = 0  # interventions since the last commit
    directions: list[str] = Field(default_factory=list)
    restart_from: Optional[str] = None  # elite commit the next steps start from
    restart_left: int = 0
    used_elites: list[str] = Field(default_factory=list)


class Intervention(BaseModel):
    kind: str  # widen | migrate | restart | review
    task: str
    island: int
    detail: str
    widen: int
    attempt: Optional[str] = None  # the attempt after which it happened
    target: Optional[str] = None  # migrate: source commit; restart: elite commit
    unconfirmed: list[str] = Field(default_factory=list)  # migrate/restart: versions whose re-measure failed
    directions: list[str] = Field(default_factory=list)
    cost_usd: float = 0.0
    time: str = Field(default_factory=now_iso)


class Supervisor:
    def __init__(self, cfg: SupervisorConfig, review: Optional[TrajectoryReview] = None):
        self.cfg, self.review = cfg, review
        self.islands: dict[tuple[str, int], IslandState] = {}

    def state(self, task: str, island: int) -> IslandState:
        return self.islands.setdefault((task, island), IslandState(task=task, island=island))

    def restore(self, attempts: list[AttemptRecord], interventions: list[dict]) -> None:
        """Rebuild island states from the logs (resume after a stop or a kill)."""
        events = [(a.finished or a.started, 0, a) for a in attempts] + \
                 [(row.get("time", ""), 1, row) for row in interventions]
        for _, kind, ev in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == 0:
                self.observe(ev)
            else:
                st = self.state(ev["task"], ev["island"])
                self._apply(st, Intervention.model_validate(ev), replay=True)

    def observe(self, rec: AttemptRecord) -> None:
        st = self.state(rec.task, rec.island)
        if rec.accepted:
            st.widen, st.since_commit, st.episode = 0, 0, 0
            st.directions, st.restart_from, st.restart_left = [], None, 0
        else:
            st.since_commit += 1
        if st.restart_left > 0:
            st.restart_left -= 1
            if st.restart_left == 0:
                st.restart_from = None

    def stagnant(self, task: str, island: int) -> bool:
        return self.state(task, island).since_commit >= self.cfg.stagnation_k

    def plan(self, task: str, island: int, other_best: Optional[tuple[str, float]], head_speedup: float,
             elites: list[str], head_sha: str) -> Intervention:
        """The next intervention for a stagnant island. other_best: (commit, speedup) of the
        task's best version on another island; elites: accepted commits, best first."""
        st = self.state(task, island)
        rung = st.episode % 3
        if rung == 1 and self.cfg.migrate and other_best and other_best[1] > head_speedup:
            return Intervention(kind="migrate", task=task, island=island, widen=st.widen, target=other_best[0],
                                detail=f"migrate the task's best {other_best[0][:8]} ({other_best[1]:.2f}x) "
                                       f"onto an island at {head_speedup:.2f}x")
        if rung == 2 and self.cfg.restart:
            fresh = [e for e in elites if e != head_sha and e not in st.used_elites]
            if fresh:
                return Intervention(kind="restart", task=task, island=island, widen=st.widen, target=fresh[0],
                                    detail=f"explore from elite {fresh[0][:8]} for {self.cfg.restart_steps} steps")
        widen = min(st.widen + 1, self.cfg.max_widen)
        return Intervention(kind="widen", task=task, island=island, widen=widen,
                            detail=f"widen exploration {st.widen} -> {widen}" if widen > st.widen
                            else f"exploration already at its widest ({widen}); keep going")

    def apply(self, iv: Intervention) -> None:
        self._apply(self.state(iv.task, iv.island), iv, replay=False)

    def _apply(self, st: IslandState, iv: Intervention, replay: bool) -> None:
        st.since_commit = 0
        if iv.kind == "review":
            st.directions = list(iv.directions)
            return
        st.episode += 1
        if iv.kind == "widen":
            st.widen = iv.widen
        elif iv.kind == "restart":
            st.used_elites.extend(iv.unconfirmed)  # an elite whose gain did not reproduce is not tried again
            if iv.target:
                st.restart_from, st.restart_left = iv.target, self.cfg.restart_steps
                st.used_elites.append(iv.target)


def budget_text(b: BudgetConfig) -> str:
    parts = [f"{b.wall_minutes:g} min" if b.wall_minutes else "", f"{b.attempts} attempts" if b.attempts else "",
             f"${b.llm_usd:g}" if b.llm_usd is not None else ""]
    return ", ".join(p for p in parts if p)


def version_view(v: Version) -> VersionView:
    s = v.meta.scores
    return VersionView(commit=v.sha, source=v.source, note=v.meta.note, speedup_vs_seed=s.speedup_vs_seed,
                       speedup_vs_baseline=s.speedup_vs_baseline, sol_fraction=s.sol_fraction,
                       latencies_ms=dict(s.latency_ms))


class RunState:
    def __init__(self, cfg: RunConfig, device: str, operators: Optional[dict[str, Operator]] = None,
                 display: Optional[Display] = None):
        """`device` is resolved by the caller (the Ray backend resolves it against the cluster's
        GPUs, which need not be on this node); `operators` lets a caller (tests, embedding code)
        supply its own Operator objects by name."""
        self.cfg, self.device = cfg, device
        self.display: Display = display if display is not None else EventLog()
        self.stop = StopSignal()
        self.tasks: dict[str, TaskSetup] = resolve_tasks(cfg, device)
        self.islands: list[IslandRef] = resolve_islands(cfg, self.tasks)
        self.knowledge_dir = REPO_ROOT / "knowledge_base"
        self.meter = make_meter(cfg)  # LLM spend of agentic operators; set from the logs on resume
        try:
            self.operators = operators if operators is not None else \
                make_operators(cfg, self.knowledge_dir, device, self.meter)
            missing = sorted({i.operator for i in self.islands} - set(self.operators))
            if missing:
                raise EvolveError(f"no operator object for {', '.join(missing)}")
            review = review_hook(cfg, self.operators)
        except (RecipeError, ImportError) as e:
            raise EvolveError(f"operators: {e}") from None
        self.supervisor = Supervisor(cfg.supervisor, review)
        self.lineage: Optional[Lineage] = None
        self.attempts: list[AttemptRecord] = []
        self.seen: dict[str, set[str]] = {}  # task -> source hashes tried or committed
        self.give_ups: dict[str, int] = {}  # island label -> consecutive give-ups / operator errors
        self.next_n = 1
        self._seeds: dict[str, Optional[Version]] = {}
        self.stats = RunStats(run=cfg.run, device=device, budget=budget_text(cfg.budget))

    def seed_version(self, task: str) -> Optional[Version]:
        """The task's seed commit (the first island's): every "vs seed" is measured against it."""
        if task not in self._seeds:
            self._seeds[task] = next((v for v in self.lineage.versions(task) if v.meta.kind == "seed"), None)
        return self._seeds[task]

    def config_yaml(self) -> str:
        """The run config as the lineage's root commit holds it."""
        return yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)

    def reidentify(self) -> None:
        """Rewrite the identity of a lineage that holds nothing yet, after a seed changed."""
        try:
            self.lineage.reset_root(self.cfg.run, self.config_yaml(), run_identity(self.device, self.tasks, self.islands))
        except LineageError as e:
            raise EvolveError(f"a seed changed after the run began ({e}); start a new --run", EXIT_FAILED) from None

    def island(self, label: str) -> IslandRef:
        return next(i for i in self.islands if i.label == label)

    # ---- opening ----
    def open_lineage(self) -> None:
        """Open (resume) or create the run's lineage and rebuild the state from its logs."""
        ident = run_identity(self.device, self.tasks, self.islands)
        cfg_yaml = self.config_yaml()
        lin, created = Lineage.open_or_create(self.cfg.lineage_path, self.cfg.run, cfg_yaml, ident)
        self.lineage = lin
        if not created:
            stored = lin.identity().get("seeds", {})
            for name, setup in self.tasks.items():  # the run fell back from Inductor's seed when it began
                if setup.seed_kind == "inductor" and stored.get(name) == source_hash(reference_seed(setup.task.definition)):
                    setup.plain_seed("it failed when this run began")
            ident = run_identity(self.device, self.tasks, self.islands)
            why = identity_mismatch(lin.identity(), ident)
            if why and not lin.branches() and not lin.attempts():
                lin.reset_root(self.cfg.run, cfg_yaml, ident)  # nothing recorded yet (a failed seed): start over
                why = None
            if why:
                raise EvolveError(f"run {self.cfg.run!r} exists ({lin.path}) with a different setup: {why}; "
                                  f"use another --run or the run's original config")
            for rec in lin.reconcile():
                self.display.event(f"recovered {rec.id}: commit {rec.commit[:8]} was made but not logged", "yellow")
        self.attempts = lin.attempts()
        self.next_n = lin.next_attempt_number()
        for name in self.tasks:
            self.seen[name] = {a.source_hash for a in self.attempts if a.task == name and a.source_hash}
            self.seen[name] |= {v.meta.source_hash for v in lin.versions(name)}
        self.supervisor.restore(self.attempts, lin.interventions())
        self.stats.prev_elapsed_s = max((a.run_elapsed_s for a in self.attempts), default=0.0)
        if self.meter is not None:
            self.meter.spent_usd = self.llm_spent()
        self.stats.attempts = len(self.attempts)
        self.stats.accepted = sum(a.accepted for a in self.attempts)
        for isl in self.islands:
            mine = [a for a in self.attempts if a.task == isl.task and a.island == isl.island]
            self.stats.islands[isl.label] = IslandLine(label=isl.label, operator=isl.operator, attempts=len(mine),
                                                       commits=sum(a.accepted for a in mine),
                                                       last=mine[-1].status if mine else "-")
            tail = 0
            for a in reversed(mine):
                if a.status not in ("GAVE_UP", "OPERATOR_ERROR"):
                    break
                tail += 1
            self.give_ups[isl.label] = tail
        if not created:
            self.display.event(f"resuming {lin.path}: {len(self.attempts)} attempts, "
                               f"{self.stats.accepted} accepted so far")

    def refresh_bests(self) -> None:
        for name in self.tasks:
            best = self.lineage.best(name)
            self.stats.tasks[name] = TaskLine(best_speedup=best.speedup, best_sol=best.meta.scores.sol_fraction,
                                              best_commit=best.sha)
        for isl in self.islands:
            head = self.lineage.head(isl.task, isl.island)
            line = self.stats.islands[isl.label]
            line.best = head.speedup if head else 1.0
            line.widen = self.supervisor.state(isl.task, isl.island).widen

    # ---- budget ----
    def llm_spent(self) -> float:
        return sum(a.cost_usd for a in self.attempts) + sum(r.get("cost_usd", 0.0) for r in self.lineage.interventions())

    def budget_reason(self) -> Optional[str]:
        b = self.cfg.budget
        if b.attempts is not None and len(self.attempts) >= b.attempts:
            return f"{len(self.attempts)} attempts of {b.attempts}"
        if b.wall_minutes is not None and self.stats.elapsed_s >= b.wall_minutes * 60:
            return f"{self.stats.elapsed_s / 60:.1f} of {b.wall_minutes:g} minutes"
        usd = self.llm_spent()
        if b.llm_usd is not None and usd >= b.llm_usd:
            return f"${usd:.2f} of ${b.llm_usd:g} LLM spend"
        return None

    def exhausted(self) -> bool:
        return all(self.give_ups.get(i.label, 0) >= GIVE_UPS_TO_STOP for i in self.islands)

    # ---- what an operator sees ----
    def start_and_head(self, isl: IslandRef) -> tuple[Version, Version]:
        """The version the next edit starts from (the island head, or the elite a restart chose)
        and the island best the gate measures against."""
        st = self.supervisor.state(isl.task, isl.island)
        head = self.lineage.head(isl.task, isl.island)
        return (self.lineage.version(st.restart_from) if st.restart_from else head), head

    def view_for(self, isl: IslandRef, start: Version, head: Version) -> LineageView:
        st = self.supervisor.state(isl.task, isl.island)
        versions = elite_versions(self.lineage.versions(isl.task))
        recent = [a for a in self.attempts if a.task == isl.task and a.island == isl.island][-RECENT_ATTEMPTS:]
        directions = list(st.directions)
        if start.sha != head.sha:
            directions.append(f"exploring from elite {start.sha[:8]} ({start.speedup:.2f}x vs seed); "
                              f"the island best to beat is {head.sha[:8]} ({head.speedup:.2f}x)")
        return LineageView(task=isl.task, island=isl.island, best=version_view(start),
                           elites=[version_view(v) for v in versions],
                           recent=[AttemptView(id=a.id, status=a.status, accepted=a.accepted, note=a.note,
                                               error=a.error, gain=a.gain, source_hash=a.source_hash) for a in recent],
                           directions=directions, widen=st.widen, seen_hashes=set(self.seen[isl.task]))

    def step_context(self, isl: IslandRef, aid: str, n: int, ev) -> StepContext:
        setup = self.tasks[isl.task]
        probe = lambda src: ev.evaluate(setup.task, kernel_solution(isl.task, src, f"{isl.task}-{aid}-probe"),
                                        setup.workloads)
        return StepContext(seed=self.cfg.seed * 1_000_003 + n, workdir=self.lineage.path / "work" / aid,
                           evaluate=probe, knowledge_dir=self.knowledge_dir, lineage_root=self.lineage.path,
                           run_shell=lambda cmd, folder, timeout_s: local_shell(ev, self.device, cmd, folder, timeout_s))

    def close(self) -> None:
        if self.lineage is not None:
            self.lineage.close()


def local_shell(ev, device: str, command: str, folder, timeout_s: float):
    """An operator's shell command on the local backend. The loop is one thread: while an operator
    proposes nothing else evaluates, so the command has the GPU as an evaluation would; its time
    counts as the evaluator's, like the operator's own evaluations."""
    from avo.operators.shell import run_shell
    res = run_shell(command, folder, timeout_s, device)
    ev.busy_s += res.seconds
    return res
