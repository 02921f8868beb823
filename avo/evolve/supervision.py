"""The supervisor's turn after a step (both backends call `supervise`): when an island stagnates
(K attempts without a commit), take the next rung of its ladder (avo/evolve/state.py: Supervisor)
and carry it out: widen exploration, migrate the task's global best onto the island (through the
commit gate's A/B), or restart exploration from another elite ancestor. A version is re-measured
before it seeds another island or a restart, so a false elite (a gain that was noise) never
does: a migration's candidate is timed against the island head it would replace, a restart's
elite against the version its gate measured it against; when the gate does not accept it again,
the next version is tried (REMEASURE_TRIES at most), and the event names the ones not confirmed.
Each intervention is logged to interventions.jsonl and shown. An optional trajectory review (an
operator's `review` hook, an LLM) adds free-text directions that the next steps see in
`view.directions`. Functions of the run's explicit state; nothing here keeps state of its own."""
from __future__ import annotations

from typing import Optional

from avo.evolve.gate import GateDecision, measure_gate
from avo.evolve.setup import IslandRef
from avo.evolve.state import Intervention, RunState, elite_versions
from avo.evolve.stop import with_phase
from avo.lineage import LineageError, Version, VersionMeta, version_message
from avo.operators.base import Review
from avo.tasks import kernel_solution

REMEASURE_TRIES = 3  # versions re-measured for one migration or restart, best first


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
        iv.detail += migrate(state, ev, isl, head, migration_candidates(versions, isl, head), iv)
    elif iv.kind == "restart":
        iv.detail = restart_from_confirmed(state, ev, isl, head, versions, iv)
    _log(state, isl, iv, iv.detail)
    if sup.review is not None:
        review_island(state, ev, isl)
    state.refresh_bests()


def migration_candidates(versions: list[Version], isl: IslandRef, head: Version) -> list[Version]:
    """Other islands' versions better than `head` by their records, best first, one per source."""
    out, seen = [], {head.meta.source_hash}
    for v in sorted((v for v in versions if v.meta.island != isl.island), key=lambda v: -v.speedup):
        if v.speedup > head.speedup and v.meta.source_hash not in seen:
            seen.add(v.meta.source_hash)
            out.append(v)
    return out


def _ab(state: RunState, ev, isl: IslandRef, a: Version, b: Version) -> GateDecision:
    """The commit gate's A/B of version b against version a (one session, both re-timed)."""
    setup = state.tasks[isl.task]
    best = kernel_solution(isl.task, a.source, f"{isl.task}-{a.sha[:10]}")
    cand = kernel_solution(isl.task, b.source, f"{isl.task}-{b.sha[:10]}")
    state.stop.phase = "evaluate"
    try:
        return measure_gate(ev, setup.task, best, a.sha, cand, setup.workloads, state.cfg.gate)
    finally:
        state.stop.phase = "idle"


def _short(reason: str) -> str:
    return " ".join(reason.split(" | ")[0].split())[:160]


def migrate(state: RunState, ev, isl: IslandRef, head: Version, candidates: list[Version],
            iv: Optional[Intervention] = None) -> str:
    """Copy another island's better version onto `isl`: the first of `candidates` (best first)
    whose gain over the island head the gate's A/B confirms; the detail. The candidates it did not
    confirm go into iv.unconfirmed, the one taken into iv.target."""
    cfg = state.cfg
    missed = []
    for other in candidates[:REMEASURE_TRIES]:
        dec = _ab(state, ev, isl, head, other)
        if not dec.accepted:
            missed.append(f"{other.sha[:8]} ({other.speedup:.2f}x recorded) not confirmed: {_short(dec.reason)}")
            if iv is not None:
                iv.unconfirmed.append(other.sha)
            continue
        meta = VersionMeta(run=cfg.run, task=isl.task, island=isl.island, kind="migration", parent=other.sha,
                           operator="supervisor", note=f"migrate {other.meta.task} island-{other.meta.island} "
                           f"{other.sha[:8]}: {other.meta.note}", source_hash=other.meta.source_hash,
                           scores=other.meta.scores, gate=dec.record, device_mode=other.meta.device_mode,
                           hardware=other.meta.hardware, migrated_from=other.sha,
                           run_elapsed_s=round(state.stats.elapsed_s, 3))
        sha = with_phase(state.stop, "commit", lambda: state.lineage.commit_version(
            meta, other.source, other.traces_jsonl, version_message(meta, other.traces)))
        if iv is not None:
            iv.target = other.sha
        before = f"; {'; '.join(missed)}; next confirmed" if missed else ""
        return f"{before}: committed {sha[:8]} from {other.sha[:8]} ({dec.reason})"
    if not candidates:
        return ": not taken, no version better than the island head"
    if len(missed) == 1:
        return f": not taken, {missed[0]}"
    return f": not taken, none confirmed: {'; '.join(missed)}"


def confirm(state: RunState, ev, isl: IslandRef, v: Version) -> tuple[bool, str]:
    """Whether v's recorded gain reproduces: the gate accepts it again against the version its gate
    measured it against (a seed has no gain to confirm)."""
    if v.meta.gate is None:
        return True, "a seed"
    try:
        a = state.lineage.version(v.meta.gate.against)
    except LineageError as e:
        return False, str(e)
    dec = _ab(state, ev, isl, a, v)
    return dec.accepted, (f"re-measured against {a.sha[:8]}: {dec.reason}" if dec.accepted else _short(dec.reason))


def restart_from_confirmed(state: RunState, ev, isl: IslandRef, head: Version, versions: list[Version],
                           iv: Intervention) -> str:
    """Choose a restart's elite among those not used yet (best first): the first whose gain
    reproduces. iv.target becomes it (None when none does), iv.unconfirmed the others; the detail."""
    st = state.supervisor.state(isl.task, isl.island)
    fresh = [v for v in elite_versions(versions) if v.sha != head.sha and v.sha not in st.used_elites]
    missed = []
    for v in fresh[:REMEASURE_TRIES]:
        ok, why = confirm(state, ev, isl, v)
        if ok:
            iv.target = v.sha
            before = f"{'; '.join(missed)}; " if missed else ""
            return (f"{before}explore from elite {v.sha[:8]} ({v.speedup:.2f}x) for "
                    f"{state.cfg.supervisor.restart_steps} steps ({why})")
        iv.unconfirmed.append(v.sha)
        missed.append(f"elite {v.sha[:8]} ({v.speedup:.2f}x recorded) not confirmed: {why}")
    iv.target = None
    return f"no elite confirmed ({'; '.join(missed)}); the island goes on from its head"


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
