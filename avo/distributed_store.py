"""The Ray backend's lineage store: one actor, pinned to the node where the lineage lives,
that owns the run's git repository and its logs. It is the local orchestrator's `Evolution`
(avo/evolve.py) minus the loop: the same lineage opening, resume and reconcile, seeding,
lineage views, duplicate check, commit-gate bookkeeping, supervisor and budget, driven step by
step by the driver (avo/distributed.py). Being one actor, its calls run one at a time: commits
and log lines are serialised without locks.

Attempt ids are given when an attempt is recorded (not when its step starts), so the log stays
`a00001, a00002, ...` with no gap when steps in flight are lost with a killed driver. Each step
carries a ticket id, stored in its attempt line and in its commit's meta.json: `finish` is
idempotent per ticket, so a call retried after the store actor restarted commits nothing twice."""
from __future__ import annotations

import io
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from rich.console import Console

from avo.attempt_verdict import accepted_meta, record_verdict
from avo.commit_message import version_message
from avo.config import ConfigError, RunConfig
from avo.distributed_actors import JudgeJob, JudgeResult, RemoteEvaluator, StepOutcome, StepTicket
from avo.gate import GateDecision
from avo.evolve import Evolution, EvolveError
from avo.lineage import source_hash
from avo.lineage_durable import LineageError
from avo.lineage_records import AttemptRecord, now_iso
from avo.progress import Progress, RunStats
from avo.stop_signal import fault_point

MAX_REGATES = 3  # re-measurements against a moved island head before the candidate counts as rejected
LOCK_WAIT_S = 30.0  # a killed driver's store may take a moment to die and release run.lock


class EventTap(Progress):
    """The store's progress: events are kept for the driver to print, not printed here."""

    def __init__(self, stats: RunStats):
        super().__init__(Console(file=io.StringIO()), stats, live=False)
        self.lines: list[tuple[str, str]] = []

    def event(self, text: str, style: str = "") -> None:
        self.lines.append((text, style))


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
        try:
            self.evo = Evolution(cfg, Console(file=io.StringIO()), live=False, operators=operators, device=device)
            self.tap = EventTap(self.evo.stats)
            self.evo.progress = self.tap
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
        lines, self.tap.lines = self.tap.lines, []
        return StoreReply(events=lines, stats=self.evo.stats, **kw)

    # ---- setup ----
    def opened(self) -> StoreReply:
        return self.open_error or self._reply()

    def seed(self) -> StoreReply:
        try:
            self.evo.seed_islands(self.ev)
        except (EvolveError, LineageError) as e:
            return self._reply(error=str(e), code=getattr(e, "code", 2))
        except Exception as e:  # HarnessError: the evaluator could not run the seed
            return self._reply(error=f"evaluator: {e}", code=1)
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
        isl = next(i for i in evo.islands if i.label == label)
        st = evo.supervisor.state(isl.task, isl.island)
        head = evo.lineage.head(isl.task, isl.island)
        start = evo.lineage.version(st.restart_from) if st.restart_from else head
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
            if self.evo.admit(t.task, outcome.proposal, refused):
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
        isl = next(i for i in evo.islands if i.label == t.label)
        n, evo.next_n = evo.next_n, evo.next_n + 1
        aid = f"a{n:05d}"
        rec = AttemptRecord(id=aid, task=t.task, island=t.island, operator=t.operator, status="GAVE_UP",
                            parent=t.start_sha, started=t.started, ticket=t.ticket)
        if out.kind == "error":
            rec.status, rec.error = "OPERATOR_ERROR", out.error
        elif out.kind == "giveup":
            g = out.giveup
            self._keep_transcript(aid, out, g)
            rec.note, rec.transcript, rec.cost_usd, rec.tokens = g.reason, g.transcript, g.cost_usd, g.tokens
        else:
            p = out.proposal
            self._keep_transcript(aid, out, p)
            rec.note, rec.transcript, rec.cost_usd, rec.tokens = p.note, p.transcript, p.cost_usd, p.tokens
            rec.parent = p.parent or t.start_sha
            rec.source_hash = source_hash(p.source)
            if refused is not None:
                rec.status, rec.error = refused.status, refused.error
            elif res.error:
                rec.status, rec.error = "EVALUATOR_ERROR", res.error
            else:
                evo.stats.evals_session += 1
                rep = _renamed(res.report, f"{t.task}-{t.ticket}", f"{t.task}-{aid}")
                record_verdict(rec, rep, res.decision)
                if res.decision.accepted:
                    head = evo.lineage.head(t.task, t.island)
                    meta = accepted_meta(evo.cfg, rec, p, rep, res.decision, head, evo.stats.elapsed_s)
                    meta.ticket = t.ticket
                    traces = "".join(x.model_dump_json() + "\n" for x in rep.traces)
                    rec.commit = evo.lineage.commit_version(meta, p.source, traces, version_message(meta, rep.traces))
                    fault_point("after-commit")  # crash tests: the store dies between a commit and its log line
        rec.eval_s = round(job.busy_s + out.probe_s, 3)
        rec.finished = now_iso()
        rec.run_elapsed_s = round(evo.stats.elapsed_s, 3)
        evo.lineage.append_attempt(rec)
        evo.after_attempt(isl, rec)
        try:
            evo.supervise(self.ev, isl)
        except Exception as e:  # a failed migration A/B or review must not undo the recorded attempt
            self.tap.event(f"supervisor {isl.label}: {type(e).__name__}: {e}", "red")
        self.done[t.ticket] = Finished(aid, rec.status, rec.accepted, StoreReply())
        return Finished(aid, rec.status, rec.accepted, self._reply())

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
