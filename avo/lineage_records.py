"""What a lineage records, as models: a version's meta.json (VersionMeta with its Scores and
GateRecord), the Version read back from a commit, and one line of attempts.jsonl (AttemptRecord).
Apart from lineage.py (the git store) so that readers of the format need not see the plumbing.
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

    @property
    def traces(self) -> list[Trace]:
        return [Trace.model_validate_json(line) for line in self.traces_jsonl.splitlines() if line.strip()]

    @property
    def speedup(self) -> float:
        return self.meta.scores.speedup_vs_seed or 0.0
