"""The Ray backend's lineage store: one actor, pinned to the node where the lineage lives,
that owns the run's git repository and its logs. It holds the run's state (avo/evolve/state.py)
and records every attempt through avo/evolve/attempt.py and the supervisor's turn through
avo/evolve/supervision.py, as the local loop does; the driver (avo/ray/driver.py) drives it step
by step, and evaluator actors judge. Being one actor, its calls run one at a time: commits and
log lines are serialised without locks.

Attempt ids are given when an attempt is recorded (not when its step starts), so the log stays
`a00001, a00002, ...` with no gap when steps in flight are lost with a killed driver. Each step
carries a ticket id, stored in its attempt line and in its commit's meta.json: `finish` is
idempotent per ticket, so a call retried after the store actor restarted commits nothing twice."""
from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from avo.config import ConfigError, RunConfig
from avo.evolve import attempt, final
from avo.evolve.gate import GateDecision
from avo.evolve.state import EventLog, EvolveError, RunState, RunStats
from avo.evolve.supervision import supervise
from avo.lineage import AttemptRecord, LineageError
from avo.lineage.records import now_iso
from avo.ray.actors import JudgeJob, JudgeResult, RemoteEvaluator, StepOutcome, StepTicket

MAX_REGATES = 3  # re-measurements against a moved island head before the candidate counts as rejected
LOCK_WAIT_S = 30.0  # a killed driver's store may take a moment to die and release run.lock


@dataclass
class StoreReply:
    events: list[tuple[str, str]] = field(default_factory=list)
    stats: Optional[RunStats] = None
    error: str = ""  # a run-ending error, one line
    code: int = 0


@dataclass
class Stop:
    reason: str
    drop_queued: bool = False  # a time or spend budget: proposals not yet evaluated are dropped


@dataclass
class Finished:
    attempt: str
    status: str
    accepted: bool
    reply: StoreReply


@dataclass
class Regate:
    """The island head moved while the candidate was judged: measure it again against the new head."""
    head_sha: str
    head_source: str
    head_speedup: float


class LineageStore:
    def __init__(self, cfg: RunConfig, device: str, session: str, session_started: float,
                 operators: Optional[dict[str, Any]], evaluators: list):
        self.session, self.seq = session, 0
        self.done: dict[str, Finished] = {}
        self.open_error: Optional[StoreReply] = None
        self.ev = RemoteEvaluator(evaluators)
        self.tap = EventLog()  # events are kept for the driver to print, not printed here
        try:
            self.evo = RunState(cfg, device, operators, display=self.tap)
            self.evo.stats.started = session_started  # the driver's clock (same node): survives a store restart
            self._open()
        except (EvolveError, LineageError, ConfigError) as e:
            self.open_error = StoreReply(error=str(e), code=getattr(e, "code", 2))

    def _open(self) -> None:
        t0 = time.monotonic()
        while True:
            try:
                self.evo.open_lineage()
                break
            except LineageError as e:
                if "is in use" not in str(e) or time.monotonic() - t0 > LOCK_WAIT_S:
                    raise
                time.sleep(0.5)
        evo = self.evo
        self.seq = evo.next_n
        mine = lambda x: str(getattr(x, "ticket", "") or "").startswith(f"t{self.session}-")
        # run time of earlier sessions: this session's own lines (a restarted store) do not count
        evo.stats.prev_elapsed_s = max((a.run_elapsed_s for a in evo.attempts if not mine(a)), default=0.0)
        replay = lambda aid, status, label: StoreReply(events=[(f"{aid} {label} {status} (recorded before the "
                                                                 f"lineage store restarted)", "dim")])
        for a in evo.attempts:
            if getattr(a, "ticket", None):
                self.done[a.ticket] = Finished(a.id, a.status, a.accepted, replay(a.id, a.status, f"{a.task}/island-{a.island}"))
        for v in evo.lineage.versions():
            t = getattr(v.meta, "ticket", None)
            if t and v.meta.attempt:
                m = v.meta
                self.done[t] = Finished(m.attempt, "PASSED", True, replay(m.attempt, "ACCEPTED", f"{m.task}/island-{m.island}"))

    def _reply(self, **kw) -> StoreReply:
        return StoreReply(events=self.tap.take(), stats=self.evo.stats, **kw)

    # ---- setup ----
    def opened(self) -> StoreReply:
        return self.open_error or self._reply()

    def seed(self) -> StoreReply:
        try:
            attempt.seed_islands(self.evo, self.ev)
        except (EvolveError, LineageError) as e:
            return self._reply(error=str(e), code=getattr(e, "code", 2))
        except Exception as e:  # HarnessError: the evaluator could not run the seed
            return self._reply(error=f"evaluator: {e}", code=1)
        return self._reply()

    def final(self) -> StoreReply:
        """The run's final measurement of each task's contenders (evolve/final.py)."""
        final.measure_run(self.evo, self.ev)
        return self._reply()

    # ---- one step ----
    def begin(self, label: str, ticket: str, inflight: int) -> Union[StepTicket, Stop]:
        """The next step of an island, or why no step should start (budget, exhausted)."""
        evo, b = self.evo, self.evo.cfg.budget
        n = len(evo.attempts)
        if b.attempts is not None and n + inflight >= b.attempts:
            return Stop(f"{n + inflight} attempts of {b.attempts}" + (f" ({inflight} in flight)" if inflight else ""))
        reason = evo.budget_reason()
        if reason:
            return Stop(reason, drop_queued=True)
        if evo.exhausted():
            return Stop("exhausted")
        isl = evo.island(label)
        start, head = evo.start_and_head(isl)
        self.seq += 1
        return StepTicket(ticket=ticket, label=label, task=isl.task, island=isl.island, operator=isl.operator,
                          view=evo.view_for(isl, start, head), start_sha=start.sha, head_sha=head.sha,
                          head_source=head.source, seed=evo.cfg.seed * 1_000_003 + self.seq, started=now_iso(),
                          llm_spent_usd=evo.llm_spent(), lineage_path=str(evo.lineage.path), store_node=_node())

    def admit(self, t: StepTicket, outcome: StepOutcome) -> Union[JudgeJob, Finished]:
        """A finished operator step: queue its proposal for the evaluators, or record it now
        (gave up, failed, a duplicate, an empty source)."""
        if t.ticket in self.done:
            return self.done[t.ticket]
        refused = None
        if outcome.kind == "proposal":
            refused = AttemptRecord(id="", task=t.task, island=t.island, operator=t.operator, status="")
            if attempt.admit(self.evo, t.task, outcome.proposal, refused):
                head = self.evo.lineage.head(t.task, t.island)  # the newest island best (bounded staleness)
                return JudgeJob(ticket=t, outcome=outcome, head_sha=head.sha, head_source=head.source,
                                head_speedup=head.speedup)
        return self._record(JudgeJob(ticket=t, outcome=outcome, head_sha=t.head_sha, head_source=t.head_source),
                            None, refused)

    def finish(self, job: JudgeJob, res: JudgeResult) -> Union[Finished, Regate]:
        """A judged proposal: commit it when the gate accepted it against the current island
        head (else measure it again against the new head), log it, supervise the island."""
        t = job.ticket
        if t.ticket in self.done:
            return self.done[t.ticket]
        dec = res.decision
        if dec is not None and dec.accepted:
            head = self.evo.lineage.head(t.task, t.island)
            if head.sha != dec.record.against:
                if job.regates < MAX_REGATES:
                    return Regate(head.sha, head.source, head.speedup)
                res.decision = GateDecision(accepted=False, status="REJECTED", record=dec.record,
                                            reason=f"the island best moved {job.regates + 1} times while this candidate was measured")
        return self._record(job, res, None)

    def _record(self, job: JudgeJob, res: Optional[JudgeResult], refused: Optional[AttemptRecord]) -> Finished:
        t, out, evo = job.ticket, job.outcome, self.evo
        isl = evo.island(t.label)
        rec = attempt.open_record(evo, isl, parent=t.start_sha, started=t.started, ticket=t.ticket)
        if out.kind == "error":
            attempt.take_outcome(rec, None, out.error)
        else:
            src = out.giveup if out.kind == "giveup" else out.proposal
            self._keep_transcript(rec.id, out, src)
            attempt.take_outcome(rec, src)
        if out.kind == "proposal":
            if refused is not None:
                rec.status, rec.error = refused.status, refused.error
            elif res.error:
                rec.status, rec.error = "EVALUATOR_ERROR", res.error
            else:
                rep = _renamed(res.report, f"{t.task}-{t.ticket}", f"{t.task}-{rec.id}")
                attempt.settle(evo, rec, out.proposal, rep, res.decision, evo.lineage.head(t.task, t.island),
                               ticket=t.ticket)
        attempt.close_record(evo, isl, rec, job.busy_s + out.probe_s)
        try:
            supervise(evo, self.ev, isl)
        except Exception as e:  # a failed migration A/B or review must not undo the recorded attempt
            self.tap.event(f"supervisor {isl.label}: {type(e).__name__}: {e}", "red")
        self.done[t.ticket] = Finished(rec.id, rec.status, rec.accepted, StoreReply())
        return Finished(rec.id, rec.status, rec.accepted, self._reply())

    def _keep_transcript(self, aid: str, out: StepOutcome, src: Any) -> None:
        """Write a transcript shipped from the operator's node next to the lineage (work/<attempt>/)."""
        if out.transcript_text is None:
            return
        path = self.evo.lineage.path / "work" / aid / (out.transcript_name or "transcript.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(out.transcript_text)
        src.transcript = str(path)

    # ---- reading ----
    def status(self) -> StoreReply:
        return self._reply()

    def budget_reason(self) -> Optional[str]:
        return self.evo.budget_reason()

    def bundle(self, have: list[str]) -> tuple[bytes, dict[str, str]]:
        """New commits for an operator's lineage mirror (a git bundle; empty when none) and the
        branch heads."""
        lin = self.evo.lineage
        heads = subprocess.run(["git", "-C", str(lin.path), "for-each-ref", "--format=%(refname:short) %(objectname)",
                                "refs/heads/"], capture_output=True, text=True).stdout.split("\n")
        refs = dict(line.split() for line in heads if line.strip())
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "new.bundle"
            r = subprocess.run(["git", "-C", str(lin.path), "bundle", "create", "-q", str(out), "--branches",
                                *(f"^{h}" for h in have)], capture_output=True)
            data = out.read_bytes() if r.returncode == 0 and out.exists() else b""
        return data, refs

    def close(self) -> StoreReply:
        reply = self._reply()
        if self.evo.lineage is not None:
            self.evo.lineage.close()
        return reply


def _renamed(rep, old: str, new: str):
    """The report with the candidate's solution name (`<task>-<ticket>` while judged) set to its
    attempt id, as the local backend names it."""
    traces = [t.model_copy(update={"solution": new}) if t.solution == old else t for t in rep.traces]
    return rep.model_copy(update={"traces": traces, "solution": new if rep.solution == old else rep.solution})


def _node() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()
