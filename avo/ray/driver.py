"""`avo evolve --backend ray`: the same evolution as the local backend, spread over a Ray
cluster (docs/distributed.md). Operator actors (CPU, one per island) propose; evaluator actors
(one per GPU, or per `avo_evaluator` slot without GPUs) evaluate and gate; one lineage-store
actor, pinned to this node, owns the git lineage. This driver only schedules: it asks the store
for steps, queues proposals, hands them to free evaluators (`ray.wait` over what is in flight),
and passes verdicts back to the store. A killed operator or evaluator actor is restarted by Ray
and its task retried (else the attempt is recorded as failed); a killed driver takes its actors
with it and the same command resumes the run from the lineage, as with the local backend.

Like the local loop, the driver tells its story to the display it is given (`RayRun.display`);
what `avo evolve` prints around it is avo/ui/run.py's."""
from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from avo.config import ConfigError, RunConfig
from avo.evolve.loop import RunEnd
from avo.evolve.setup import resolve_islands, resolve_tasks
from avo.evolve.state import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, GIVE_UPS_TO_STOP, Display,
                              EventLog, RunStats, budget_text)
from avo.evolve.stop import StopSignal
from avo.ray.actors import NAMESPACE, EvaluatorActor, JudgeJob, JudgeResult, OperatorActor, StepOutcome
from avo.ray.cluster import ClusterError, ClusterPlan, connect, plan_cluster
from avo.ray.store import LineageStore, Regate, Stop

EVAL_START_S = 180.0  # evaluator actors that cannot be placed by then: the cluster lacks what they ask for


class FatalError(Exception):
    """The run cannot go on (the lineage store was lost)."""


@dataclass
class Lane:
    """One island: its operator actor and its steps in flight (proposing or queued)."""
    label: str
    actor: Any
    evaluator: int  # the evaluator the operator's own evaluate-tool calls go to
    inflight: int = 0
    stepping: bool = False
    dead: bool = False  # out of restarts


@dataclass
class SessionStats:
    """What this session measured (the summary's `ray:` line; tests read it through `run_out`)."""
    attempts: int = 0
    accepted: int = 0
    loop_s: float = 0.0
    evaluator_busy_s: list[float] = field(default_factory=list)
    queue_waits_s: list[float] = field(default_factory=list)
    regates: int = 0
    actor_errors: int = 0  # steps or evaluations lost with an actor after Ray's retries
    evaluator_restarts: int = 0
    dropped_at_stop: int = 0  # proposals still queued for an evaluator when the run stopped

    @property
    def busy_fraction(self) -> float:
        n = len(self.evaluator_busy_s)
        return sum(self.evaluator_busy_s) / (n * self.loop_s) if n and self.loop_s > 0 else 0.0


class RayRun:
    def __init__(self, cfg: RunConfig, operators: Optional[dict[str, Any]] = None, started_ray: bool = False):
        """`started_ray`: this process started the Ray instance (close() shuts it down)."""
        import ray
        self.ray, self.cfg, self.operators = ray, cfg, operators
        self.started_ray = started_ray
        self.session = secrets.token_hex(3)
        self.started = time.monotonic()
        self.tasks, self.islands = None, []
        self.plan: Optional[ClusterPlan] = None
        self.stats = RunStats(run=cfg.run, device="?", budget=budget_text(cfg.budget))
        self.display: Display = EventLog()
        self.stop = StopSignal()
        self.interrupted = False
        self.session_stats = SessionStats()
        self.actors: list = []
        self.evals: list = []
        self.lanes: list[Lane] = []
        self.store = None

    # ---- setup ----
    def prepare(self, device: str) -> None:
        self.tasks = resolve_tasks(self.cfg, device)
        self.islands = resolve_islands(self.cfg, self.tasks)
        self.stats.device = device

    def _name(self, what: str) -> str:
        return f"avo-{self.cfg.run}-{self.session}-{what}"

    def start_actors(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray, cfg, plan = self.ray, self.cfg, self.plan
        restarts = dict(max_restarts=cfg.ray.max_restarts, max_task_retries=1)
        eval_cfg = cfg.eval_config().model_copy(update={"device": plan.device})
        Ev = ray.remote(EvaluatorActor)
        names = [self._name(f"eval-{i}") for i in range(plan.evaluators)]
        self.evals = [Ev.options(name=n, namespace=NAMESPACE, **plan.eval_options, **restarts)
                      .remote(i, cfg.run, self.session, eval_cfg, self.tasks, cfg.gate) for i, n in enumerate(names)]
        self.actors += self.evals
        here = ray.get_runtime_context().get_node_id()
        fault = {"env_vars": {"AVO_FAULT": os.environ["AVO_FAULT"]}} if os.environ.get("AVO_FAULT") else None
        self.store = ray.remote(LineageStore).options(
            name=self._name("store"), namespace=NAMESPACE, num_cpus=0, max_restarts=cfg.ray.max_restarts,
            max_task_retries=3, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
            runtime_env=fault,  # the crash-test hook of avo.evolve.stop.fault_point, for the store's commits
        ).remote(cfg, plan.device, self.session, self.started, self.operators, names)
        self.actors.append(self.store)
        Op = ray.remote(OperatorActor)  # started now: their imports overlap the seed evaluation
        self.lanes = []
        for k, isl in enumerate(self.islands):
            op = self.operators.get(isl.operator) if self.operators else None
            spec = None if op is not None else cfg.operator_spec(isl.operator)
            a = Op.options(name=self._name(f"op-{isl.label.replace('/', '-')}"), namespace=NAMESPACE,
                           **plan.operator_options, **restarts).remote(
                cfg.run, isl.label, spec, op, plan.device, self.tasks, self._name("store"), cfg.ray.mirror_lineage,
                cfg.budget.llm_usd)
            self.lanes.append(Lane(isl.label, a, k % plan.evaluators))
            self.actors.append(a)
        try:
            infos = ray.get([e.info.remote() for e in self.evals], timeout=EVAL_START_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"{plan.evaluators} evaluator actors did not start within {EVAL_START_S:.0f} s: no node "
                               f"offers {plan.eval_options} (see `ray status`)") from None
        self.show(self.call("opened"))
        nodes = len({i["node"] for i in infos} | {here})
        gpu = ", ".join(f"GPU {i['cuda_visible_devices']}" for i in infos) if plan.device == "cuda" else "interpreter"
        self.display.event(f"ray: {plan.evaluators} evaluator actors ({gpu}), {len(self.islands)} operator actors, "
                            f"{nodes} node(s); lineage store on this node")
        self.show(self.call("seed"))

    def call(self, method: str, *args):
        try:
            return self.ray.get(getattr(self.store, method).remote(*args))
        except self.ray.exceptions.RayError as e:
            raise FatalError(f"lineage store lost: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None

    def show(self, reply) -> None:
        if reply.stats is not None:
            for f in fields(RunStats):
                setattr(self.stats, f.name, getattr(reply.stats, f.name))
        for text, style in reply.events:
            self.display.event(text, style)
        if reply.error:
            raise FatalError(reply.error) if reply.code == EXIT_FAILED else ConfigError(reply.error)

    # ---- the loop ----
    def loop(self) -> str:
        ray, ss = self.ray, self.session_stats
        depth = self.cfg.ray.inflight_per_island
        queue: deque = deque()
        free = deque(range(len(self.evals)))
        pending: dict = {}  # object ref -> ("step", lane, ticket) | ("judge", evaluator, job)
        busy0 = ray.get([e.busy.remote() for e in self.evals])
        stopping, drop, k, t0, dead = None, False, 0, time.monotonic(), set()
        while True:
            if stopping is None and not self.interrupted:
                for lane in self.lanes:
                    if lane.stepping or lane.inflight >= depth or lane.dead:
                        continue
                    k += 1
                    t = self.call("begin", lane.label, f"t{self.session}-{k:05d}", sum(x.inflight for x in self.lanes))
                    if isinstance(t, Stop):
                        stopping, drop = t.reason, t.drop_queued
                        break
                    lane.inflight, lane.stepping = lane.inflight + 1, True
                    pending[lane.actor.step.remote(t, self.evals[lane.evaluator])] = ("step", lane, t)
            if self.interrupted or drop:
                # Abandon operator steps and queued proposals; evaluations already running finish.
                # Without this a time budget would still evaluate every queued proposal (up to
                # inflight_per_island per island, one evaluation each) past its end. An attempts
                # budget counts what is in flight, so that work is inside the budget and finishes.
                for ref in [r for r, v in pending.items() if v[0] == "step"]:
                    pending.pop(ref)[1].stepping = False
                ss.dropped_at_stop += len(queue)
                queue.clear()
            while queue and free:
                job, i = queue.popleft(), free.popleft()
                ss.queue_waits_s.append(time.monotonic() - job.enqueued)
                pending[self.evals[i].judge.remote(job)] = ("judge", i, job)
            if stopping is None and all(x.dead for x in self.lanes):
                stopping = "lost"
            if not pending:
                break
            self._now(pending, queue)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                kind, a, b = pending.pop(ref)
                if kind == "step":
                    a.stepping = False
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        ss.actor_errors += 1
                        a.dead = isinstance(e, ray.exceptions.ActorDiedError)  # out of restarts
                        out = StepOutcome(kind="error", error=f"operator actor lost: {_first_line(e)}")
                    r = self.call("admit", b, out)
                    if isinstance(r, JudgeJob):
                        queue.append(r)
                        continue
                    self._done(r, a)
                else:
                    try:
                        res = ray.get(ref)
                        free.append(a)
                    except ray.exceptions.RayError as e:
                        ss.actor_errors += 1
                        res = JudgeResult(error=f"evaluator actor lost: {_first_line(e)}", evaluator=a)
                        if isinstance(e, ray.exceptions.ActorDiedError):  # out of restarts: no more work for it
                            dead.add(a)
                            if len(dead) == len(self.evals):
                                raise FatalError(f"every evaluator actor is lost ({_first_line(e)})")
                        else:
                            free.append(a)
                    b.busy_s += res.busy_s
                    r = self.call("finish", b, res)
                    if isinstance(r, Regate):
                        ss.regates += 1
                        b.head_sha, b.head_source, b.head_speedup = r.head_sha, r.head_source, r.head_speedup
                        b.report, b.regates, b.enqueued = res.report, b.regates + 1, time.monotonic()
                        queue.appendleft(b)
                        continue
                    self._done(r, next(x for x in self.lanes if x.label == b.ticket.label))
        ss.loop_s = time.monotonic() - t0
        try:  # a restarted evaluator starts again from 0
            ss.evaluator_busy_s = [max(0.0, b - b0) for b, b0 in
                                   zip(ray.get([e.busy.remote() for e in self.evals], timeout=60), busy0)]
        except ray.exceptions.RayError:
            pass
        if self.interrupted:
            return "interrupted"
        if stopping == "lost":
            raise FatalError("every operator actor is lost (out of restarts); see the OPERATOR_ERROR attempts")
        self.show(self.call("final"))  # the final measurement, on the evaluator actors
        if stopping == "exhausted":
            return (f"every island's operator gave up or failed {GIVE_UPS_TO_STOP} times in a row "
                    f"(search space exhausted, or see the errors above)")
        final = self.call("budget_reason")
        return f"budget reached: {final or stopping}"

    def _now(self, pending: dict, queue: deque) -> None:
        if hasattr(self.stats, "now"):  # the live panel's "now" line
            steps = sum(1 for v in pending.values() if v[0] == "step")
            self.stats.now = (f"{steps} operator steps, {len(pending) - steps} evaluations running, "
                              f"{len(queue)} proposals queued")

    def _done(self, fin, lane: Lane) -> None:
        lane.inflight -= 1
        self.session_stats.attempts += 1
        self.session_stats.accepted += fin.accepted
        self.show(fin.reply)

    # ---- teardown ----
    def shutdown(self) -> None:
        ray = self.ray
        try:
            infos = ray.get([e.info.remote() for e in self.evals], timeout=60)
            self.session_stats.evaluator_restarts = sum(i["restarts"] for i in infos)
            ray.get([e.close.remote() for e in self.evals], timeout=60)
        except Exception:
            pass
        if self.store is not None:
            try:
                ray.get(self.store.close.remote(), timeout=60)  # releases run.lock
            except Exception:
                pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass

    def close(self) -> None:
        """Shut down the Ray instance this run started (a joined cluster stays up)."""
        if self.started_ray:
            self.ray.shutdown()

    def _on_signal(self, signum, frame) -> None:
        self.stop.count += 1
        self.interrupted = True
        if self.stop.count >= 2:
            raise KeyboardInterrupt


def _first_line(e: Exception) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:300]}"


def start_ray(cfg: RunConfig, address: Optional[str], operators: Optional[dict[str, Any]] = None) -> RayRun:
    """Join (or start) the cluster: the RayRun to drive. ClusterError when Ray or the cluster is
    missing. `operators` (tests, embedding code) replaces the config's operators by name."""
    try:
        import ray  # noqa: F401  (connect imports it; here only to say it is missing)
    except ImportError:
        raise ClusterError("--backend ray needs the `ray` package (pip install 'ray[default]>=2.9'), "
                           "or use --backend local") from None
    started = connect(cfg, address, len(cfg.island_specs()))
    return RayRun(cfg, operators, started_ray=started)


def run_ray(run: RayRun, on_start=None) -> RunEnd:
    """Plan the actors, start them and drive the loop until a budget or a signal ends it.
    `on_start()` is called once the tasks and islands are resolved, before any actor starts."""
    ray, cfg = run.ray, run.cfg
    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, run._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    end = RunEnd(EXIT_OK)
    try:
        run.plan = plan_cluster(cfg, len(cfg.island_specs()), ray.cluster_resources())
        run.prepare(run.plan.device)
        if on_start is not None:
            on_start()
        run.start_actors()
        with run.display:
            end.why = run.loop()
    except KeyboardInterrupt:
        end.why = "interrupted"
    except (ClusterError, ConfigError) as e:
        end.code, end.error = EXIT_USAGE, str(e)
    except FatalError as e:
        end.code, end.error = EXIT_FAILED, str(e)
    finally:
        run.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    if run.interrupted or end.why == "interrupted":
        end.code = EXIT_INTERRUPTED
    return end
