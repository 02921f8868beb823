"""The supervisor, in one place: it watches each island and intervenes when it stagnates (K
attempts without a commit). Deterministic ladder per stagnation episode: raise `widen` (explore
further), migrate the task's global best onto the island (through the commit gate's A/B, when
another island is ahead), restart exploration from another elite ancestor; then widen again, up to
`max_widen`. Each intervention is logged to interventions.jsonl and shown. An optional trajectory
review (an operator's `review` hook, an LLM) adds free-text directions that the next steps see in
`view.directions`.

`Supervisor` is the ladder's state, derived from the logs so that a resumed run continues where
the killed one stood; `supervise` is the supervisor's turn after a step, a function of the run's
state (both backends call it)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pydantic import BaseModel, Field

from avo.config import SupervisorConfig
from avo.evolve.gate import measure_gate
from avo.evolve.setup import IslandRef
from avo.evolve.stop import with_phase
from avo.lineage import AttemptRecord, Version, VersionMeta, version_message
from avo.lineage.records import now_iso
from avo.operators.base import Review, TrajectoryReview
from avo.tasks import kernel_solution

if TYPE_CHECKING:
    from avo.evolve.state import RunState

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
        elif iv.kind == "restart" and iv.target:
            st.restart_from, st.restart_left = iv.target, self.cfg.restart_steps
            st.used_elites.append(iv.target)



# ---- the supervisor's turn in a run ----
def supervise(state: "RunState", ev, isl: IslandRef) -> None:
    """After a step on `isl`: intervene when the island stagnates. `ev` is the run's evaluator
    (a migration is measured through the commit gate's A/B)."""
    sup, lin = state.supervisor, state.lineage
    if not sup.stagnant(isl.task, isl.island):
        return
    head = lin.head(isl.task, isl.island)
    versions = lin.versions(isl.task)
    others = [v for v in versions if v.meta.island != isl.island]
    other = max(others, key=lambda v: v.speedup) if others else None
    elites = [v.sha for v in elite_versions(versions)]
    iv = sup.plan(isl.task, isl.island, (other.sha, other.speedup) if other else None, head.speedup, elites, head.sha)
    iv.attempt = state.attempts[-1].id if state.attempts else None
    if iv.kind == "migrate":
        iv.detail += migrate(state, ev, isl, head, other)
    _log(state, isl, iv, iv.detail)
    if sup.review is not None:
        review_island(state, ev, isl)
    state.refresh_bests()


def migrate(state: "RunState", ev, isl: IslandRef, head: Version, other: Version) -> str:
    """Copy another island's better version onto `isl` if the gate's A/B confirms it; the detail."""
    setup, cfg = state.tasks[isl.task], state.cfg
    best = kernel_solution(isl.task, head.source, f"{isl.task}-{head.sha[:10]}")
    cand = kernel_solution(isl.task, other.source, f"{isl.task}-{other.sha[:10]}")
    state.stop.phase = "evaluate"
    dec = measure_gate(ev, setup.task, best, head.sha, cand, setup.workloads, cfg.gate)
    state.stop.phase = "idle"
    if not dec.accepted:
        return f": not taken, {dec.reason}"
    meta = VersionMeta(run=cfg.run, task=isl.task, island=isl.island, kind="migration", parent=other.sha,
                       operator="supervisor", note=f"migrate {other.meta.task} island-{other.meta.island} "
                       f"{other.sha[:8]}: {other.meta.note}", source_hash=other.meta.source_hash,
                       scores=other.meta.scores, gate=dec.record, device_mode=other.meta.device_mode,
                       hardware=other.meta.hardware, migrated_from=other.sha,
                       run_elapsed_s=round(state.stats.elapsed_s, 3))
    sha = with_phase(state.stop, "commit", lambda: state.lineage.commit_version(
        meta, other.source, other.traces_jsonl, version_message(meta, other.traces)))
    return f": committed {sha[:8]} ({dec.reason})"


def review_island(state: "RunState", ev, isl: IslandRef) -> None:
    """Ask the review hook for new directions for a stagnant island; a failure is shown, not raised."""
    sup = state.supervisor
    head = state.lineage.head(isl.task, isl.island)
    aid = f"review-{state.next_n:05d}"
    state.stop.phase = "operator"
    try:
        out = sup.review(state.view_for(isl, head, head), state.step_context(isl, aid, state.next_n, ev))
    except KeyboardInterrupt:
        raise
    except Exception as e:
        state.stop.phase = "idle"
        state.display.event(f"supervisor {isl.label}: trajectory review failed: {type(e).__name__}: {e}", "red")
        return
    state.stop.phase = "idle"
    rr = out if isinstance(out, Review) else Review(directions=list(out))
    iv = Intervention(kind="review", task=isl.task, island=isl.island, widen=sup.state(isl.task, isl.island).widen,
                      detail=f"trajectory review: {len(rr.directions)} directions", directions=rr.directions,
                      cost_usd=rr.cost_usd, attempt=state.attempts[-1].id if state.attempts else None)
    _log(state, isl, iv, f"{iv.detail}: " + " | ".join(d[:80] for d in rr.directions))


def _log(state: "RunState", isl: IslandRef, iv: Intervention, shown: str) -> None:
    state.supervisor.apply(iv)
    with_phase(state.stop, "commit",
               lambda: state.lineage.append_intervention(iv.model_dump(mode="json", exclude_none=True)))
    state.display.event(f"supervisor {isl.label}: {shown}", "cyan")
