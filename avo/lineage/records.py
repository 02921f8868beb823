"""What a lineage records: a version's meta.json (VersionMeta with its Scores and GateRecord), the
Version read back from a commit, one line of attempts.jsonl (AttemptRecord), and the commit message
written for plain `git log` (the subject says what changed and what it gained, the body holds the
per-workload table and the gate's verdict, trailers carry the machine-readable keys). Apart from
repo.py (the git store) so that readers of the format need not see the plumbing.
Format: docs/lineage.md."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from avo.schema import Trace

LINEAGE_FORMAT = 1


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class GateRecord(BaseModel):
    """The commit gate's A/B re-measurement of the island best (A) and the candidate (B)."""
    model_config = ConfigDict(extra="allow")
    accepted: bool
    gain: float  # geomean speedup of B over A, minus 1
    noise: float
    threshold: float  # max(min_gain, noise)
    min_gain: float
    rounds: int
    against: str  # commit of A
    per_workload: dict[str, float] = Field(default_factory=dict)  # median speedup of B over A
    best_ms: dict[str, float] = Field(default_factory=dict)  # median A latency per workload
    cand_ms: dict[str, float] = Field(default_factory=dict)  # median B latency per workload
    # Written since the confidence interval and the per-workload rule (None / empty in older records).
    ci_lo: Optional[float] = None  # the gain's confidence interval, as gains (speedup - 1)
    ci_hi: Optional[float] = None
    ci_level: Optional[float] = None  # e.g. 0.95
    ci_method: str = ""  # "bootstrap": paired rounds resampled with replacement, per workload
    ci_rounds: Optional[int] = None  # paired A/B rounds per workload it was computed from (the fewest)
    workload_noise: dict[str, float] = Field(default_factory=dict)  # per workload: its own measured noise
    workload_limit: dict[str, float] = Field(default_factory=dict)  # the slowdown each workload was allowed
    regressed: dict[str, float] = Field(default_factory=dict)  # workloads slower beyond it: slowdown (T_B/T_A - 1)
    verdict: str = ""  # the gate's sentence (the attempt's error when rejected)
    throttled: dict[str, list[str]] = Field(default_factory=dict)  # workloads timed while throttled (decision's A/B)
    remeasured: int = 0  # A/B measurements discarded because the GPU was throttled during them


class Scores(BaseModel):
    model_config = ConfigDict(extra="allow")
    speedup_vs_seed: Optional[float] = None  # chained gate gains from the seed (paired A/B)
    speedup_vs_baseline: Optional[float] = None  # geomean over workloads, from the evaluation
    sol_fraction: Optional[float] = None  # mean T_SOL / T_k over workloads (None on CPU)
    sol_score: Optional[float] = None
    latency_ms: dict[str, float] = Field(default_factory=dict)
    baseline_ms: dict[str, float] = Field(default_factory=dict)


class VersionMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: int = LINEAGE_FORMAT
    run: str
    task: str
    island: int
    kind: Literal["seed", "version", "migration"]
    attempt: Optional[str] = None  # attempt id (versions); the key that makes commits idempotent
    parent: Optional[str] = None  # the commit the edit started from (may be on another island)
    operator: str
    note: str = ""
    source_hash: str
    scores: Scores = Field(default_factory=Scores)
    gate: Optional[GateRecord] = None
    device_mode: str = ""
    hardware: str = ""
    timestamp: str = Field(default_factory=now_iso)
    transcript: Optional[str] = None
    cost_usd: float = 0.0
    run_elapsed_s: float = 0.0  # run time (all sessions) at the commit
    migrated_from: Optional[str] = None  # kind "migration": the commit copied from another island


class AttemptRecord(BaseModel):
    """One line of attempts.jsonl: every variation step, accepted or not."""
    model_config = ConfigDict(extra="allow")
    id: str
    task: str
    island: int
    operator: str
    status: str  # EvaluationStatus, REJECTED (passed, not faster), GAVE_UP, DUPLICATE, GATE_ERROR
    accepted: bool = False
    commit: Optional[str] = None
    parent: Optional[str] = None
    hack_check: Optional[str] = None
    error: str = ""
    gain: Optional[float] = None
    noise: Optional[float] = None
    gate: Optional[GateRecord] = None
    source_hash: str = ""
    note: str = ""
    transcript: Optional[str] = None
    started: str = ""
    finished: str = ""
    eval_s: float = 0.0
    eval_phases: dict[str, float] = {}  # the candidate evaluation's harness seconds per phase (EvalReport.phase_s)
    cost_usd: float = 0.0
    tokens: int = 0
    speedup_vs_seed: Optional[float] = None
    run_elapsed_s: float = 0.0  # run time (all sessions) when the attempt finished
    recovered: bool = False  # re-logged from its commit after a crash


class MeasuredVersion(BaseModel):
    """One contender of a final measurement: its speedup over the seed in that one session."""
    commit: str
    vs_seed: float  # geomean over workloads of the median paired ratio T_seed / T_version
    noise: float  # 2 standard errors of that geomean (as the gate computes it)
    per_workload: dict[str, float] = {}  # workload -> median paired T_seed / T_version
    median_ms: dict[str, float] = {}


class Measurement(BaseModel):
    """The contenders for a task's best, timed with its seed in one interleaved session (every
    version against the same calls of the seed), so "best" and "vs seed" are measured, not the
    product of gate gains along a chain. Appended to measurements.jsonl at the end of a run."""
    task: str
    at: str  # ISO time
    device_mode: str
    rounds: int
    workloads: list[str]
    versions_count: int  # versions of the task when measured: a later commit makes this one stale
    seed: str  # the seed's commit
    contenders: list[MeasuredVersion]
    best: str  # commit

    def of(self, commit: str) -> Optional[MeasuredVersion]:
        return next((c for c in self.contenders if c.commit == commit), None)


def attempt_number(attempt_id: str) -> int:
    try:
        return int(attempt_id.lstrip("a"))
    except ValueError:
        return -1


@dataclass
class Version:
    """One accepted version (a commit on an island branch)."""
    sha: str
    source: str
    meta: VersionMeta
    traces_jsonl: str = field(repr=False, default="")
    committed: str = ""  # commit time, ISO (meta.timestamp)
    measured: Optional[MeasuredVersion] = None  # set by Lineage.best from the task's final measurement

    @property
    def traces(self) -> list[Trace]:
        return [Trace.model_validate_json(line) for line in self.traces_jsonl.splitlines() if line.strip()]

    @property
    def speedup(self) -> float:
        """Speedup over the seed: the final measurement's when there is one, else the recorded figure."""
        return self.measured.vs_seed if self.measured else (self.meta.scores.speedup_vs_seed or 0.0)


# ---- commit messages ----
def _ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def workload_table(traces: list[Trace], gate_best_ms: dict[str, float], gate_cand_ms: dict[str, float]) -> str:
    head = f"{'workload':<34} {'best ms':>10} {'new ms':>10} {'gain':>8} {'vs base':>8} {'% SOL':>7}"
    rows = [head, "-" * len(head)]
    for t in traces:
        p = t.evaluation.performance if t.evaluation else None
        u = t.workload.uuid
        a, b = gate_best_ms.get(u), gate_cand_ms.get(u)
        gain = f"{a / b - 1:+.1%}" if a and b else "-"
        vs_base = f"{p.speedup_factor:.2f}x" if p else "-"
        rows.append(f"{u[:34]:<34} {_ms(a):>10} {_ms(b if b is not None else (p.latency_ms if p else None)):>10} "
                    f"{gain:>8} {vs_base:>8} {_pct(p.sol_fraction if p else None):>7}")
    return "\n".join(rows)


def trailers(meta: VersionMeta) -> str:
    rows = [("Avo-Kind", meta.kind), ("Avo-Task", meta.task), ("Avo-Island", str(meta.island)),
            ("Avo-Attempt", meta.attempt), ("Avo-Operator", meta.operator), ("Avo-Parent", meta.parent),
            ("Avo-Speedup-Vs-Seed", f"{meta.scores.speedup_vs_seed:.4f}" if meta.scores.speedup_vs_seed else None),
            ("Avo-Gain", f"{meta.gate.gain:.4f}" if meta.gate else None),
            ("Avo-Noise", f"{meta.gate.noise:.4f}" if meta.gate else None),
            ("Avo-Migrated-From", meta.migrated_from), ("Avo-Transcript", meta.transcript)]
    return "\n".join(f"{k}: {v}" for k, v in rows if v)


def version_message(meta: VersionMeta, traces: list[Trace]) -> str:
    s = meta.scores
    vs_seed = f"{s.speedup_vs_seed:.2f}x vs seed" if s.speedup_vs_seed else "new"
    where = f"{meta.task} island-{meta.island}"
    if meta.kind == "seed":
        subject = f"{where}: seed ({meta.note})"
        body = f"Seed kernel x0, evaluated once on {len(traces)} workloads ({meta.device_mode}, {meta.hardware})."
    else:
        gain = f"{meta.gate.gain:+.1%}" if meta.gate else "?"
        note = meta.note if len(meta.note) <= 60 else meta.note[:57] + "..."
        subject = f"{where}: {note} ({gain}, {vs_seed})"
        if meta.kind == "migration":
            body = f"Migrated version {meta.migrated_from} (the best the gate confirmed) onto this stagnant island."
        else:
            body = f"Operator {meta.operator}, attempt {meta.attempt}, from {(meta.parent or '')[:10]}."
        if meta.gate:
            g = meta.gate
            body += (f"\nGate: A/B interleaved against {g.against[:10]}, {g.rounds} rounds: gain {g.gain:+.2%} "
                     f"> max(min_gain {g.min_gain:.2%}, noise {g.noise:.2%}).")
            if g.ci_lo is not None:
                body += (f"\n{g.ci_level or 0.95:.0%} CI of the gain [{g.ci_lo:+.2%}, {g.ci_hi:+.2%}] ({g.ci_method} "
                         f"over {g.ci_rounds} paired rounds): low end > min_gain; no workload slower beyond its limit.")
    gate_best = meta.gate.best_ms if meta.gate else {}
    gate_cand = meta.gate.cand_ms if meta.gate else {}
    extra = ""
    if meta.device_mode == "interpret":
        extra = "\n\nTriton interpreter on CPU: timings are not GPU performance."
    return f"{subject}\n\n{body}\n\n{workload_table(traces, gate_best, gate_cand)}{extra}\n\n{trailers(meta)}\n"
