"""The Ray backend's worker actors and the messages they exchange with the driver and the
lineage store (avo/ray/store.py). Plain classes: avo/ray/driver.py wraps them with
`ray.remote(...)` and the resources of its cluster plan, so they can be read and tested without
Ray's decorators.

- OperatorActor (CPU): one per island; runs that island's operator (any kind, built from the
  config by the factory) on a StepTicket the store issued, in a node-local scratch folder, with
  an `evaluate` tool that calls an evaluator actor, and ships the transcript back.
- EvaluatorActor (one per GPU, or per `avo_evaluator` slot on a CPU cluster): owns one
  harness Evaluator (its candidate and reference worker processes). An actor runs one request
  at a time, so timings never overlap on its GPU.
- RemoteEvaluator: quacks like harness.runner.Evaluator (evaluate, ab, busy_s) over evaluator
  actors, so the run's seeding and the supervisor's migrations (avo/evolve/) run unchanged in the
  store."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from avo.config import EvalConfig, GateConfig
from avo.evolve.attempt import judge, operator_error
from avo.evolve.gate import GateDecision, measure_gate
from avo.evolve.setup import TaskSetup
from avo.harness import sandbox
from avo.harness.runner import ABResult, EvalReport, Evaluator
from avo.harness.workerproc import HarnessError
from avo.operators.base import GiveUp, LineageView, Proposal, StepContext
from avo.operators.factory import make_operator
from avo.operators.llm import CostMeter
from avo.operators.shell import run_shipped
from avo.schema import Solution, Workload
from avo.tasks import REPO_ROOT, Task, kernel_solution

TRANSCRIPT_CAP = 32 << 20  # bytes of one step's transcript shipped back to the lineage
NAMESPACE = "avo"  # Ray namespace of the run's named actors


def actor(name_or_handle: Any) -> Any:
    """Actors find each other by name: a handle passed to a constructor would pin the
    constructor's arguments in the object store, which a restarted actor cannot count on."""
    if isinstance(name_or_handle, str):
        import ray
        return ray.get_actor(name_or_handle, namespace=NAMESPACE)
    return name_or_handle


def scratch_root(run: str) -> Path:
    return Path(tempfile.gettempdir()) / "avo-ray" / run


# ---- messages ----
@dataclass
class StepTicket:
    """One variation step, issued by the store: the island's view as of now (the commits of
    every island so far: bounded staleness), and what the gate will compare against."""
    ticket: str  # unique per step; the idempotency key of its attempt record
    label: str
    task: str
    island: int
    operator: str
    view: LineageView
    start_sha: str  # the version the edit starts from (the island head, or a supervisor's elite)
    head_sha: str  # the island best the gate measures against
    head_source: str
    seed: int
    started: str
    llm_spent_usd: float  # the run's LLM spend so far (agentic operators' budget meter)
    lineage_path: str
    store_node: str


@dataclass
class StepOutcome:
    kind: str  # proposal | giveup | error
    proposal: Optional[Proposal] = None
    giveup: Optional[GiveUp] = None
    error: str = ""
    transcript_name: str = ""  # file name of the transcript shipped in transcript_text
    transcript_text: Optional[str] = None
    probe_s: float = 0.0  # evaluator time of the operator's own evaluate-tool calls
    node: str = ""


@dataclass
class JudgeJob:
    ticket: StepTicket
    outcome: StepOutcome
    head_sha: str  # may move on when the island head moves (a re-gate)
    head_source: str
    head_speedup: float = 1.0
    report: Optional[EvalReport] = None  # set for a re-gate: the candidate already passed
    regates: int = 0
    busy_s: float = 0.0  # evaluator time spent on it so far (all its judge runs)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class JudgeResult:
    report: Optional[EvalReport] = None
    decision: Optional[GateDecision] = None
    error: str = ""  # the evaluator failed (HarnessError) or its actor was lost
    busy_s: float = 0.0
    evaluator: int = -1


# ---- evaluator ----
def _kill_orphans(pidfile: Path) -> None:
    """Worker processes of a previous incarnation of this actor (killed with its process, its
    workers were not): kill them before timing anything on the same GPU."""
    try:
        pids = [int(x) for x in pidfile.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            if b"avo.harness.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)  # workers lead their own session: pid == pgid
        except (OSError, ProcessLookupError):
            pass


class EvaluatorActor:
    def __init__(self, index: int, run: str, session: str, eval_cfg: EvalConfig, tasks: dict[str, TaskSetup],
                 gate: GateConfig):
        self.index, self.tasks, self.gate = index, tasks, gate
        root = scratch_root(run)
        root.mkdir(parents=True, exist_ok=True)
        self.pidfile = root / f"evaluator-{index}.pids"
        _kill_orphans(self.pidfile)
        starts = root / f"evaluator-{index}-{session}.starts"  # one line per incarnation in this session
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\n")
        self.starts = len(starts.read_text().split())
        self.shell_root = root / f"evaluator-{index}-shell"
        self.ev = Evaluator(eval_cfg)

    def _remember_workers(self) -> None:
        pids = [w.proc.pid for w in (self.ev.cand, self.ev.ref) if w.proc is not None]
        self.pidfile.write_text(" ".join(map(str, pids)))

    def info(self) -> dict:
        import ray
        return {"index": self.index, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "restarts": self.starts - 1,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": self.ev.device,
                "hardware": self.ev.hardware}

    def busy(self) -> float:
        return self.ev.busy_s

    def judge(self, job: JudgeJob) -> JudgeResult:
        """Evaluate a proposal and run the commit gate (or, for a re-gate, only the A/B)."""
        setup = self.tasks[job.ticket.task]
        out = job.outcome.proposal
        b0 = self.ev.busy_s
        try:
            if job.report is None:
                rep, dec = judge(self.ev, setup, f"{setup.task.name}-{job.ticket.ticket}", job.head_sha,
                                 job.head_source, out, self.gate)
            else:
                best = kernel_solution(setup.task.name, job.head_source, f"{setup.task.name}-{job.head_sha[:10]}")
                cand = kernel_solution(setup.task.name, out.source, job.report.solution, author=f"avo:{out.operator}")
                rep, dec = job.report, measure_gate(self.ev, setup.task, best, job.head_sha, cand, setup.workloads, self.gate)
            return JudgeResult(report=rep, decision=dec, busy_s=self.ev.busy_s - b0, evaluator=self.index)
        except HarnessError as e:
            return JudgeResult(error=f"evaluator: {e}"[-1500:], busy_s=self.ev.busy_s - b0, evaluator=self.index)
        finally:
            self._remember_workers()

    def evaluate(self, task: Task, solution: Solution, workloads: Optional[list[Workload]]) -> tuple[Any, float]:
        """(EvalReport or the HarnessError text, busy seconds): seeds and operators' probes."""
        b0 = self.ev.busy_s
        try:
            return self.ev.evaluate(task, solution, workloads), self.ev.busy_s - b0
        except HarnessError as e:
            return str(e), self.ev.busy_s - b0
        finally:
            self._remember_workers()

    def ab(self, task: Task, best: Solution, cand: Solution, workloads: Optional[list[Workload]],
           rounds: int) -> tuple[Any, float]:
        b0 = self.ev.busy_s
        try:
            return self.ev.ab(task, best, cand, workloads, rounds), self.ev.busy_s - b0
        except HarnessError as e:
            return str(e), self.ev.busy_s - b0
        finally:
            self._remember_workers()

    def measure(self, task: Task, solutions: list[Solution], workloads: Optional[list[Workload]],
                rounds: int) -> tuple[Any, float]:
        b0 = self.ev.busy_s
        try:
            return self.ev.measure(task, solutions, workloads, rounds), self.ev.busy_s - b0
        except HarnessError as e:
            return str(e), self.ev.busy_s - b0
        finally:
            self._remember_workers()

    def shell(self, data: bytes, command: str, timeout_s: float) -> tuple[Any, float]:
        """An operator's shell command, in this actor's slot (one request at a time on its GPU), on a
        copy of the operator's folder: ((ShellResult, the folder after it), busy seconds)."""
        from avo.operators.shell import shell_in_copy
        res, back = shell_in_copy(data, command, timeout_s, self.ev.device, self.shell_root)
        self.ev.busy_s += res.seconds
        return (res, back), res.seconds

    def close(self) -> None:
        self.ev.close()


class RemoteEvaluator:
    """The Evaluator calls the orchestrator makes, served by evaluator actors (round-robin; an
    actor queues requests, so it never runs two at once). A lost actor is a HarnessError."""

    def __init__(self, handles: list):
        self.handles, self.k, self.busy_s = list(handles), 0, 0.0  # actor handles or names

    def _call(self, method: str, *args):
        import ray
        i = self.k % len(self.handles)
        h = self.handles[i] = actor(self.handles[i])
        self.k += 1
        try:
            out, busy = ray.get(getattr(h, method).remote(*args))
        except ray.exceptions.RayError as e:
            raise HarnessError(f"evaluator actor lost: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        self.busy_s += busy
        if isinstance(out, str):
            raise HarnessError(out)
        return out

    def evaluate(self, task: Task, solution: Solution, workloads: Optional[list[Workload]] = None) -> EvalReport:
        return self._call("evaluate", task, solution, workloads)

    def ab(self, task: Task, best: Solution, cand: Solution, workloads: Optional[list[Workload]] = None,
           rounds: int = 2) -> ABResult:
        return self._call("ab", task, best, cand, workloads, rounds)

    def measure(self, task: Task, solutions: list[Solution], workloads: Optional[list[Workload]] = None,
                rounds: int = 2) -> dict[str, list[list[float]]]:
        return self._call("measure", task, solutions, workloads, rounds)

    def shell(self, data: bytes, command: str, timeout_s: float) -> tuple[Any, bytes]:
        return self._call("shell", data, command, timeout_s)


# ---- operator ----
class OperatorActor:
    """One island's operator. `op` is an Operator object (tests, embedding code) or None to
    build it from the config's spec with the factory."""

    def __init__(self, run: str, label: str, spec: Any, op: Any, device: str, tasks: dict[str, TaskSetup],
                 store: Any, mirror: str, llm_usd: Optional[float]):
        self.run, self.label, self.tasks, self.store_name, self.mirror = run, label, tasks, store, mirror
        sandbox.protect_self()  # it holds API keys: not readable by a candidate worker on this node
        self.knowledge_dir = REPO_ROOT / "knowledge_base"
        if op is None:
            meter = None
            if getattr(spec, "kind", "") in ("agentic", "external"):
                meter = CostMeter(llm_usd)  # set to the run's spend before every step
            op = make_operator(spec, self.knowledge_dir, device, meter)
        self.op = op
        self.scratch = scratch_root(run) / label.replace("/", "_")
        self.scratch.mkdir(parents=True, exist_ok=True)

    def _node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def _lineage_root(self, t: StepTicket) -> Optional[Path]:
        """The run's lineage for the operator's read-only git tools: the real one on its own
        node, else a mirror refreshed from the store (new commits as a git bundle)."""
        import ray
        if self.mirror == "auto" and self._node() == t.store_node and (Path(t.lineage_path) / ".git").exists():
            return Path(t.lineage_path)
        mirror = self.scratch / "lineage"
        git = lambda *a: subprocess.run(["git", "-C", str(mirror), *a], capture_output=True, text=True)
        if not (mirror / ".git").exists():
            mirror.mkdir(parents=True, exist_ok=True)
            git("init", "-q")
        have = [x for x in git("for-each-ref", "--format=%(objectname)", "refs/heads").stdout.split() if x]
        data, refs = ray.get(actor(self.store_name).bundle.remote(have))
        if data:
            b = self.scratch / "fetch.bundle"
            b.write_bytes(data)
            git("fetch", "-q", "--update-head-ok", str(b), "+refs/heads/*:refs/heads/*")
            b.unlink()
        for name, sha in refs.items():
            git("update-ref", f"refs/heads/{name}", sha)
        return mirror

    def step(self, t: StepTicket, evaluator: Any) -> StepOutcome:
        meter = getattr(self.op, "meter", None)
        if meter is not None and hasattr(meter, "spent_usd"):
            meter.spent_usd = t.llm_spent_usd  # the run's spend so far: budget.llm_usd caps the sum
        workdir = self.scratch / t.ticket
        remote = RemoteEvaluator([evaluator])
        setup = self.tasks[t.task]
        probe = lambda src: remote.evaluate(setup.task, kernel_solution(t.task, src, f"{t.task}-{t.ticket}-probe"),
                                            setup.workloads)
        outcome = StepOutcome(kind="error", node=self._node())
        try:
            # the shell tool runs in the evaluator's slot, on a copy of the folder (avo/operators/shell.py)
            shell = lambda cmd, folder, timeout_s: run_shipped(remote.shell, cmd, folder, timeout_s)
            ctx = StepContext(seed=t.seed, workdir=workdir, evaluate=probe, knowledge_dir=self.knowledge_dir,
                              lineage_root=self._lineage_root(t), run_shell=shell)
            out = self.op.propose(t.view, ctx)
        except Exception as e:
            outcome.error = operator_error(e)
            out = None
        if isinstance(out, Proposal):
            outcome.kind, outcome.proposal = "proposal", out
        elif isinstance(out, GiveUp):
            outcome.kind, outcome.giveup = "giveup", out
        elif out is not None:
            outcome.error = f"operator returned {type(out).__name__}, not a Proposal or GiveUp"
        self._ship_transcript(out, outcome)
        outcome.probe_s = remote.busy_s
        shutil.rmtree(workdir, ignore_errors=True)
        return outcome

    def _ship_transcript(self, out: Any, outcome: StepOutcome) -> None:
        path = getattr(out, "transcript", None)
        if not path or not Path(path).is_file():
            return
        data = Path(path).read_bytes()
        if len(data) > TRANSCRIPT_CAP:
            data = data[-TRANSCRIPT_CAP:]
        outcome.transcript_name = Path(path).name
        outcome.transcript_text = data.decode(errors="replace")
