"""The operator protocol: given the lineage view of one island, produce a proposal (or give up).
Every variation operator (heuristic, agentic, external) implements `propose`; the orchestrator
evaluates the proposal and the commit gate decides. An operator may also review a stagnant
island's trajectory for the supervisor (`TrajectoryReview`: the agentic operator's `review`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Union

from pydantic import BaseModel, Field


class VersionView(BaseModel):
    """One accepted version as an operator sees it."""
    commit: str
    source: str
    note: str = ""
    speedup_vs_seed: Optional[float] = None  # geomean over workloads
    speedup_vs_baseline: Optional[float] = None
    sol_fraction: Optional[float] = None
    latencies_ms: dict[str, float] = Field(default_factory=dict)  # workload uuid -> median ms


class AttemptView(BaseModel):
    """A recent attempt on the island (accepted or not)."""
    id: str
    status: str  # PASSED / REWARD_HACK / ... or REJECTED (passed but not faster)
    accepted: bool
    note: str = ""
    error: str = ""  # tail of the error log
    gain: Optional[float] = None  # gate gain over the island best, when measured
    source_hash: str = ""


class LineageView(BaseModel):
    task: str
    island: int
    best: VersionView
    elites: list[VersionView] = Field(default_factory=list)  # best few accepted versions, best first
    recent: list[AttemptView] = Field(default_factory=list)  # newest last
    directions: list[str] = Field(default_factory=list)  # supervisor guidance for the next steps
    widen: int = 0  # exploration level; the supervisor raises it when the island stagnates
    seen_hashes: set[str] = Field(default_factory=set)  # sha256 of every source tried on this task
    kernel_name: str = "kernel.py"


class Proposal(BaseModel):
    source: str
    parent: str  # commit the edit started from
    operator: str
    note: str  # what changed and why (becomes the commit subject)
    transcript: Optional[str] = None  # path of the agent transcript (JSONL), if any
    cost_usd: float = 0.0
    tokens: int = 0


class GiveUp(BaseModel):
    operator: str
    reason: str
    transcript: Optional[str] = None
    cost_usd: float = 0.0
    tokens: int = 0


class StepContext(BaseModel):
    """What an operator may use during one variation step."""
    model_config = {"arbitrary_types_allowed": True}
    seed: int
    workdir: Path  # scratch folder for this step (transcripts, workspace)
    evaluate: Optional[Callable[[str], Any]] = None  # source -> avo.harness.runner.EvalReport
    knowledge_dir: Optional[Path] = None
    lineage_root: Optional[Path] = None  # git repo of the run, read-only for operators
    # (command, folder, timeout_s) -> avo.operators.shell.ShellResult: a shell command run where
    # evaluations run, one at a time with them (the agentic shell tool); None: no shell this step
    run_shell: Optional[Callable[[str, Path, float], Any]] = None


class Operator(Protocol):
    name: str

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp: ...


class Review(BaseModel):
    """A trajectory review: new directions for a stagnant island (empty when the model failed)."""
    directions: list[str] = Field(default_factory=list)
    cost_usd: float = 0.0
    tokens: int = 0
    transcript: Optional[str] = None
    error: Optional[str] = None


# The supervisor's hook: given a stagnant island's view, new directions (a Review or a plain list).
TrajectoryReview = Callable[[LineageView, StepContext], Union[Review, list[str]]]
