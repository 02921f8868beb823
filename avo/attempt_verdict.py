"""The pieces of one attempt that the local loop (avo/evolve.py) and the Ray backend
(avo/distributed*.py) share: judge a proposal (evaluation + commit gate), write the verdict into
the attempt's record, and build the meta.json of an accepted version."""
from __future__ import annotations

import statistics
from typing import Optional

from avo.config import GateConfig, RunConfig
from avo.gate import GateDecision, commit_gate
from avo.harness.runner import EvalReport, Evaluator
from avo.lineage_records import AttemptRecord, Scores, Version, VersionMeta
from avo.operators.base import Proposal
from avo.run_setup import TaskSetup, kernel_solution


def scores_from(rep: EvalReport, speedup_vs_seed: Optional[float]) -> Scores:
    perf = [t.evaluation.performance for t in rep.traces if t.passed and t.evaluation.performance]
    sol_scores = [p.sol_score for p in perf if p.sol_score is not None]
    return Scores(speedup_vs_seed=speedup_vs_seed, speedup_vs_baseline=rep.speedup_geomean(),
                  sol_fraction=rep.sol_fraction_mean(),
                  sol_score=statistics.fmean(sol_scores) if sol_scores else None, latency_ms=rep.latencies(),
                  baseline_ms={t.workload.uuid: t.evaluation.performance.reference_latency_ms for t in rep.traces
                               if t.passed and t.evaluation.performance})


def judge(ev: Evaluator, setup: TaskSetup, name: str, head_sha: str, head_source: str, out: Proposal,
          gate: GateConfig) -> tuple[EvalReport, GateDecision]:
    """Evaluate a proposal and pass it through the commit gate against the island best."""
    task = setup.task.name
    cand = kernel_solution(task, out.source, name, author=f"avo:{out.operator}")
    rep = ev.evaluate(setup.task, cand, setup.workloads)
    best = kernel_solution(task, head_source, f"{task}-{head_sha[:10]}")
    return rep, commit_gate(ev, setup.task, best, head_sha, cand, rep, setup.workloads, gate)


def record_verdict(rec: AttemptRecord, rep: EvalReport, dec: GateDecision) -> None:
    rec.status, rec.accepted = dec.status, dec.accepted
    rec.hack_check = rep.hack_check
    rec.eval_phases = dict(rep.phase_s)  # eval_s minus these is the gate's A/B (and the operator)
    rec.error = "" if dec.accepted else (rep.message[-1500:] if not rep.passed else dec.reason)
    if dec.record:
        rec.gate, rec.gain, rec.noise = dec.record, dec.record.gain, dec.record.noise


def accepted_meta(cfg: RunConfig, rec: AttemptRecord, out: Proposal, rep: EvalReport, dec: GateDecision,
                  head: Version, elapsed_s: float) -> VersionMeta:
    """The meta.json of an accepted attempt's commit (sets rec.speedup_vs_seed)."""
    speedup = (head.meta.scores.speedup_vs_seed or 1.0) * (1.0 + dec.record.gain)
    rec.speedup_vs_seed = speedup
    return VersionMeta(run=cfg.run, task=rec.task, island=rec.island, kind="version", attempt=rec.id,
                       parent=rec.parent, operator=out.operator, note=out.note, source_hash=rec.source_hash,
                       scores=scores_from(rep, speedup), gate=dec.record, device_mode=rep.device_mode,
                       hardware=rep.hardware, transcript=out.transcript, cost_usd=out.cost_usd,
                       run_elapsed_s=round(elapsed_s, 3))
