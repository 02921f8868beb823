"""What a run commits and logs, the same for both backends: each task's seed (once, on every
island), and each attempt: open its record, take the operator's outcome, admit the proposal (no
duplicate, not empty), judge it (evaluation + commit gate), settle it (the verdict into the record;
an accepted version committed), and close it (logged, counted, shown).

The local loop (loop.py) runs these in one process, one after the other. The Ray backend runs
`judge` on an evaluator actor and the rest in its lineage store actor (avo/ray/store.py), which
owns the lineage. Either way an attempt's record is built here, once."""
from __future__ import annotations

import math
import statistics
import traceback
from pathlib import Path
from typing import Optional, Union

from avo.config import GateConfig, RunConfig
from avo.evolve.gate import GateDecision, commit_gate
from avo.evolve.setup import IslandRef, TaskSetup
from avo.evolve.state import EXIT_FAILED, EvolveError, RunState
from avo.evolve.stop import fault_point, with_phase
from avo.harness.runner import EvalReport
from avo.lineage import AttemptRecord, Scores, Version, VersionMeta, version_message
from avo.lineage.records import now_iso
from avo.operators.base import GiveUp, Proposal
from avo.schema import Trace
from avo.tasks import kernel_solution, source_hash

Outcome = Union[Proposal, GiveUp, None]  # None: the operator failed (see take_outcome's error)


def scores_from(rep: EvalReport, speedup_vs_seed: Optional[float]) -> Scores:
    perf = [t.evaluation.performance for t in rep.traces if t.passed and t.evaluation.performance]
    sol_scores = [p.sol_score for p in perf if p.sol_score is not None]
    return Scores(speedup_vs_seed=speedup_vs_seed, speedup_vs_baseline=rep.speedup_geomean(),
                  sol_fraction=rep.sol_fraction_mean(),
                  sol_score=statistics.fmean(sol_scores) if sol_scores else None, latency_ms=rep.latencies(),
                  baseline_ms={t.workload.uuid: t.evaluation.performance.reference_latency_ms for t in rep.traces
                               if t.passed and t.evaluation.performance})


def seed_islands(state: RunState, ev) -> None:
    """Evaluate each task's seed once and commit it to every island that has none yet. `ev`:
    a harness Evaluator, or the Ray backend's RemoteEvaluator. All seeds are evaluated before any
    is committed, so a seed made by Inductor that fails can still give way to the plain reference
    seed while the lineage holds nothing (its identity names the seeds)."""
    lin = state.lineage
    judged = {}
    for name, setup in state.tasks.items():
        missing = [i for i in state.islands if i.task == name and lin.head_sha(name, i.island) is None]
        if not missing:
            continue
        existing = [v for v in lin.versions(name) if v.meta.kind == "seed"]
        if existing:
            v = existing[0]
            judged[name] = (missing, v.meta.scores, v.traces_jsonl, v.meta.device_mode, v.meta.hardware)
            continue
        rep = _evaluate_seed(state, ev, setup)
        if not rep.passed and setup.seed_kind == "inductor":
            why = f"it failed here ({rep.status.value}: {' '.join(rep.message.split())[:160]})"
            state.display.event(f"{name}: Inductor's seed {why}; using the plain reference seed", "yellow")
            setup.plain_seed(why)
            state.reidentify()
            rep = _evaluate_seed(state, ev, setup)
        if not rep.passed:
            raise EvolveError(f"the seed kernel {setup.seed_text()} fails on {name}: {rep.status.value}: "
                              f"{' '.join(rep.message.split())[:400]}", EXIT_FAILED)
        judged[name] = (missing, scores_from(rep, 1.0), "".join(t.model_dump_json() + "\n" for t in rep.traces),
                        rep.device_mode, rep.hardware)
    for name, (missing, scores, traces, mode, hw) in judged.items():
        setup = state.tasks[name]
        note = {"reference": "seed made from the reference", "inductor": "seed made from the reference by Inductor"}
        for isl in missing:
            meta = VersionMeta(run=state.cfg.run, task=name, island=isl.island, kind="seed", operator="seed",
                               note=note.get(setup.seed_kind, Path(setup.seed_path).name),
                               source_hash=source_hash(setup.seed_source),
                               scores=scores, device_mode=mode, hardware=hw, run_elapsed_s=state.stats.elapsed_s)
            parsed = [Trace.model_validate_json(x) for x in traces.splitlines() if x.strip()]
            with_phase(state.stop, "commit", lambda: lin.commit_version(meta, setup.seed_source, traces,
                                                                        version_message(meta, parsed)))
            state.display.event(f"{isl.label}: seed committed")
    for name, setup in state.tasks.items():  # the seed each task has now (Inductor's may have given way)
        state.seen[name].add(source_hash(setup.seed_source))
    state.refresh_bests()


def _evaluate_seed(state: RunState, ev, setup):
    name = setup.name
    state.display.event(f"{name}: evaluating the seed ({setup.seed_text()}) on {len(setup.workloads)} workloads")
    return ev.evaluate(setup.task, kernel_solution(name, setup.seed_source, f"{name}-seed"), setup.workloads)


def operator_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"[-1500:]


def open_record(state: RunState, isl: IslandRef, parent: str, started: Optional[str] = None,
                **extra) -> AttemptRecord:
    """The next attempt's record (ids are given in the order attempts are recorded: a00001, ...)."""
    n, state.next_n = state.next_n, state.next_n + 1
    return AttemptRecord(id=f"a{n:05d}", task=isl.task, island=isl.island, operator=isl.operator, status="GAVE_UP",
                         parent=parent, started=started or now_iso(), **extra)


def take_outcome(rec: AttemptRecord, out: Outcome, error: str = "") -> None:
    """What the operator returned, into the record: a proposal's or a give-up's note, transcript and
    cost; OPERATOR_ERROR with `error` when it failed."""
    if out is None:
        rec.status, rec.error = "OPERATOR_ERROR", error or "the operator returned nothing"
        return
    rec.note = out.note if isinstance(out, Proposal) else out.reason
    rec.transcript, rec.cost_usd, rec.tokens = out.transcript, out.cost_usd, out.tokens
    if isinstance(out, Proposal):
        rec.parent = out.parent or rec.parent
        rec.source_hash = source_hash(out.source)


def admit(state: RunState, task: str, out: Proposal, rec: AttemptRecord) -> bool:
    """Whether a proposal goes to the evaluator: not a source already tried on the task, not
    empty. Sets rec.source_hash (and rec.status/error when refused)."""
    rec.source_hash = source_hash(out.source)
    if rec.source_hash in state.seen[task]:
        rec.status, rec.error = "DUPLICATE", "this exact source was already tried on the task"
        return False
    state.seen[task].add(rec.source_hash)
    if not out.source.strip():
        rec.status, rec.error = "COMPILE_ERROR", "empty source"
        return False
    return True


def judge(ev, setup: TaskSetup, name: str, head_sha: str, head_source: str, out: Proposal,
          gate: GateConfig) -> tuple[EvalReport, GateDecision]:
    """Evaluate a proposal and pass it through the commit gate against the island best. `ev`: a
    harness Evaluator (local backend, evaluator actors)."""
    task = setup.task.name
    cand = kernel_solution(task, out.source, name, author=f"avo:{out.operator}")
    rep = ev.evaluate(setup.task, cand, setup.workloads)
    best = kernel_solution(task, head_source, f"{task}-{head_sha[:10]}")
    return rep, commit_gate(ev, setup.task, best, head_sha, cand, rep, setup.workloads, gate)


def measured_vs_seed(cand: Scores, seed: Scores) -> Optional[float]:
    """A version's speedup over the seed from the two evaluations' own latencies (geomean over
    the shared workloads), not a chain of gate gains. Two sessions, so drift between them stays
    in it; the run's final measurement times both in one session and is what the summary shows.
    (Normalising by each session's baseline was tried: the baseline drifts most, 10x and more.)"""
    logs = [math.log(seed.latency_ms[w] / t) for w, t in cand.latency_ms.items() if t and seed.latency_ms.get(w)]
    return math.exp(sum(logs) / len(logs)) if logs else None


def accepted_meta(cfg: RunConfig, rec: AttemptRecord, out: Proposal, rep: EvalReport, dec: GateDecision,
                  head: Version, elapsed_s: float, seed: Optional[Version] = None) -> VersionMeta:
    """The meta.json of an accepted attempt's commit (sets rec.speedup_vs_seed)."""
    scores = scores_from(rep, None)
    speedup = measured_vs_seed(scores, seed.meta.scores) if seed is not None else None
    if speedup is None:  # no comparable seed timings (an old lineage): the chained gate gains
        speedup = (head.meta.scores.speedup_vs_seed or 1.0) * (1.0 + dec.record.gain)
    rec.speedup_vs_seed = scores.speedup_vs_seed = speedup
    return VersionMeta(run=cfg.run, task=rec.task, island=rec.island, kind="version", attempt=rec.id,
                       parent=rec.parent, operator=out.operator, note=out.note, source_hash=rec.source_hash,
                       scores=scores, gate=dec.record, device_mode=rep.device_mode,
                       hardware=rep.hardware, transcript=out.transcript, cost_usd=out.cost_usd,
                       run_elapsed_s=round(elapsed_s, 3))


def settle(state: RunState, rec: AttemptRecord, out: Proposal, rep: EvalReport, dec: GateDecision,
           head: Version, **meta_extra) -> None:
    """A judged proposal: the verdict into the record, and an accepted one committed on its island
    (commit first, log line second: a kill in between is repaired by Lineage.reconcile)."""
    state.stats.evals_session += 1
    rec.status, rec.accepted = dec.status, dec.accepted
    rec.hack_check = rep.hack_check
    rec.eval_phases = dict(rep.phase_s)  # eval_s minus these is the gate's A/B (and the operator)
    rec.error = "" if dec.accepted else (rep.message[-1500:] if not rep.passed else dec.reason)
    if dec.record:
        rec.gate, rec.gain, rec.noise = dec.record, dec.record.gain, dec.record.noise
    if dec.accepted:
        meta = accepted_meta(state.cfg, rec, out, rep, dec, head, state.stats.elapsed_s, state.seed_version(rec.task))
        for k, v in meta_extra.items():
            setattr(meta, k, v)
        traces = "".join(t.model_dump_json() + "\n" for t in rep.traces)
        rec.commit = with_phase(state.stop, "commit", lambda: state.lineage.commit_version(
            meta, out.source, traces, version_message(meta, rep.traces)))
        fault_point("after-commit")  # crash tests: a kill between the commit and its log line


def close_record(state: RunState, isl: IslandRef, rec: AttemptRecord, eval_s: float) -> None:
    """Log the attempt (never cut by a signal), count it, and tell the display."""
    rec.eval_s = round(eval_s, 3)
    rec.finished = now_iso()
    rec.run_elapsed_s = round(state.stats.elapsed_s, 3)
    with_phase(state.stop, "commit", lambda: state.lineage.append_attempt(rec))
    state.attempts.append(rec)
    state.supervisor.observe(rec)
    stuck = rec.status in ("GAVE_UP", "OPERATOR_ERROR")
    state.give_ups[isl.label] = state.give_ups.get(isl.label, 0) + 1 if stuck else 0
    s = state.stats
    s.attempts += 1
    s.attempts_session += 1
    s.accepted += rec.accepted
    line = s.islands[isl.label]
    line.attempts += 1
    line.commits += rec.accepted
    line.last = rec.status
    state.refresh_bests()
    gain = f" gain {rec.gain:+.1%} (noise {rec.noise:.1%})" if rec.gain is not None else ""
    g = rec.gate
    if g is not None and g.ci_lo is not None:
        gain = f" gain {g.gain:+.1%} (CI [{g.ci_lo:+.1%}, {g.ci_hi:+.1%}], noise {g.noise:.1%})"
    if rec.accepted:
        text = f"{rec.id} {isl.label} ACCEPTED{gain} -> {rec.speedup_vs_seed:.2f}x vs seed, commit {rec.commit[:8]}: {rec.note}"
        state.display.event(text, "bold green")
    else:
        why = f" [{rec.hack_check}]" if rec.hack_check else ""
        err = f" | {' '.join(rec.error.split())[:100]}" if rec.error and rec.status not in ("REJECTED",) else ""
        if rec.status == "REJECTED" and g is not None and g.regressed:  # faster overall, slower on a workload
            err = " | " + ", ".join(f"{u} {x:+.1%} slower" for u, x in g.regressed.items())[:120]
        state.display.event(f"{rec.id} {isl.label} {rec.status}{why}{gain}: {rec.note[:80]}{err}",
                            "yellow" if rec.status in ("REJECTED", "GAVE_UP", "DUPLICATE") else "red")
