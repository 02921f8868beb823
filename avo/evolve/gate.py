"""The commit gate: a candidate enters the lineage only when it passed every workload and an
interleaved A/B re-measurement against the island best (one worker run, A/B/A/B call by call)
shows a gain larger than both the configured minimum and the measured noise."""
from __future__ import annotations

import statistics
from typing import Optional

from pydantic import BaseModel

from avo.config import GateConfig
from avo.harness.runner import EvalReport, Evaluator
from avo.harness.workerproc import HarnessError
from avo.lineage.records import GateRecord
from avo.schema import Solution, Workload
from avo.tasks import Task


class GateDecision(BaseModel):
    accepted: bool
    status: str  # the attempt status: PASSED (accepted), REJECTED, GATE_ERROR, or the evaluation's
    reason: str
    record: Optional[GateRecord] = None


def all_passed(report: EvalReport, workloads: list[Workload]) -> bool:
    got = {t.workload.uuid for t in report.traces if t.passed}
    return report.passed and all(w.uuid in got for w in workloads)


def commit_gate(ev: Evaluator, task: Task, best: Solution, best_sha: str, cand: Solution,
                report: EvalReport, workloads: list[Workload], cfg: GateConfig) -> GateDecision:
    """Decide on one evaluated candidate; `best` is the island best it must beat."""
    if not all_passed(report, workloads):
        return GateDecision(accepted=False, status=report.status.value, reason=report.message[-300:])
    return measure_gate(ev, task, best, best_sha, cand, workloads, cfg)


def measure_gate(ev: Evaluator, task: Task, best: Solution, best_sha: str, cand: Solution,
                 workloads: list[Workload], cfg: GateConfig) -> GateDecision:
    """The A/B half of the gate, for a candidate already known to pass (also used to migrate
    a version onto another island)."""
    try:
        ab = ev.ab(task, best, cand, workloads, rounds=cfg.rounds)
    except HarnessError as e:
        return GateDecision(accepted=False, status="GATE_ERROR", reason=str(e)[-300:])
    threshold = max(cfg.min_gain, ab.noise)
    rec = GateRecord(
        accepted=ab.gain > threshold, gain=ab.gain, noise=ab.noise, threshold=threshold, min_gain=cfg.min_gain,
        rounds=cfg.rounds, against=best_sha, per_workload=ab.per_workload,
        best_ms={u: statistics.median(s[0]) for u, s in ab.samples.items() if s and s[0]},
        cand_ms={u: statistics.median(s[1]) for u, s in ab.samples.items() if len(s) > 1 and s[1]})
    verdict = f"gain {rec.gain:+.1%} {'>' if rec.accepted else '<='} {threshold:.1%} (noise {ab.noise:.1%}, min {cfg.min_gain:.1%})"
    return GateDecision(accepted=rec.accepted, status="PASSED" if rec.accepted else "REJECTED", reason=verdict, record=rec)
