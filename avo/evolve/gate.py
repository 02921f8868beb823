"""The commit gate: a candidate enters the lineage only when it passed every workload and an
interleaved A/B re-measurement against the island best (one worker run, A/B/A/B call by call)
shows a gain that no single workload and no lucky round can fake (`decide`):

- gain > max(min_gain, noise): the geomean gain over workloads beats the configured minimum and
  the measured noise of that aggregate (avo/harness/runner.py: ab_statistics);
- its confidence interval's low end > min_gain: a seeded bootstrap over the paired rounds (call i
  of A and call i of B, timed back to back), resampled per workload;
- no workload is slower than the best beyond its limit (its own measured noise, with a floor, or
  a configured fraction): a candidate faster on average but slower on one workload is rejected."""
from __future__ import annotations

import math
import statistics
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel

from avo.config import GateConfig
from avo.harness.runner import ABResult, EvalReport, Evaluator
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
    """The A/B half of the gate, for a candidate already known to pass (also used to re-measure
    a version before it seeds a migration or a restart)."""
    try:
        ab, discarded = unthrottled(lambda: ev.ab(task, best, cand, workloads, rounds=cfg.rounds),
                                    cfg.throttle_remeasures)
    except HarnessError as e:
        return GateDecision(accepted=False, status="GATE_ERROR", reason=str(e)[-300:])
    dec = decide(ab, cfg, best_sha)
    if discarded:
        dec.record.remeasured = discarded
        note = f"re-measured {discarded}x: the GPU was throttled during the A/B"
        if ab.throttled:
            note += f" (still throttled on {len(ab.throttled)} workload(s): {', '.join(sorted({r for v in ab.throttled.values() for r in v}))})"
        dec.record.verdict = dec.reason = f"{dec.reason}; {note}"
    return dec


def unthrottled(measure: Callable[[], ABResult], retries: int) -> tuple[ABResult, int]:
    """(the A/B to decide on, how many were discarded): a clock pulled down by heat or a power
    brake mid-A/B skews the ratio of whichever calls it hit, so such a measurement is taken again,
    up to `retries` times."""
    ab, discarded = measure(), 0
    while ab.throttled and discarded < retries:
        ab, discarded = measure(), discarded + 1
    return ab, discarded


BOOTSTRAP_SEED = 0  # the interval is a function of the samples: the same A/B gives the same verdict


def paired_log_ratios(a: list[float], b: list[float]) -> list[float]:
    """log(T_A / T_B) of each paired round (as ab_statistics pairs them)."""
    return [math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0]


def bootstrap_ci(samples: dict[str, list[list[float]]], resamples: int, level: float,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float, int]:
    """(lo, hi, rounds): the percentile interval of the gate's statistic, exp(mean over workloads
    of the median paired log-ratio) - 1, from `resamples` resamples that draw each workload's
    paired rounds with replacement (workloads are timed one after the other, so each is resampled
    on its own); rounds = the fewest paired rounds of any workload."""
    rng = np.random.default_rng(seed)
    total, rounds = np.zeros(resamples), None
    for uuid in sorted(samples):
        a, b = samples[uuid][0], samples[uuid][1]
        lr = np.asarray(paired_log_ratios(a, b))
        n = len(lr)
        rounds = n if rounds is None else min(rounds, n)
        total += np.median(lr[rng.integers(0, n, size=(resamples, n))], axis=1)
    stat = total / max(len(samples), 1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(stat, [tail, 1.0 - tail])
    return math.expm1(float(lo)), math.expm1(float(hi)), rounds or 0


def workload_limits(ab: ABResult, cfg: GateConfig) -> dict[str, float]:
    """The slowdown each workload may show: its own noise (at least the floor), or the fixed fraction."""
    if cfg.max_workload_regression == "noise":
        return {u: max(cfg.workload_noise_floor, ab.workload_noise.get(u, 0.0)) for u in ab.per_workload}
    return {u: float(cfg.max_workload_regression) for u in ab.per_workload}


def regressions(ab: ABResult, limits: dict[str, float]) -> dict[str, float]:
    """Workloads slower than the best beyond their limit: uuid -> slowdown, 1 / median speedup - 1."""
    slow = {u: (1.0 / s - 1.0 if s > 0 else math.inf) for u, s in ab.per_workload.items()}
    return {u: x for u, x in slow.items() if x > limits[u]}


def decide(ab: ABResult, cfg: GateConfig, against: str) -> GateDecision:
    """The gate's verdict on one A/B measurement (pure arithmetic on its samples)."""
    threshold = max(cfg.min_gain, ab.noise)
    lo, hi, rounds = bootstrap_ci(ab.samples, cfg.resamples, cfg.confidence)
    limits = workload_limits(ab, cfg)
    bad = regressions(ab, limits)
    why = [f"workload {u} {x:+.1%} slower than the best (beyond its limit {limits[u]:.1%})"
           for u, x in sorted(bad.items(), key=lambda kv: -kv[1])]
    if ab.gain <= threshold:
        why.append(f"gain {ab.gain:+.1%} <= {threshold:.1%}")
    if lo <= cfg.min_gain:
        why.append(f"CI low end {lo:+.1%} <= min {cfg.min_gain:.1%}")
    accepted = not why
    stats = (f"gain {ab.gain:+.1%}, {cfg.confidence:.0%} CI [{lo:+.1%}, {hi:+.1%}] (bootstrap, {rounds} rounds), "
             f"noise {ab.noise:.1%}, min {cfg.min_gain:.1%}")
    verdict = f"{stats}; every workload within its limit" if accepted else f"{'; '.join(why)} | {stats}"
    rec = GateRecord(
        accepted=accepted, gain=ab.gain, noise=ab.noise, threshold=threshold, min_gain=cfg.min_gain,
        rounds=cfg.rounds, against=against, per_workload=ab.per_workload,
        best_ms={u: statistics.median(s[0]) for u, s in ab.samples.items() if s and s[0]},
        cand_ms={u: statistics.median(s[1]) for u, s in ab.samples.items() if len(s) > 1 and s[1]},
        ci_lo=lo, ci_hi=hi, ci_level=cfg.confidence, ci_method="bootstrap", ci_rounds=rounds,
        workload_noise=dict(ab.workload_noise), workload_limit=limits, regressed=bad, verdict=verdict,
        throttled=dict(ab.throttled))
    return GateDecision(accepted=accepted, status="PASSED" if accepted else "REJECTED", reason=verdict, record=rec)
