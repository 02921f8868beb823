"""The evaluator as the orchestrator sees it: owns a candidate worker and a reference worker per
device, enforces time limits (kill + restart), compares outputs in this trusted process, and turns
the cascade into one Trace per workload.

Cascade: static guard -> import/compile (CUDA C++: build, avo/harness/build.py) -> correctness on
every workload (trials with fresh inputs) -> timing interleaved with the baseline -> post-timing
output checks -> SOL bound and score. Where no CUDA GPU is, a CUDA C++ solution stops after a compile
check as COMPILED_NOT_RUN."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import secrets
import time
from multiprocessing.connection import wait as wait_any
from typing import Optional

import torch
from pydantic import BaseModel

from avo.config import EvalConfig
from avo.harness import check as checks
from avo.harness import guard, sandbox, sol
from avo.harness.inputs import TORCH_DTYPES
from avo.harness.timing import THROTTLE_FLAGS
from avo.harness.workerproc import HarnessError, WorkerProc, ensure_workers, exit_words
from avo.schema import (Correctness, Environment, Evaluation, EvaluationStatus, Performance, Solution,
                        Trace, Workload)
from avo.tasks import Task

S = EvaluationStatus
BUILD_GRACE_S = 60.0  # a CUDA build stops itself at compile_timeout_s; the runner kills it this much later
# Time limits where EvalConfig leaves them None (docs/architecture.md, Time limits).
COMPILE_LIMIT_S = {"cuda": 300.0, "interpret": 60.0}  # import and a workload's first call (JIT compile + run)
BUILD_LIMIT_S = 300.0  # a CUDA C++ build or compile check (nvcc), on either device
RUN_FLOOR_S, RUN_FACTOR = 30.0, 10.0  # derived run limit: RUN_FACTOR x the measured estimate, at least RUN_FLOOR_S
FIXED_RUN_S = 300.0  # where nothing of the candidate is measured: reference round trips, the A/B
# Candidate outputs held in the runner while their reference is computed (each a GPU copy of up to
# a few hundred MB): beyond this many the runner waits for the oldest one's reference.
MAX_PENDING = 4


# After timing, per workload: the last output of POST_SETS sets, and POST_SETS sets given new values
# in their buffers and called again, go to the reference (sets picked at random by the worker). Every
# set is still called and its timed calls probed; see docs/architecture.md (Cascade) for the coverage.
POST_SETS = 2
# ...but where the reference is cheap (its seconds in the reference worker, this evaluation's fresh
# trials, times the sets and probes within ALL_SETS_S) every set's last output and every probed
# call go to the reference too. A cache keyed on a sample of the input values replays a stale answer
# on a timed call only when the call's perturbation missed the sample (~3/4 of calls), and a probe's
# call made again replays it as well: two last outputs missed such a kernel 2 times in 30
# (tests/adversarial/grammar/cache_by_fingerprint.py, 3 sets), every set and probe 0 in 30.
ALL_SETS_S = 0.5


def post_checks(ref_s: Optional[float], n_sets: int, probes: int) -> dict:
    """What the worker sends to the reference after timing a workload (see ALL_SETS_S): the last
    outputs of `last` sets, and the probed calls too when `probes_to_reference`."""
    cheap = ref_s is not None and ref_s * (n_sets + probes) <= ALL_SETS_S
    return {"last": n_sets if cheap else min(POST_SETS, n_sets), "probes_to_reference": cheap}


def derived_run_limit(phase: str, seen: dict[str, float], ref_s: dict[str, float], timing: dict,
                      n_sets: int, cuda: bool) -> float:
    """The limit of a `check:<wl>` or `time:<wl>` phase when eval.run_timeout_s is not set, from
    what this evaluation has measured: `seen` holds the longest second of each phase so far (the
    runner's clock, so a phase includes the reference round trip and comparison of its outputs),
    `ref_s` the longest reference round trip per workload. A correctness call is bounded by the
    workload's first call (which also compiled); the timing phase makes up to warmup + iters +
    n_sets calls of the candidate and as many of the baseline, up to max(n_sets, probes) probed calls
    made again, up to n_sets refresh calls and (CUDA) the wall calls, each costing at most a checked
    call or a reference round trip. RUN_FACTOR times
    that, at least RUN_FLOOR_S; FIXED_RUN_S where nothing was measured."""
    kind, _, wl = phase.partition(":")
    call = seen.get(f"check:{wl}") or seen.get(f"compile:{wl}")  # a checked call: the later ones, else the first
    if kind == "check":
        est = seen.get(f"compile:{wl}")
    elif kind == "time" and call is not None:
        calls = timing["warmup"] + timing["iters"] + n_sets
        again = max(n_sets, timing["probes"]) + n_sets  # probes called again + refreshed sets
        est = (calls + again + (timing.get("wall_reps", 20) if cuda else 0)) * call + calls * ref_s.get(wl, 0.0)
    else:
        est = None
    return FIXED_RUN_S if est is None else max(RUN_FLOOR_S, RUN_FACTOR * est)


def phase_words(phase: str) -> str:
    """A phase as a user reads it: the first call on a workload both JIT-compiles and runs it, so a
    crash or hang there may be either."""
    kind, _, wl = phase.partition(":")
    words = {"import": "while importing the solution", "build": "while building the solution",
             "compile": f"in the first call on workload {wl}, which JIT-compiles and runs it",
             "check": f"in a correctness call on workload {wl}", "time": f"while timing workload {wl}"}.get(kind)
    return f"{words} (phase {phase})" if words else f"in phase {phase}"


class WorkloadTiming(BaseModel):
    median_ms: float
    iqr_ms: float
    base_median_ms: float
    base_iqr_ms: float
    iters: int
    wall_ms: Optional[float] = None


class EvalReport(BaseModel):
    task: str
    solution: str
    status: EvaluationStatus
    hack_check: Optional[str] = None
    message: str = ""
    device_mode: str
    hardware: str
    traces: list[Trace]
    # Seconds per harness phase (import, compile, check, time) plus, within them, the runner's
    # reference round-trips and comparisons: where an evaluation's wall time went.
    phase_s: dict[str, float] = {}
    sol_model: str = ""  # how T_SOL was derived (sol.work_source), when SOL applies (a known GPU)
    # Static rules the runtime layer covers, hit by this solution (guard.RUNTIME_COVERED_MODULES ...):
    # the candidate ran; these say what the scan saw.
    warnings: list[str] = []
    sandbox: str = ""  # the candidate worker's sandbox layers, one line (sandbox.summary)

    @property
    def passed(self) -> bool:
        return self.status == S.PASSED

    def latencies(self) -> dict[str, float]:
        return {t.workload.uuid: t.evaluation.performance.latency_ms for t in self.traces
                if t.passed and t.evaluation.performance}

    def speedup_geomean(self) -> Optional[float]:
        xs = [t.evaluation.performance.speedup_factor for t in self.traces if t.passed]
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs and all(x > 0 for x in xs) else None

    def sol_fraction_mean(self) -> Optional[float]:
        xs = [t.evaluation.performance.sol_fraction for t in self.traces
              if t.passed and t.evaluation.performance.sol_fraction is not None]
        return sum(xs) / len(xs) if xs else None


class ABResult(BaseModel):
    """Gate re-measurement: per workload the paired log-ratios log(T_best / T_cand)."""
    per_workload: dict[str, float]  # median speedup of candidate over best
    gain: float  # geomean speedup across workloads, minus 1
    noise: float  # measured spread of the aggregate (2 standard errors of the paired log-ratios)
    samples: dict[str, list[list[float]]]  # per workload [A ms, B ms], call i of each = paired round i
    workload_noise: dict[str, float] = {}  # per workload: 2 standard errors of its median log-ratio, exp - 1
    throttled: dict[str, list[str]] = {}  # workloads timed while the GPU was pulled down (timing.THROTTLE_FLAGS)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "interpret"
    except Exception:
        return "interpret"


def _key(seed):
    """A seed as a dict key: an int, or (seed, perturbation seed) for the inputs of a timed call."""
    return tuple(seed) if isinstance(seed, (list, tuple)) else seed


class KeptReferences:
    """Reference outputs kept across evaluations, for the trials whose inputs stay the same for the
    evaluator's life (`eval.kept_trials` per workload, seeds drawn once, unpredictably, at first
    use). Every evaluation still runs at least one trial on fresh inputs, and its timed sets are
    fresh, so a kernel that only knows the kept inputs fails; what keeping saves is the reference
    (attention's fp32 reference was most of an evaluation's GPU time, docs/benchmarks.md). Bounded
    by `eval.kept_reference_bytes`: an output over the budget is computed each time instead."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.seeds: dict[str, list[int]] = {}  # workload identity -> its kept seeds
        self.outputs: dict[tuple[str, int], dict] = {}

    @staticmethod
    def identity(task: Task, w: Workload) -> str:
        """What the reference's answer depends on: the definition (its reference code with it),
        the workload and the task's files."""
        blob = json.dumps([task.definition.model_dump(mode="json"), w.model_dump(mode="json"),
                           str(task.root) if task.root else None], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def seeds_for(self, ident: str, n: int, draw) -> list[int]:
        have = self.seeds.setdefault(ident, [])
        while len(have) < n:
            have.append(draw())
        return have[:n]

    def get(self, ident: str, seed) -> Optional[dict]:
        return self.outputs.get((ident, seed)) if isinstance(seed, int) else None

    def put(self, ident: str, seed: int, outputs: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in outputs.values() if isinstance(t, torch.Tensor))
        if (ident, seed) not in self.outputs and self.used + size <= self.budget:
            self.outputs[(ident, seed)] = outputs
            self.used += size


class RefPipe:
    """The reference worker's outputs, asked for ahead and read as they arrive (one evaluation).
    `ask` sends a job without waiting, so the reference worker computes while the candidate
    imports, compiles or makes its next calls and while the runner compares; `get` waits for
    one; `drain` reads every answer still owed (before a workload is timed: the GPU must be quiet,
    docs/architecture.md). The reference worker answers jobs in order, each seed once."""

    def __init__(self, ev: "Evaluator", task: Task, by_uuid: dict[str, Workload]):
        self.ev, self.task, self.by_uuid = ev, task, by_uuid
        self.kept, self.ident = ev.kept, {u: KeptReferences.identity(task, w) for u, w in by_uuid.items()}
        self.compute_s: dict[str, float] = {}  # uuid -> the longest a reference took in its worker
        self.results: dict[tuple, tuple[dict, float]] = {}  # (uuid, key) -> (outputs, round-trip seconds)
        self.asked: dict[tuple, float] = {}  # (uuid, key) asked and not yet answered -> when asked
        self.jobs = 0  # jobs sent whose "done" has not come

    def ask(self, uuid: str, seeds) -> None:
        new = [s for s in seeds if (uuid, _key(s)) not in self.asked and (uuid, _key(s)) not in self.results
               and self.kept.get(self.ident[uuid], s) is None]
        if not new:
            return
        ref, task, w = self.ev.ref, self.task, self.by_uuid[uuid]
        ref.ensure()
        ref.send({"op": "reference", "definition": task.definition.model_dump(mode="json"),
                  "workload": w.model_dump(mode="json"), "seeds": new,
                  "root": str(task.root) if task.root else None})
        now = time.monotonic()
        for s in new:
            self.asked[(uuid, _key(s))] = now
        self.jobs += 1

    def ready(self, uuid: str, seed) -> bool:
        return (uuid, _key(seed)) in self.results or self.kept.get(self.ident[uuid], seed) is not None

    def pump(self, timeout: float) -> bool:
        """Read one message of the reference worker if one comes within `timeout`; False if none did
        (the worker is killed when it was owed an answer and `timeout` is the reference limit)."""
        ref = self.ev.ref
        msg = ref.recv(timeout)
        if msg is None and timeout <= 0:
            return False
        if msg is None or msg[0] == "dead":
            ref.kill()
            self.jobs, self.asked = 0, {}
            how = "timed out" if msg is None else f"died ({exit_words(msg[1])})"
            raise HarnessError(f"reference worker {how} on {self.task.name}: {ref.log_tail()}")
        if msg[0] == "outputs":
            self.compute_s[msg[1]] = max(self.compute_s.get(msg[1], 0.0), msg[4])
            k = (msg[1], _key(msg[2]))
            t = self.asked.pop(k, None)
            self.results[k] = (msg[3], time.monotonic() - t if t is not None else 0.0)
        elif msg[0] == "fail":
            ref.restart()  # its queue may still hold jobs: a fresh one owes nothing
            self.jobs, self.asked = 0, {}
            raise HarnessError(f"reference failed on {self.task.name}: {msg[3]}")
        elif msg[0] == "done":
            self.jobs -= 1
        return True

    def poll(self) -> None:
        """Read whatever answers are already here, without waiting."""
        while self.jobs and self.ev.ref.conn is not None and self.ev.ref.conn.poll(0):
            self.pump(0)

    def get(self, uuid: str, seed) -> tuple[dict, float]:
        """(outputs, seconds from ask to answer) of one seed, asked for now if it was not."""
        kept = self.kept.get(self.ident[uuid], seed)
        if kept is not None:
            return kept, 0.0
        k = (uuid, _key(seed))
        if k not in self.results and k not in self.asked:
            self.ask(uuid, [seed])
        limit = self.ev.cfg.run_timeout_s or FIXED_RUN_S
        while k not in self.results:
            self.pump(limit)
        out = self.results.pop(k)
        if seed in self.kept.seeds.get(self.ident[uuid], ()):  # a kept trial: stored for later evaluations
            self.kept.put(self.ident[uuid], seed, out[0])
        return out

    def drain(self) -> None:
        """Every job answered: nothing of the reference runs on the GPU after this."""
        limit = self.ev.cfg.run_timeout_s or FIXED_RUN_S
        while self.jobs > 0:
            self.pump(limit)

    def discard(self) -> None:
        """End of the evaluation: answers still owed are read and dropped (the next evaluation
        starts with a reference worker that owes nothing); a dead or killed one owes nothing."""
        try:
            if self.ev.ref.proc is not None:
                self.drain()
        except HarnessError:
            pass
        self.results.clear()


class Evaluator:
    def __init__(self, cfg: Optional[EvalConfig] = None):
        self.cfg = cfg or EvalConfig()
        self.device = resolve_device(self.cfg.device)
        ipc = self.cfg.output_transfer == "device"  # outputs stay on the GPU (channel.py)
        # On a GPU a spare candidate worker waits, started and sandboxed, for the restart after a
        # failed candidate (seconds of imports and CUDA start-up each time otherwise); the 2-core
        # interpreter machines keep their cores for the interpreter.
        self.cand = WorkerProc(self.device, "candidate", ipc, spare=self.device == "cuda")
        self.ref = WorkerProc(self.device, "reference", ipc)
        self.gpu_name = sol.detect_gpu_name() if self.device == "cuda" else None
        self.hw = sol.match_gpu_name(self.gpu_name) if self.gpu_name else None
        self.hardware = self.gpu_name or "CPU (Triton interpreter)"
        self.busy_s = 0.0  # wall time spent inside evaluate/ab: the evaluator's duty cycle
        self.kept = KeptReferences(self.cfg.kept_reference_bytes)
        # This process holds what a candidate must not read (API keys in its environment, the
        # comparison in its memory): not dumpable, so the candidate worker, which holds no
        # capabilities, can neither read its /proc files nor ptrace it (avo/harness/sandbox.py).
        self.protected = sandbox.protect_self()
        self.expected_sandbox = sandbox.expected(self.device)

    def __enter__(self):
        return self

    def start(self) -> None:
        """Start both workers now without waiting for them: their imports and CUDA start-up overlap
        whatever the caller does before the first evaluation (the runner's own torch and Triton
        imports among it); the first evaluation waits for what is left."""
        for p in (self.cand, self.ref):
            if p.proc is None or p.proc.poll() is not None:
                p.restart()

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.cand.close()
        self.ref.close()

    @property
    def compile_limit_s(self) -> float:
        return self.cfg.compile_timeout_s or COMPILE_LIMIT_S[self.device]

    @property
    def build_limit_s(self) -> float:
        return self.cfg.compile_timeout_s or BUILD_LIMIT_S

    @property
    def timing(self) -> dict:
        cuda = self.device == "cuda"
        iters = self.cfg.iters or (50 if cuda else 5)
        if cuda:
            iters = max(iters, 50)
        return {"warmup": self.cfg.warmup if self.cfg.warmup is not None else (10 if cuda else 1),
                "iters": iters, "wall_reps": 20, "probes": 8, "method": self.cfg.timing_method}

    def sandbox_line(self) -> str:
        """The candidate worker's sandbox as it reported it, with whether its peers are dumpable."""
        if not self.cand.info:
            return ""
        peers = self.protected and self.ref.info.get("dumpable") is False if self.ref.info else self.protected
        return sandbox.summary(self.cand.info.get("sandbox"), peers)

    def _scan(self, solution: Solution, forbidden: list[str], info: Optional[dict]) \
            -> tuple[Optional[guard.StaticFinding], list[str]]:
        """The static guard, with file-write rules as warnings where the worker's kernel confines
        writes (`info`: the candidate worker's sandbox, or what it is expected to be)."""
        if self.cfg.peer:
            return None, []
        warnings: list = []
        finding = guard.scan_solution({s.path: s.content for s in solution.sources}, forbidden, warnings,
                                      sandbox.writes_confined(info))
        return finding, [str(w) for w in warnings]

    def _env(self) -> Environment:
        import torch
        import triton
        return Environment(hardware=self.hardware.replace(" ", "_"), device_mode=self.device,
                           sol_hardware=self.hw.name if self.hw else None,
                           libs={"torch": torch.__version__, "triton": triton.__version__})

    def _n_sets(self, task: Task, w: Workload) -> int:
        nbytes = sol.io_bytes(task.definition, w)
        # Every set must be called in the timed loop: its last output is checked afterwards.
        iters = self.timing["iters"]
        return int(min(iters, max(2, min(self.cfg.max_sets, self.cfg.set_bytes_budget // max(nbytes, 1)))))

    # ---- reference outputs (RefPipe) ----
    def _compare(self, task: Task, w: Workload, got: dict, ref: dict) -> checks.CheckResult:
        d = task.definition
        results = []
        for name in d.result_names:
            if name not in got:
                return checks.CheckResult(status=S.RUNTIME_ERROR, detail=f"no output {name!r}")
            spec = {**d.inputs, **d.outputs}[name]
            expect = TORCH_DTYPES[w.dtypes.get(name, spec.dtype)]
            results.append(checks.compare(name, got[name], ref[name], expect, d.tolerance_for(w),
                                          device="cuda" if self.device == "cuda" else "cpu"))
        return checks.worst(results)

    # ---- evaluation ----
    def evaluate(self, task: Task, solution: Solution, workloads: Optional[list[Workload]] = None) -> EvalReport:
        t0 = time.monotonic()
        try:
            return self._evaluate(task, solution, workloads)
        finally:
            self.busy_s += time.monotonic() - t0

    def default_workloads(self, task: Task) -> list[Workload]:
        return task.select("gpu" if self.device == "cuda" else "cpu")

    def _evaluate(self, task: Task, solution: Solution, workloads: Optional[list[Workload]]) -> EvalReport:
        wls = workloads if workloads is not None else self.default_workloads(task)
        pipe = RefPipe(self, task, {w.uuid: w for w in wls})
        try:
            return self._evaluate_with(task, solution, wls, pipe)
        finally:
            pipe.discard()

    def _evaluate_with(self, task: Task, solution: Solution, wls: list[Workload], pipe: "RefPipe") -> EvalReport:
        d = task.definition
        if not wls:
            raise HarnessError(f"task {task.name} has no workloads for device {self.device}")
        env = self._env()
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        spent: dict[str, float] = {}
        clock = [time.monotonic(), "import"]
        built = [""]  # a CUDA C++ solution's build note (time, cache): leads the message and every trace's log
        warned: list[str] = []  # the static guard's warnings (rules the runtime layer covers)

        def account(key: str, since: float) -> float:
            now = time.monotonic()
            spent[key] = round(spent.get(key, 0.0) + now - since, 3)
            return now

        def report(status, log, hack=None, per_wl=None) -> EvalReport:
            account(clock[1], clock[0])
            traces = []
            if built[0]:
                log = f"{built[0]}\n{log}" if log else built[0]
            for w in wls:
                st, lg, corr, perf = (per_wl or {}).get(w.uuid, (status, log, None, None))
                if built[0] and per_wl and w.uuid in per_wl:
                    lg = f"{built[0]}\n{lg}" if lg else built[0]
                ev = Evaluation(status=st, environment=env, timestamp=stamp, log=lg,
                                correctness=corr, performance=perf,
                                hack_check=hack if st == S.REWARD_HACK else None)
                traces.append(Trace(definition=d.name, workload=w, solution=solution.name, evaluation=ev))
            return EvalReport(task=d.name, solution=solution.name, status=status, hack_check=hack, message=log,
                              device_mode=self.device, hardware=self.hardware, traces=traces, phase_s=spent,
                              sol_model=f"{sol.work_source(d)}; {self.hw.name}" if self.hw else "",
                              warnings=warned, sandbox=self.sandbox_line())

        # The candidate worker's sandbox decides which file rules are warnings: what it reported if
        # it is up, else what this kernel offers (checked again below once it has said).
        assumed = self.cand.info.get("sandbox") if self.cand.ready else self.expected_sandbox
        finding, warned[:] = self._scan(solution, d.forbidden_calls, assumed)
        if finding:
            return report(S.REWARD_HACK, str(finding), f"static:{finding.check}")

        rng = secrets.SystemRandom()  # unpredictable seeds: nothing can be precomputed
        seed = lambda: rng.randrange(1, 2**62)
        trial_seeds = {}
        for w in wls:  # kept trials (same inputs every evaluation, reference kept) and fresh ones, shuffled
            kept = self.kept.seeds_for(pipe.ident[w.uuid], self.cfg.kept_trials, seed)
            trial_seeds[w.uuid] = kept + [seed() for _ in range(self.cfg.trials - len(kept))]
            rng.shuffle(trial_seeds[w.uuid])
        set_seeds = {w.uuid: [seed() for _ in range(self._n_sets(task, w))] for w in wls}
        # A cache keyed by pointer or shape hits on every set alike (and on the probes' calls made
        # again in new buffers), so POST_SETS refreshed sets see it as surely as all of them.
        refresh_seeds = {w.uuid: [seed() for _ in range(min(POST_SETS, len(set_seeds[w.uuid])))] for w in wls}
        job = {"op": "evaluate", "definition": d.model_dump(mode="json"), "solution": solution.model_dump(mode="json"),
               "workloads": [w.model_dump(mode="json") for w in wls], "trial_seeds": trial_seeds,
               "set_seeds": set_seeds, "refresh_seeds": refresh_seeds, "timing": self.timing,
               "baseline": task.baseline, "root": str(task.root) if task.root else None,
               "peer": self.cfg.peer, "compile_timeout_s": self.build_limit_s}
        by_uuid = {w.uuid: w for w in wls}
        t_spawn = time.monotonic()
        ensure_workers(self.cand, self.ref)
        if time.monotonic() - t_spawn > 0.01:  # waited for a worker to start (imports, CUDA): not the candidate's import
            clock[0] = account("spawn", t_spawn) - (t_spawn - clock[0])
        if sandbox.writes_confined(assumed) and not sandbox.writes_confined(self.cand.info.get("sandbox")):
            finding, warned[:] = self._scan(solution, d.forbidden_calls, self.cand.info.get("sandbox"))
            if finding:  # the worker could not confine writes after all: the file rules are errors
                return report(S.REWARD_HACK, str(finding), f"static:{finding.check}")
        self.cand.send(job)
        # The first workload's correctness references are computed while the candidate imports
        # and compiles; each later one's while the candidate works on the one before.
        pipe.ask(wls[0].uuid, trial_seeds[wls[0].uuid])
        order = [w.uuid for w in wls]
        pending: list = []  # (uuid, seed, outputs, where the result goes) awaiting their reference

        def settle(every: bool = False) -> None:
            """Compare the pending outputs whose reference has come (all of them with `every`; the
            oldest ones, waiting, while more than MAX_PENDING are held)."""
            pipe.poll()
            while pending:
                uuid, s, got, dest = pending[0]
                if not (every or len(pending) > MAX_PENDING or pipe.ready(uuid, s)):
                    return
                t0 = time.monotonic()
                ref, rt = pipe.get(uuid, s)
                ref_s[uuid] = max(ref_s.get(uuid, 0.0), rt)
                t0 = account("reference", t0)
                dest[uuid].append(self._compare(task, by_uuid[uuid], got, ref))
                account("compare", t0)
                pending.pop(0)

        def quiet() -> None:
            """Every output so far compared and every reference job answered: the GPU is the
            candidate's alone."""
            settle(every=True)
            t0 = time.monotonic()
            pipe.drain()
            account("reference", t0)

        def recv_cand(limit: float):
            """The candidate's next message within `limit` seconds, comparing outputs as their
            references arrive meanwhile (that work does not count against the candidate's limit)."""
            deadline = time.monotonic() + limit
            while True:
                t0 = time.monotonic()
                settle()
                deadline += time.monotonic() - t0
                left = deadline - time.monotonic()
                if not pipe.jobs or self.ref.conn is None or left <= 0:
                    return self.cand.recv(max(0.0, left))
                ready = wait_any([self.cand.conn, self.ref.conn], timeout=left)
                if self.cand.conn in ready or not ready:
                    return self.cand.recv(0)
                t0 = time.monotonic()
                pipe.pump(0)
                deadline += time.monotonic() - t0

        phase, limit = "import", self.compile_limit_s
        seen: dict[str, float] = {}  # longest seconds of each phase so far (derived run limits)
        ref_s: dict[str, float] = {}  # longest reference round trip per workload
        started = time.monotonic()
        corr: dict[str, list[checks.CheckResult]] = {w.uuid: [] for w in wls}
        timings: dict[str, dict] = {}
        post: dict[str, list[checks.CheckResult]] = {w.uuid: [] for w in wls}
        timed = False
        while True:
            msg = recv_cand(limit)
            if msg is None:
                self.cand.restart()
                how = "" if self.cfg.run_timeout_s or phase.startswith(("import", "build", "compile")) else \
                    " (derived from this candidate's measured calls; eval.run_timeout_s sets it)"
                return report(S.TIMEOUT, f"timed out after {limit:.0f}s{how} {phase_words(phase)}")
            kind = msg[0]
            if kind == "dead":
                tail = self.cand.log_tail()
                self.cand.restart()
                return report(S.RUNTIME_ERROR, f"worker died ({exit_words(msg[1])}) {phase_words(phase)}: {tail}")
            if kind == "phase":
                now = time.monotonic()
                seen[phase] = max(seen.get(phase, 0.0), now - started)
                phase, started = msg[1], now
                clock[:] = [account(clock[1], clock[0]), phase.split(":")[0]]
                wl = phase.partition(":")[2]
                if phase.startswith("compile:") and wl in order:  # this workload's trials, then the next's
                    for u in order[order.index(wl):order.index(wl) + 2]:
                        pipe.ask(u, trial_seeds[u])
                limit = self.build_limit_s + BUILD_GRACE_S if phase == "build" else \
                    self.compile_limit_s if phase.startswith(("import", "compile")) else \
                    self.cfg.run_timeout_s or derived_run_limit(phase, seen, ref_s, self.timing,
                                                                len(set_seeds.get(wl, ())), self.device == "cuda")
            elif kind == "build":  # a CUDA C++ solution built (or found in the cache): how long it took
                built[0] = msg[1]
            elif kind == "not_run":  # compile-checked, and no GPU here to run it: not a failure of the solution
                return report(S.COMPILED_NOT_RUN, msg[1])
            elif kind == "unavailable":  # this machine cannot even check it (no nvcc): nothing was evaluated
                raise HarnessError(msg[1])
            elif kind == "fail":
                status, hack, log = S(msg[1]), msg[2], msg[3]
                self.cand.restart()  # a failed candidate may leave state behind: a fresh process, starting now
                return report(status, f"[{phase}] {log}", hack)
            elif kind == "outputs":
                uuid, s, got = msg[1], msg[2], msg[3]
                pipe.ask(uuid, [s])  # every output's inputs key is new in this evaluation
                pending.append((uuid, s, got, post if timed else corr))
                settle()
            elif kind == "rerun":  # a probed timed call and the same inputs' call outside timing
                uuid, key, timed_res, again = msg[1], msg[2], msg[3], msg[4]
                t0 = time.monotonic()
                r = self._compare(task, by_uuid[uuid], timed_res, again)
                if r.status != S.PASSED:
                    r = r.model_copy(update={"detail": f"a timed call disagrees with the same inputs called again "
                                                       f"outside timing ({r.detail})"})
                post[uuid].append(r)
                account("compare", t0)
            elif kind == "checked":
                quiet()
                bad = [(u, r) for u, rs in corr.items() for r in rs if r.status != S.PASSED]
                if bad:
                    self.cand.send("stop")
                    u, r = bad[0]
                    status = S.REWARD_HACK if r.status == S.REWARD_HACK else r.status
                    per_wl = {}
                    for w in wls:
                        worst = checks.worst(corr[w.uuid])
                        if worst.status == S.PASSED:  # correct but never timed: the cascade's verdict,
                            # so the trace stays valid FlashInfer (PASSED needs a performance)
                            worst = worst.model_copy(update={"status": status, "detail": f"correct here, not timed: {u} failed"})
                        per_wl[w.uuid] = self._fail_entry(worst)
                    return report(status, f"{u}: {r.detail}", "output-type" if status == S.REWARD_HACK else None, per_wl)
                # the trials' references are in: what each workload shows the reference after timing
                self.cand.send(("time", {w.uuid: post_checks(pipe.compute_s.get(w.uuid), len(set_seeds[w.uuid]),
                                                             self.timing["probes"]) for w in wls}))
                timed = True
            elif kind == "quiet":  # every earlier output compared, the reference worker idle: time it
                quiet()
                self.cand.send("go")
            elif kind == "timing":
                timings[msg[1]] = msg[2]
            elif kind == "done":
                quiet()
                break
        return self._finish(task, wls, corr, post, timings, report)

    @staticmethod
    def _fail_entry(r: checks.CheckResult):
        if r.status == S.INCORRECT_NUMERICAL:
            return (r.status, r.detail, Correctness(max_absolute_error=r.max_abs, max_relative_error=r.max_rel,
                                                    extra={"matched_ratio": r.matched}), None)
        return (r.status, r.detail, None, None)

    def _slow_wall(self, tm: dict, key: str) -> bool:
        """The synced wall time per call is well above tm[key] (the event median or the host issue time)."""
        return self.device == "cuda" and bool(tm.get("wall_ms")) and tm.get(key) is not None and \
            tm["wall_ms"] > self.cfg.side_stream_factor * tm[key] + self.cfg.side_stream_slack_ms

    def _finish(self, task, wls, corr, post, timings, report) -> EvalReport:
        d = task.definition
        per_wl = {}
        overall, overall_log, hack = S.PASSED, "", None
        for w in wls:
            tm = timings[w.uuid]
            stale = [r for r in post[w.uuid] if r.status != S.PASSED]
            flops, nbytes = sol.work(d, w)
            t_sol = sol.sol_time_s(d, w, self.hw) * 1e3 if self.hw else None
            status, log, check = S.PASSED, "", None
            if stale:
                status, check = S.REWARD_HACK, "timed-output"
                log = f"output of a timed or refreshed call was wrong: {stale[0].detail}"
            elif self._slow_wall(tm, "median_ms") and self._slow_wall(tm, "issue_ms"):
                status, check = S.REWARD_HACK, "side-stream"
                log = f"events saw {tm['median_ms']:.4f} ms but a synced call takes {tm['wall_ms']:.4f} ms " \
                      f"(issued in {tm.get('issue_ms') or 0:.4f} ms): work off the timed stream"
            elif tm["median_ms"] <= 0:  # no SOL bound where no GPU is known; a 0 ms call has no speedup
                status, check = S.REWARD_HACK, "below-sol"
                log = f"timed at {tm['median_ms']:.4f} ms: the timer saw none of the call's work"
            elif t_sol is not None and tm["median_ms"] < t_sol:
                status, check = S.REWARD_HACK, "below-sol"
                log = f"{tm['median_ms']:.4f} ms is below the speed-of-light bound {t_sol:.4f} ms"
            elif self._slow_wall(tm, "median_ms"):  # the host, not the GPU, sets the pace: say so
                log = f"launch-bound: issuing a call takes {tm['issue_ms']:.4f} ms on the host against " \
                      f"{tm['median_ms']:.4f} ms on the GPU (the timed figure assumes a CUDA graph or a faster host)"
            worst = checks.worst(corr[w.uuid])
            c = Correctness(max_absolute_error=worst.max_abs, max_relative_error=worst.max_rel,
                            extra={"matched_ratio": worst.matched, "trials": len(corr[w.uuid])})
            tk, tb = tm["median_ms"], tm["base_median_ms"]
            perf = Performance(latency_ms=tk, reference_latency_ms=tb, speedup_factor=tb / tk if tk > 0 else 0.0,
                               latency_iqr_ms=tm["iqr_ms"], reference_latency_iqr_ms=tm["base_iqr_ms"],
                               iterations=tm["iters"], flops=flops, bytes=nbytes, wall_latency_ms=tm.get("wall_ms"),
                               sol_latency_ms=t_sol, sol_fraction=(t_sol / tk) if t_sol and tk > 0 else None,
                               sol_score=sol.sol_score(tk, tb, t_sol or 0.0))
            if status == S.PASSED:
                per_wl[w.uuid] = (status, log, c, perf)
            else:
                per_wl[w.uuid] = (status, log, None, None)
                if overall == S.PASSED:
                    overall, overall_log, hack = status, f"{w.uuid}: {log}", check
        if overall == S.REWARD_HACK:  # a candidate caught cheating on one workload is not trusted on the
            # others: no PASSED trace of it is left to count in an aggregate, to gate or to export
            for u, (st, lg, _c, _p) in per_wl.items():
                if st == S.PASSED:
                    per_wl[u] = (S.REWARD_HACK, f"correct and timed here, but caught on {overall_log}", None, None)
        rep = report(overall, overall_log, hack, per_wl)
        for t in rep.traces:  # clocks and throttling per workload
            tm = timings[t.workload.uuid]
            env = t.evaluation.environment.model_copy(update={
                "timing_method": tm.get("method"),
                "sm_clock_mhz_before": tm.get("clock_before"), "sm_clock_mhz_after": tm.get("clock_after"),
                "throttle_reasons": tm.get("throttle", []),
                "throttled": any(r in tm.get("throttle", []) for r in THROTTLE_FLAGS)})
            t.evaluation = t.evaluation.model_copy(update={"environment": env})
        if overall != S.PASSED:
            self.cand.restart()
        return rep

    # ---- commit-gate re-measurement ----
    def ab(self, task: Task, best: Solution, cand: Solution, workloads: Optional[list[Workload]] = None,
           rounds: int = 2) -> ABResult:
        samples, throttled = self._interleaved(task, [best, cand], workloads, rounds)
        return ab_statistics(samples).model_copy(update={"throttled": throttled})

    def measure(self, task: Task, solutions: list[Solution], workloads: Optional[list[Workload]] = None,
                rounds: int = 2) -> dict[str, list[list[float]]]:
        """Time several passing solutions call by call in one worker session (the gate's A/B with
        any number): per workload, per solution, the ms of each paired call."""
        return self._interleaved(task, solutions, workloads, rounds)[0]

    def _interleaved(self, task, sols, workloads, rounds) -> tuple[dict[str, list[list[float]]], dict[str, list[str]]]:
        """(samples, throttle flags per workload where the GPU was throttled)."""
        t0 = time.monotonic()
        try:
            return self._interleave(task, sols, workloads, rounds)
        finally:
            self.busy_s += time.monotonic() - t0

    def _interleave(self, task, sols, workloads, rounds):
        wls = workloads if workloads is not None else self.default_workloads(task)
        rng = secrets.SystemRandom()
        set_seeds = {w.uuid: [rng.randrange(1, 2**62) for _ in range(self._n_sets(task, w))] for w in wls}
        self.cand.ensure()
        self.cand.send({"op": "ab", "definition": task.definition.model_dump(mode="json"),
                        "solutions": [x.model_dump(mode="json") for x in sols],
                        "workloads": [w.model_dump(mode="json") for w in wls], "set_seeds": set_seeds,
                        "timing": self.timing, "rounds": rounds, "root": str(task.root) if task.root else None,
                        "compile_timeout_s": self.build_limit_s})
        samples: dict[str, list[list[float]]] = {}
        throttled: dict[str, list[str]] = {}
        while True:
            limit = (self.cfg.run_timeout_s or FIXED_RUN_S) + self.build_limit_s + BUILD_GRACE_S
            msg = self.cand.recv(limit)
            if msg is None or msg[0] in ("dead", "fail", "not_run", "unavailable"):
                self.cand.restart()
                why = f"timed out after {limit:.0f}s" if msg is None else \
                    f"worker died ({exit_words(msg[1])})" if msg[0] == "dead" else \
                    msg[3] if msg[0] == "fail" else msg[1]
                raise HarnessError(f"A/B re-measurement failed: {why}")
            if msg[0] == "timing":
                samples[msg[1]] = msg[2]["samples"]
                flags = [r for r in msg[2].get("throttle", []) if r in THROTTLE_FLAGS]
                if flags:
                    throttled[msg[1]] = flags
            elif msg[0] == "done":
                break
        return samples, throttled


def ab_statistics(samples: dict[str, list[list[float]]]) -> ABResult:
    """Paired log-ratios per iteration; the aggregate is the mean over workloads of the median
    log-ratio; noise is 2 standard errors of that mean, from the ratios' median absolute deviation
    (and per workload, 2 standard errors of its own median)."""
    import statistics
    per, logs, var, wnoise = {}, [], [], {}
    for uuid, (a, b) in samples.items():
        lr = [math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0]
        if not lr:  # every call of one side timed at 0 ms: its ratio is no number, and no gain
            raise HarnessError(f"A/B: workload {uuid} has no paired calls both timed above 0 ms "
                               "(the timer saw none of one side's work)")
        med = statistics.median(lr)
        mad = statistics.median([abs(v - med) for v in lr]) * 1.4826
        per[uuid] = math.exp(med)
        logs.append(med)
        var.append((1.2533 * mad) ** 2 / max(len(lr), 1))  # variance of a median ~ (pi/2) sigma^2 / n
        wnoise[uuid] = math.exp(2 * math.sqrt(var[-1])) - 1
    n = len(logs)
    agg = sum(logs) / n
    se = math.sqrt(sum(var)) / n
    return ABResult(per_workload=per, gain=math.exp(agg) - 1, noise=math.exp(2 * se) - 1, samples=samples,
                    workload_noise=wnoise)
