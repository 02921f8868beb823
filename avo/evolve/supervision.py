"""The supervisor's turn after a step (both backends call `supervise`): when an island stagnates
(K attempts without a commit), take the next rung of its ladder (avo/evolve/state.py: Supervisor)
and carry it out: widen exploration, migrate the task's global best onto the island (through the
commit gate's A/B), or restart exploration from another elite ancestor. Each intervention is
logged to interventions.jsonl and shown. An optional trajectory review (an operator's `review`
hook, an LLM) adds free-text directions that the next steps see in `view.directions`. Functions
of the run's explicit state; nothing here keeps state of its own."""
from __future__ import annotations

from avo.evolve.gate import measure_gate
from avo.evolve.setup import IslandRef
from avo.evolve.state import Intervention, RunState, elite_versions
from avo.evolve.stop import with_phase
from avo.lineage import Version, VersionMeta, version_message
from avo.operators.base import Review
from avo.tasks import kernel_solution

# ---- the supervisor's turn in a run ----
def supervise(state: RunState, ev, isl: IslandRef) -> None:
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


def migrate(state: RunState, ev, isl: IslandRef, head: Version, other: Version) -> str:
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


def review_island(state: RunState, ev, isl: IslandRef) -> None:
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


def _log(state: RunState, isl: IslandRef, iv: Intervention, shown: str) -> None:
    state.supervisor.apply(iv)
    with_phase(state.stop, "commit",
               lambda: state.lineage.append_intervention(iv.model_dump(mode="json", exclude_none=True)))
    state.display.event(f"supervisor {isl.label}: {shown}", "cyan")
