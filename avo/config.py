"""Run configuration of `avo evolve` (YAML): tasks, seed kernels, operators, islands, budget,
supervisor, commit gate, evaluator, device. Every model forbids unknown keys, so a typo is an error
that names the key and the file instead of a setting silently ignored. Plain pydantic: reading a
config loads no torch."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from avo.tasks import REPO_ROOT


class ConfigError(Exception):
    """A config that cannot be used; the message is one line for the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalConfig(Strict):
    """The evaluator's settings (avo/harness/runner.py); `eval:` in a run config, `device` at its top level."""
    device: Literal["auto", "cuda", "interpret"] = "auto"
    trials: int = Field(default=3, ge=3)
    # Trials per workload whose inputs stay the same for the evaluator's life, so their reference
    # outputs are computed once and kept (up to kept_reference_bytes); the other trials get fresh
    # inputs each evaluation, and at least one must (docs/architecture.md, Cascade).
    kept_trials: int = Field(default=2, ge=0)
    kept_reference_bytes: int = Field(default=1 << 30, ge=0)
    # Seconds per phase before the worker is killed (TIMEOUT); None = the defaults in
    # avo/harness/runner.py (docs/architecture.md, Time limits). compile: import and each
    # workload's first call (300 on CUDA, 60 in the interpreter; CUDA C++ builds 300 on both).
    # run: each later phase; None derives it from the candidate's own measured calls (10x, >= 30 s).
    compile_timeout_s: Optional[float] = Field(default=None, gt=0)
    run_timeout_s: Optional[float] = Field(default=None, gt=0)
    warmup: Optional[int] = None  # defaults: cuda 10 / interpret 1
    iters: Optional[int] = None  # defaults: cuda 50 (minimum) / interpret 5
    max_sets: int = 8
    set_bytes_budget: int = 2 << 30
    side_stream_factor: float = 2.0  # wall/call above factor*event median + slack => work off-stream
    side_stream_slack_ms: float = 0.1
    # Device time of a call on CUDA: events on the timed stream, or CUPTI activity records (every
    # kernel on any stream; needs cupti-python); auto = CUPTI where importable, else events (the
    # trace says which). auto is the default since the H100 table in docs/benchmarks.md: CUPTI
    # drops events' 3-6 µs per call and sees side-stream work that events miss.
    timing_method: Literal["events", "cupti", "auto"] = "auto"
    # How outputs reach the runner's comparison on CUDA: `device` shares them by CUDA IPC and
    # compares on the GPU (no host copies); `host` copies them through host memory (where a
    # container forbids CUDA IPC). The interpreter always uses host memory.
    output_transfer: Literal["device", "host"] = "device"
    # Peer mode evaluates a trusted reference implementation (torch SDPA, xgrammar's kernel) with
    # the same cascade, minus the checks that forbid calling a library that does the task.
    peer: bool = False

    @model_validator(mode="after")
    def _one_fresh_trial(self):
        if self.kept_trials >= self.trials:
            raise ValueError(f"kept_trials ({self.kept_trials}) must be below trials ({self.trials}): "
                             "at least one trial needs fresh inputs")
        return self


class HeuristicSpec(Strict):
    kind: Literal["heuristic"] = "heuristic"
    name: str = "heuristic"
    recipes: bool = True  # also apply knowledge_base/recipes/*.md, not only knob moves


class AgenticSpec(Strict):
    kind: Literal["agentic"] = "agentic"
    name: str = "agentic"
    provider: Literal["anthropic", "openai"] = "anthropic"
    model: str
    base_url: Optional[str] = None  # OpenAI-compatible local servers
    api_key_env: Optional[str] = None  # None: ANTHROPIC_API_KEY / OPENAI_API_KEY by provider; "" = no key
    max_steps: int = Field(default=40, ge=1)  # model turns per variation step
    # The backend (docs/agents.md, Backends): request shape, output budget, thinking / reasoning.
    api: Literal["chat", "responses"] = "chat"  # provider openai: chat completions or the Responses API
    max_tokens: int = Field(default=32_000, ge=256)  # output tokens per model call, thinking/reasoning included
    max_tokens_cap: int = Field(default=64_000, ge=256)  # a cut answer is asked again with double the budget up to this
    stream: bool = True  # stream every call; timeout_s is then an idle timeout
    sampling: Literal["auto", "on", "off"] = "auto"  # auto: no temperature for reasoning models (reasoning_models)
    reasoning_models: Optional[list[str]] = None  # regexes on the model name; None: o1/o3/o4, gpt-5*, codex
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)  # None: the model's default
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    reasoning_summary: Optional[Literal["auto", "concise", "detailed"]] = None  # Responses API
    thinking_budget_tokens: Optional[int] = Field(default=None, ge=1024)  # Anthropic extended thinking
    thinking_adaptive: bool = False  # Anthropic adaptive thinking instead of a budget
    price_in_per_mtok: float = Field(default=3.0, ge=0.0)
    price_out_per_mtok: float = Field(default=15.0, ge=0.0)
    price_cache_read_per_mtok: Optional[float] = Field(default=None, ge=0.0)  # None: 0.1x input
    price_cache_write_per_mtok: Optional[float] = Field(default=None, ge=0.0)  # None: 1.25x input (anthropic), 1x (openai)
    context_tokens: int = Field(default=200_000, ge=1000)
    # Per-step limits and call behaviour (docs/agents.md).
    step_tokens: Optional[int] = Field(default=None, ge=1000)  # input + output tokens per step
    step_minutes: Optional[float] = Field(default=30.0, gt=0)
    max_evaluations: int = Field(default=8, ge=1)  # evaluate-tool calls per step
    critique: bool = True  # the first submit returns a critique to answer
    profile: bool = True  # offer the ncu profile tool where a GPU and ncu exist
    shell: bool = True  # the shell tool: bash in the workspace, sandboxed, one at a time with evaluations
    shell_timeout_s: float = Field(default=300.0, gt=0)  # the most one shell command may run
    timeout_s: float = Field(default=300.0, gt=0)  # idle: the longest wait for the next bytes of an answer
    max_retries: int = Field(default=5, ge=0)  # on 429/5xx/timeouts, exponential backoff
    backoff_s: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _check_budget(self) -> "AgenticSpec":
        if self.thinking_budget_tokens is not None and self.thinking_budget_tokens >= self.max_tokens:
            raise ValueError(f"thinking_budget_tokens ({self.thinking_budget_tokens}) must be below max_tokens "
                             f"({self.max_tokens}), which includes the thinking")
        if self.thinking_budget_tokens is not None and self.thinking_adaptive:
            raise ValueError("thinking_budget_tokens and thinking_adaptive exclude each other")
        if self.max_tokens_cap < self.max_tokens:
            raise ValueError(f"max_tokens_cap ({self.max_tokens_cap}) must be at least max_tokens ({self.max_tokens})")
        return self


class ExternalSpec(Strict):
    """A coding-agent CLI run headless in a scratch folder (docs/agents.md, External operator):
    `agent: claude` (Claude Code) or `codex` (Codex CLI) builds the command line and reads the
    cost the CLI reports; `agent: command` runs `command` as written."""
    kind: Literal["external"] = "external"
    name: str = "external"
    agent: Literal["command", "claude", "codex"] = "command"
    command: Optional[str] = Field(default=None, min_length=1)  # agent: command; {workdir} {task} {kernel} {device} {python}
    executable: Optional[str] = None  # claude / codex: the CLI (default: that name on PATH)
    model: Optional[str] = None  # claude --model / codex --model
    prompt: Optional[str] = None  # claude / codex: the instruction (default: follow AGENTS.md)
    max_turns: Optional[int] = Field(default=None, ge=1)  # claude --max-turns
    allowed_tools: Optional[list[str]] = None  # claude --allowedTools (default: avo eval/lineage, git diff/log, files)
    extra_args: list[str] = Field(default_factory=list)  # appended to a preset's command line
    output: Optional[Literal["text", "claude-json", "codex-jsonl"]] = None  # what stdout reports (default by agent)
    # codex reports tokens, not dollars: priced here (USD per million tokens; cached input at its own price)
    price_in_per_mtok: float = Field(default=1.25, ge=0.0)
    price_cached_in_per_mtok: float = Field(default=0.125, ge=0.0)
    price_out_per_mtok: float = Field(default=10.0, ge=0.0)
    timeout_s: float = Field(default=1800.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "ExternalSpec":
        if self.agent == "command" and not self.command:
            raise ValueError("agent: command needs a command (or use agent: claude | codex)")
        if self.agent != "command" and self.command:
            raise ValueError(f"agent: {self.agent} builds its own command line; put extra flags in extra_args")
        return self


OperatorSpec = Annotated[Union[HeuristicSpec, AgenticSpec, ExternalSpec], Field(discriminator="kind")]


class IslandSpec(Strict):
    operator: str
    task: str


class BudgetConfig(Strict):
    """Budgets count the whole run, across resumes: raise them (--minutes/--attempts) to extend
    a finished run. None = no limit on that axis (at least one must be set)."""
    wall_minutes: Optional[float] = Field(default=60.0, gt=0)
    attempts: Optional[int] = Field(default=None, ge=1)
    llm_usd: Optional[float] = Field(default=None, ge=0)


class SupervisorConfig(Strict):
    stagnation_k: int = Field(default=8, ge=1)  # attempts without a commit before an intervention
    max_widen: int = Field(default=3, ge=0)
    migrate: bool = True  # move the task's global best onto a stagnant island
    restart: bool = True  # explore from another elite ancestor
    review_operator: Optional[str] = None  # agentic operator whose trajectory review adds directions
    restart_steps: int = Field(default=4, ge=1)  # steps an island explores from the elite it restarted from


class GateConfig(Strict):
    """The commit gate (avo/evolve/gate.py, docs/architecture.md): a candidate is accepted only when
    gain > max(min_gain, noise), the lower bound of the gain's confidence interval > min_gain, and
    no workload is slower than the best beyond its limit."""
    min_gain: float = Field(default=0.01, ge=0.0)
    rounds: int = Field(default=2, ge=1)  # A/B rounds (each = the evaluator's timed iterations)
    # how much slower than the best one workload may be: "noise" = that workload's own measured
    # noise (2 standard errors of its median paired ratio), at least workload_noise_floor; or a fraction
    max_workload_regression: Union[Literal["noise"], Annotated[float, Field(ge=0.0)]] = "noise"
    workload_noise_floor: float = Field(default=0.01, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)  # of the gain's bootstrap interval
    resamples: int = Field(default=1000, ge=100)  # bootstrap resamples of the paired rounds
    # A/B measurements repeated when the GPU was throttled (heat, power brake) while they ran; the
    # decision is taken on the last one and the record says so
    throttle_remeasures: int = Field(default=1, ge=0)


class RayConfig(Strict):
    """`avo evolve --backend ray` only (docs/distributed.md); the local backend ignores it."""
    evaluators: Optional[int] = Field(default=None, ge=1)  # None: one per GPU (cuda); interpret: the
    # cluster's `avo_evaluator` resource, else 1
    operator_cpus: float = Field(default=1.0, ge=0.0)  # Ray CPUs reserved per operator actor
    inflight_per_island: int = Field(default=2, ge=1)  # an island's proposals being made or queued for evaluation
    max_restarts: int = Field(default=3, ge=0)  # per actor; a task it was running is retried once after a restart
    mirror_lineage: Literal["auto", "always"] = "auto"  # auto: operators off the lineage's node read a git mirror


class RunConfig(Strict):
    run: str = Field(min_length=1)
    lineage_dir: Optional[Path] = None  # default lineages/<run>
    tasks: list[str] = Field(min_length=1)  # task names under evaluators/ or problem directories
    seed_kernels: dict[str, Path] = Field(default_factory=dict)  # task -> kernel .py
    # a problem with only a reference: Inductor's Triton for it (plain reference if refused) or the plain reference
    reference_seed: Literal["inductor", "plain"] = "inductor"
    workloads: dict[str, list[str]] = Field(default_factory=dict)  # task -> workload uuids (default: all for the device)
    operators: list[OperatorSpec] = Field(default_factory=lambda: [HeuristicSpec()])
    islands: list[IslandSpec] = Field(default_factory=list)  # explicit; else islands_per_task
    islands_per_task: int = Field(default=1, ge=1)
    default_operator: Optional[str] = None  # for islands_per_task (default: the first operator)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    device: Literal["auto", "cuda", "interpret"] = "auto"
    seed: int = 0
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.run):
            raise ValueError(f"run name {self.run!r} must be letters, digits, '.', '_' or '-'")
        names = [o.name for o in self.operators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"operator names must be unique: {', '.join(dup)}")
        if not self.operators:
            raise ValueError("operators: at least one operator is needed")
        if self.default_operator is not None and self.default_operator not in names:
            raise ValueError(f"default_operator {self.default_operator!r} is not among operators ({', '.join(names)})")
        for i, isl in enumerate(self.islands):
            if isl.operator not in names:
                raise ValueError(f"islands.{i}.operator {isl.operator!r} is not among operators ({', '.join(names)})")
            if isl.task not in self.tasks and isl.task not in [Path(t).name for t in self.tasks]:
                raise ValueError(f"islands.{i}.task {isl.task!r} is not among tasks ({', '.join(self.tasks)})")
        for key in self.seed_kernels:
            if key not in self.tasks and key not in [Path(t).name for t in self.tasks]:
                raise ValueError(f"seed_kernels names {key!r}, which is not among tasks")
        review = self.supervisor.review_operator
        if review is not None and review not in [o.name for o in self.operators if o.kind == "agentic"]:
            raise ValueError(f"supervisor.review_operator {review!r} is not an agentic operator of this config")
        b = self.budget
        if b.wall_minutes is None and b.attempts is None and b.llm_usd is None:
            raise ValueError("budget: set at least one of wall_minutes, attempts, llm_usd")
        if "device" in self.eval.model_fields_set:
            raise ValueError("eval.device: set the device at the top level (device: auto|cuda|interpret)")
        return self

    @property
    def lineage_path(self) -> Path:
        return Path(self.lineage_dir) if self.lineage_dir else REPO_ROOT / "lineages" / self.run

    def operator_spec(self, name: str):
        return next(o for o in self.operators if o.name == name)

    def island_specs(self) -> list[IslandSpec]:
        """The islands in round-robin order: explicit ones, else islands_per_task per task."""
        if self.islands:
            return list(self.islands)
        op = self.default_operator or self.operators[0].name
        return [IslandSpec(operator=op, task=t) for t in self.tasks for _ in range(self.islands_per_task)]

    def eval_config(self) -> EvalConfig:
        return self.eval.model_copy(update={"device": self.device})

    def seed_path(self, task_entry: str, task_name: str) -> Optional[Path]:
        """The configured seed for a task (by its entry in `tasks` or its definition name)."""
        for key in (task_entry, task_name, Path(task_entry).name):
            if key in self.seed_kernels:
                p = Path(self.seed_kernels[key])
                if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
                    p = REPO_ROOT / p  # configs name repo files relative to the repo root
                return p
        return None


def _error_line(e: ValidationError, path: Path) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not (isinstance(x, str) and x in ("heuristic", "agentic", "external")))
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        where, _, key = loc.rpartition(".")
        return f"{path}: unknown key {key!r}" + (f" in {where}" if where else "") + more
    if err["type"] == "union_tag_invalid":
        return f"{path}: {loc}: unknown operator kind (heuristic, agentic, external){more}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{path}: {loc + ': ' if loc else ''}{msg}{more}"


def _override(raw: dict, section: str, **values) -> None:
    """Command-line values (those not None) over the keys of one section of a raw config."""
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        raw[section] = {**(raw.get(section) or {}), **given}


def load_config(path: Path, run: Optional[str] = None, minutes: Optional[float] = None,
                attempts: Optional[int] = None, device: Optional[str] = None,
                compile_timeout_s: Optional[float] = None, run_timeout_s: Optional[float] = None) -> RunConfig:
    """Read and validate a run config; command-line overrides win over the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping (run:, tasks:, ...)")
    raw = dict(raw)
    if run is not None:
        raw["run"] = run
    if device is not None:
        raw["device"] = device
    _override(raw, "budget", wall_minutes=minutes, attempts=attempts)
    _override(raw, "eval", compile_timeout_s=compile_timeout_s, run_timeout_s=run_timeout_s)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_error_line(e, path)) from None
