"""The supervisor's turn after each step (local and Ray backends): when an island stagnates, plan
an intervention (restart from an elite, widen, or migrate another island's best through the commit
gate), log it, and optionally run an LLM trajectory review. A mixin of avo.evolve.Evolution, whose
attributes it uses (supervisor, lineage, tasks, cfg, stop, stats, progress, attempts)."""
from __future__ import annotations

from avo.commit_message import version_message
from avo.gate import measure_gate
from avo.harness.runner import Evaluator
from avo.lineage_records import Version, VersionMeta
from avo.operators.supervisor import Intervention
from avo.run_setup import IslandRef, kernel_solution
from avo.stop_signal import with_phase

ELITES = 5


def elite_versions(versions: list[Version]) -> list[Version]:
    """The best few distinct kernels (a seed or a migrated copy lives on several islands)."""
    out, seen = [], set()
    for v in sorted(versions, key=lambda v: -v.speedup):
        if v.meta.source_hash not in seen:
            seen.add(v.meta.source_hash)
            out.append(v)
    return out[:ELITES]


class IslandSupervision:
    def supervise(self, ev: Evaluator, isl: IslandRef) -> None:
        if not self.supervisor.stagnant(isl.task, isl.island):
            return
        lin = self.lineage
        head = lin.head(isl.task, isl.island)
        versions = lin.versions(isl.task)
        others = [v for v in versions if v.meta.island != isl.island]
        other = max(others, key=lambda v: v.speedup) if others else None
        elites = [v.sha for v in elite_versions(versions)]
        iv = self.supervisor.plan(isl.task, isl.island, (other.sha, other.speedup) if other else None,
                                  head.speedup, elites, head.sha)
        iv.attempt = self.attempts[-1].id if self.attempts else None
        if iv.kind == "migrate":
            iv.detail += self.migrate(ev, isl, head, other)
        self.supervisor.apply(iv)
        with_phase(self.stop, "commit", lambda: lin.append_intervention(iv.model_dump(mode="json", exclude_none=True)))
        self.progress.event(f"supervisor {isl.label}: {iv.detail}", "cyan")
        if self.supervisor.review is not None:
            self.review(ev, isl)
        self._refresh_bests()

    def migrate(self, ev: Evaluator, isl: IslandRef, head: Version, other: Version) -> str:
        setup = self.tasks[isl.task]
        best = kernel_solution(isl.task, head.source, f"{isl.task}-{head.sha[:10]}")
        cand = kernel_solution(isl.task, other.source, f"{isl.task}-{other.sha[:10]}")
        self.stop.phase = "evaluate"
        dec = measure_gate(ev, setup.task, best, head.sha, cand, setup.workloads, self.cfg.gate)
        self.stop.phase = "idle"
        if not dec.accepted:
            return f": not taken, {dec.reason}"
        meta = VersionMeta(run=self.cfg.run, task=isl.task, island=isl.island, kind="migration", parent=other.sha,
                           operator="supervisor", note=f"migrate {other.meta.task} island-{other.meta.island} "
                           f"{other.sha[:8]}: {other.meta.note}", source_hash=other.meta.source_hash,
                           scores=other.meta.scores, gate=dec.record, device_mode=other.meta.device_mode,
                           hardware=other.meta.hardware, migrated_from=other.sha, run_elapsed_s=round(self.stats.elapsed_s, 3))
        sha = with_phase(self.stop, "commit", lambda: self.lineage.commit_version(
            meta, other.source, other.traces_jsonl, version_message(meta, other.traces)))
        return f": committed {sha[:8]} ({dec.reason})"

    def review(self, ev: Evaluator, isl: IslandRef) -> None:
        lin = self.lineage
        head = lin.head(isl.task, isl.island)
        aid = f"review-{self.next_n:05d}"
        self.stop.phase = "operator"
        try:
            rr = self.supervisor.run_review(self.view_for(isl, head, head), self.step_context(isl, aid, self.next_n, ev))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            self.stop.phase = "idle"
            self.progress.event(f"supervisor {isl.label}: trajectory review failed: {type(e).__name__}: {e}", "red")
            return
        self.stop.phase = "idle"
        iv = Intervention(kind="review", task=isl.task, island=isl.island, widen=self.supervisor.state(isl.task, isl.island).widen,
                          detail=f"trajectory review: {len(rr.directions)} directions", directions=rr.directions,
                          cost_usd=rr.cost_usd, attempt=self.attempts[-1].id if self.attempts else None)
        self.supervisor.apply(iv)
        with_phase(self.stop, "commit", lambda: lin.append_intervention(iv.model_dump(mode="json", exclude_none=True)))
        self.progress.event(f"supervisor {isl.label}: {iv.detail}: " + " | ".join(d[:80] for d in rr.directions), "cyan")
