"""The supervisor: watches each island and intervenes when it stagnates (K attempts without a
commit). Deterministic ladder per stagnation episode: raise `widen` (explore further), migrate
the task's global best onto the island (when another island is ahead), restart exploration from
another elite ancestor; then widen again, up to `max_widen`. Each intervention is logged to
interventions.jsonl and shown. An optional trajectory review (an LLM, from helper operators)
adds free-text directions that the next steps see in `view.directions`.

State is derived from the logs, so a resumed run continues where the killed one stood."""
from __future__ import annotations

from typing import Callable, Optional, Union

from pydantic import BaseModel, Field

from avo.config import SupervisorConfig
from avo.lineage_records import AttemptRecord, now_iso
from avo.operators.base import LineageView, StepContext


class ReviewResult(BaseModel):
    directions: list[str] = Field(default_factory=list)
    cost_usd: float = 0.0
    tokens: int = 0
    transcript: Optional[str] = None


# The hook: given a stagnant island's view, return new directions (an LLM trajectory review).
TrajectoryReview = Callable[[LineageView, StepContext], Union[ReviewResult, list[str]]]


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

    def run_review(self, view: LineageView, ctx: StepContext) -> Optional[ReviewResult]:
        """Ask the trajectory review hook for directions; None without a hook."""
        if self.review is None:
            return None
        out = self.review(view, ctx)
        return out if isinstance(out, ReviewResult) else ReviewResult(directions=list(out))
