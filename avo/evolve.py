"""The orchestrator of `avo evolve` (local backend): one evaluator (one GPU, or the CPU
interpreter) shared by islands that take turns round-robin. Per step: build the island's
lineage view, ask its operator for a proposal, evaluate it, pass it through the commit gate,
commit or log it; then let the supervisor look at the island (avo/island_supervision.py).
Resumes a killed or stopped run from its lineage; SIGINT/SIGTERM end the current step cleanly
and exit 130."""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Optional

import yaml
from rich.console import Console

from avo.attempt_verdict import accepted_meta, judge, record_verdict, scores_from
from avo.config import ConfigError, RunConfig
from avo.harness.runner import Evaluator, resolve_device
from avo.harness.workerproc import HarnessError
from avo.island_supervision import IslandSupervision, elite_versions
from avo.lineage import Lineage, source_hash
from avo.lineage_durable import LineageError
from avo.lineage_records import AttemptRecord, Version, VersionMeta, now_iso
from avo.operators.base import AttemptView, GiveUp, LineageView, Operator, Proposal, StepContext, VersionView
from avo.operators.factory import make_meter, make_operators, make_review
from avo.operators.recipes import RecipeError
from avo.operators.supervisor import Supervisor
from avo.progress import IslandLine, Progress, RunStats, TaskLine
from avo.run_setup import (IslandRef, TaskSetup, identity_mismatch, kernel_solution, resolve_islands, resolve_tasks,
                           run_identity)
from avo.commit_message import version_message
from avo.stop_signal import StopSignal, fault_point, with_phase
from avo.tasks import REPO_ROOT

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RECENT_ATTEMPTS = 24  # attempts of the island an operator sees
GIVE_UPS_TO_STOP = 3  # consecutive give-ups on every island end the run (search space exhausted)
INTERPRETER_BANNER = ("No GPU: kernels run in Triton's interpreter on the CPU. Timings rank candidates "
                      "for this demo only; they are not GPU performance.")


class EvolveError(Exception):
    def __init__(self, msg: str, code: int = EXIT_USAGE):
        super().__init__(msg)
        self.code = code


def version_view(v: Version) -> VersionView:
    s = v.meta.scores
    return VersionView(commit=v.sha, source=v.source, note=v.meta.note, speedup_vs_seed=s.speedup_vs_seed,
                       speedup_vs_baseline=s.speedup_vs_baseline, sol_fraction=s.sol_fraction,
                       latencies_ms=dict(s.latency_ms))


class Evolution(IslandSupervision):
    def __init__(self, cfg: RunConfig, console: Console, live: bool, operators: Optional[dict[str, Operator]] = None,
                 device: Optional[str] = None):
        self.cfg, self.console, self.live = cfg, console, live
        self.stop = StopSignal()
        # `device`: already resolved by the caller (the Ray backend resolves it against the
        # cluster's GPUs, which need not be on this node).
        self.device = device or resolve_device(cfg.device)
        if self.device == "cuda" and device is None:
            import torch
            if not torch.cuda.is_available():
                raise EvolveError("device: cuda but no CUDA device is visible")
        self.tasks: dict[str, TaskSetup] = resolve_tasks(cfg, self.device)
        self.islands: list[IslandRef] = resolve_islands(cfg, self.tasks)
        self.knowledge_dir = REPO_ROOT / "knowledge_base"
        self.meter = make_meter(cfg)  # LLM spend of agentic operators; set from the logs on resume
        try:
            # `operators` lets a caller (tests, embedding code) supply its own Operator objects by name.
            self.operators = operators if operators is not None else \
                make_operators(cfg, self.knowledge_dir, self.device, self.meter)
            missing = sorted({i.operator for i in self.islands} - set(self.operators))
            if missing:
                raise EvolveError(f"no operator object for {', '.join(missing)}")
            review = make_review(cfg, self.operators)
        except (RecipeError, ImportError) as e:
            raise EvolveError(f"operators: {e}") from None
        self.supervisor = Supervisor(cfg.supervisor, review)
        self.lineage: Optional[Lineage] = None
        self.attempts: list[AttemptRecord] = []
        self.seen: dict[str, set[str]] = {}
        self.give_ups: dict[str, int] = {}
        self.next_n = 1
        self.stats = RunStats(run=cfg.run, device=self.device, budget=self._budget_text())
        self.progress = Progress(console, self.stats, live)

    def _budget_text(self) -> str:
        b = self.cfg.budget
        parts = [f"{b.wall_minutes:g} min" if b.wall_minutes else "", f"{b.attempts} attempts" if b.attempts else "",
                 f"${b.llm_usd:g}" if b.llm_usd is not None else ""]
        return ", ".join(p for p in parts if p)

    # ---- setup ----
    def open_lineage(self) -> None:
        ident = run_identity(self.device, self.tasks, self.islands)
        cfg_yaml = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
        lin, created = Lineage.open_or_create(self.cfg.lineage_path, self.cfg.run, cfg_yaml, ident)
        self.lineage = lin
        if not created:
            why = identity_mismatch(lin.identity(), ident)
            if why and not lin.branches() and not lin.attempts():
                lin.reset_root(self.cfg.run, cfg_yaml, ident)  # nothing recorded yet (a failed seed): start over
                why = None
            if why:
                raise EvolveError(f"run {self.cfg.run!r} exists ({lin.path}) with a different setup: {why}; "
                                  f"use another --run or the run's original config")
            for rec in lin.reconcile():
                self.progress.event(f"recovered {rec.id}: commit {rec.commit[:8]} was made but not logged", "yellow")
        self.attempts = lin.attempts()
        self.next_n = lin.next_attempt_number()
        for name in self.tasks:
            self.seen[name] = {a.source_hash for a in self.attempts if a.task == name and a.source_hash}
            self.seen[name] |= {v.meta.source_hash for v in lin.versions(name)}
        self.supervisor.restore(self.attempts, lin.interventions())
        self.stats.prev_elapsed_s = max((a.run_elapsed_s for a in self.attempts), default=0.0)
        if self.meter is not None:
            self.meter.spent_usd = self.llm_spent()
        self.stats.attempts = len(self.attempts)
        self.stats.accepted = sum(a.accepted for a in self.attempts)
        for isl in self.islands:
            mine = [a for a in self.attempts if a.task == isl.task and a.island == isl.island]
            self.stats.islands[isl.label] = IslandLine(label=isl.label, operator=isl.operator, attempts=len(mine),
                                                       commits=sum(a.accepted for a in mine),
                                                       last=mine[-1].status if mine else "-")
            tail = 0
            for a in reversed(mine):
                if a.status not in ("GAVE_UP", "OPERATOR_ERROR"):
                    break
                tail += 1
            self.give_ups[isl.label] = tail
        if not created:
            self.progress.event(f"resuming {lin.path}: {len(self.attempts)} attempts, "
                                f"{self.stats.accepted} accepted so far")

    def seed_islands(self, ev: Evaluator) -> None:
        """Evaluate each task's seed once and commit it to every island that has none yet."""
        lin = self.lineage
        for name, setup in self.tasks.items():
            self.seen[name].add(source_hash(setup.seed_source))
            missing = [i for i in self.islands if i.task == name and lin.head_sha(name, i.island) is None]
            if not missing:
                continue
            existing = [v for v in lin.versions(name) if v.meta.kind == "seed"]
            if existing:
                scores, traces = existing[0].meta.scores, existing[0].traces_jsonl
                mode, hw = existing[0].meta.device_mode, existing[0].meta.hardware
            else:
                self.progress.event(f"{name}: evaluating the seed {setup.seed_path} on {len(setup.workloads)} workloads")
                rep = ev.evaluate(setup.task, kernel_solution(name, setup.seed_source, f"{name}-seed"), setup.workloads)
                if not rep.passed:
                    raise EvolveError(f"the seed kernel {setup.seed_path} fails on {name}: {rep.status.value}: "
                                      f"{' '.join(rep.message.split())[:400]}", EXIT_FAILED)
                scores = scores_from(rep, 1.0)
                traces = "".join(t.model_dump_json() + "\n" for t in rep.traces)
                mode, hw = rep.device_mode, rep.hardware
            for isl in missing:
                meta = VersionMeta(run=self.cfg.run, task=name, island=isl.island, kind="seed", operator="seed",
                                   note=Path(setup.seed_path).name, source_hash=source_hash(setup.seed_source),
                                   scores=scores, device_mode=mode, hardware=hw, run_elapsed_s=self.stats.elapsed_s)
                from avo.schema import Trace
                parsed = [Trace.model_validate_json(x) for x in traces.splitlines() if x.strip()]
                with_phase(self.stop, "commit", lambda: lin.commit_version(meta, setup.seed_source, traces,
                                                                            version_message(meta, parsed)))
                self.progress.event(f"{isl.label}: seed committed")
        self._refresh_bests()

    def _refresh_bests(self) -> None:
        for name in self.tasks:
            best = self.lineage.best(name)
            self.stats.tasks[name] = TaskLine(best_speedup=best.speedup, best_sol=best.meta.scores.sol_fraction,
                                              best_commit=best.sha)
        for isl in self.islands:
            head = self.lineage.head(isl.task, isl.island)
            line = self.stats.islands[isl.label]
            line.best = head.speedup if head else 1.0
            line.widen = self.supervisor.state(isl.task, isl.island).widen

    # ---- budget ----
    def llm_spent(self) -> float:
        return sum(a.cost_usd for a in self.attempts) + sum(r.get("cost_usd", 0.0) for r in self.lineage.interventions())

    def budget_reason(self) -> Optional[str]:
        b = self.cfg.budget
        if b.attempts is not None and len(self.attempts) >= b.attempts:
            return f"{len(self.attempts)} attempts of {b.attempts}"
        if b.wall_minutes is not None and self.stats.elapsed_s >= b.wall_minutes * 60:
            return f"{self.stats.elapsed_s / 60:.1f} of {b.wall_minutes:g} minutes"
        usd = self.llm_spent()
        if b.llm_usd is not None and usd >= b.llm_usd:
            return f"${usd:.2f} of ${b.llm_usd:g} LLM spend"
        return None

    # ---- one variation step ----
    def view_for(self, isl: IslandRef, start: Version, head: Version) -> LineageView:
        st = self.supervisor.state(isl.task, isl.island)
        versions = elite_versions(self.lineage.versions(isl.task))
        recent = [a for a in self.attempts if a.task == isl.task and a.island == isl.island][-RECENT_ATTEMPTS:]
        directions = list(st.directions)
        if start.sha != head.sha:
            directions.append(f"exploring from elite {start.sha[:8]} ({start.speedup:.2f}x vs seed); "
                              f"the island best to beat is {head.sha[:8]} ({head.speedup:.2f}x)")
        return LineageView(task=isl.task, island=isl.island, best=version_view(start),
                           elites=[version_view(v) for v in versions],
                           recent=[AttemptView(id=a.id, status=a.status, accepted=a.accepted, note=a.note,
                                               error=a.error, gain=a.gain, source_hash=a.source_hash) for a in recent],
                           directions=directions, widen=st.widen, seen_hashes=set(self.seen[isl.task]))

    def step_context(self, isl: IslandRef, aid: str, n: int, ev: Evaluator) -> StepContext:
        setup = self.tasks[isl.task]
        workdir = self.lineage.path / "work" / aid
        probe = lambda src: ev.evaluate(setup.task, kernel_solution(isl.task, src, f"{isl.task}-{aid}-probe"),
                                        setup.workloads)
        return StepContext(seed=self.cfg.seed * 1_000_003 + n, workdir=workdir, evaluate=probe,
                           knowledge_dir=self.knowledge_dir, lineage_root=self.lineage.path)

    def step(self, ev: Evaluator, isl: IslandRef) -> AttemptRecord:
        lin, setup = self.lineage, self.tasks[isl.task]
        n, self.next_n = self.next_n, self.next_n + 1
        aid = f"a{n:05d}"
        st = self.supervisor.state(isl.task, isl.island)
        head = lin.head(isl.task, isl.island)
        start = lin.version(st.restart_from) if st.restart_from else head
        rec = AttemptRecord(id=aid, task=isl.task, island=isl.island, operator=isl.operator, status="GAVE_UP",
                            parent=start.sha, started=now_iso())
        busy0 = ev.busy_s
        self.stats.now = f"{aid} {isl.label}: {isl.operator} is proposing"
        self.stop.phase = "operator"
        try:
            out = self.operators[isl.operator].propose(self.view_for(isl, start, head), self.step_context(isl, aid, n, ev))
        except (KeyboardInterrupt, HarnessError):
            raise
        except Exception as e:
            out = None
            rec.status, rec.error = "OPERATOR_ERROR", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"[-1500:]
        if isinstance(out, GiveUp):
            rec.note, rec.transcript, rec.cost_usd, rec.tokens = out.reason, out.transcript, out.cost_usd, out.tokens
        elif isinstance(out, Proposal):
            rec.note, rec.transcript, rec.cost_usd, rec.tokens = out.note, out.transcript, out.cost_usd, out.tokens
            rec.parent = out.parent or start.sha
            self.evaluate_and_gate(ev, isl, setup, head, out, rec)
        rec.eval_s = round(ev.busy_s - busy0, 3)
        rec.finished = now_iso()
        rec.run_elapsed_s = round(self.stats.elapsed_s, 3)
        with_phase(self.stop, "commit", lambda: self.lineage.append_attempt(rec))
        self.stop.phase = "idle"
        self.stats.now = ""
        self.after_attempt(isl, rec)
        return rec

    def evaluate_and_gate(self, ev: Evaluator, isl: IslandRef, setup: TaskSetup, head: Version,
                          out: Proposal, rec: AttemptRecord) -> None:
        if not self.admit(isl.task, out, rec):
            return
        self.stop.phase = "evaluate"
        self.stats.now = f"{rec.id} {isl.label}: evaluating and gating ({rec.note[:60]})"
        rep, dec = judge(ev, setup, f"{isl.task}-{rec.id}", head.sha, head.source, out, self.cfg.gate)
        self.stats.evals_session += 1
        record_verdict(rec, rep, dec)
        if dec.accepted:
            meta = accepted_meta(self.cfg, rec, out, rep, dec, head, self.stats.elapsed_s)
            traces = "".join(t.model_dump_json() + "\n" for t in rep.traces)
            rec.commit = with_phase(self.stop, "commit", lambda: self.lineage.commit_version(
                meta, out.source, traces, version_message(meta, rep.traces)))
            fault_point("after-commit")

    def admit(self, task: str, out: Proposal, rec: AttemptRecord) -> bool:
        """Whether a proposal goes to the evaluator: not a source already tried on the task, not
        empty. Sets rec.source_hash (and rec.status/error when refused)."""
        rec.source_hash = source_hash(out.source)
        if rec.source_hash in self.seen[task]:
            rec.status, rec.error = "DUPLICATE", "this exact source was already tried on the task"
            return False
        self.seen[task].add(rec.source_hash)
        if not out.source.strip():
            rec.status, rec.error = "COMPILE_ERROR", "empty source"
            return False
        return True

    def after_attempt(self, isl: IslandRef, rec: AttemptRecord) -> None:
        self.attempts.append(rec)
        self.supervisor.observe(rec)
        stuck = rec.status in ("GAVE_UP", "OPERATOR_ERROR")
        self.give_ups[isl.label] = self.give_ups.get(isl.label, 0) + 1 if stuck else 0
        s = self.stats
        s.attempts += 1
        s.accepted += rec.accepted
        line = s.islands[isl.label]
        line.attempts += 1
        line.commits += rec.accepted
        line.last = rec.status
        self._refresh_bests()
        gain = f" gain {rec.gain:+.1%} (noise {rec.noise:.1%})" if rec.gain is not None else ""
        if rec.accepted:
            text = f"{rec.id} {isl.label} ACCEPTED{gain} -> {rec.speedup_vs_seed:.2f}x vs seed, commit {rec.commit[:8]}: {rec.note}"
            self.progress.event(text, "bold green")
        else:
            why = f" [{rec.hack_check}]" if rec.hack_check else ""
            err = f" | {' '.join(rec.error.split())[:100]}" if rec.error and rec.status not in ("REJECTED",) else ""
            self.progress.event(f"{rec.id} {isl.label} {rec.status}{why}{gain}: {rec.note[:80]}{err}",
                                "yellow" if rec.status in ("REJECTED", "GAVE_UP", "DUPLICATE") else "red")

    # ---- the run ----
    def exhausted(self) -> bool:
        return all(self.give_ups.get(i.label, 0) >= GIVE_UPS_TO_STOP for i in self.islands)

    def loop(self, ev: Evaluator) -> str:
        k = len(self.attempts)
        while True:
            if self.stop.count:
                return "interrupted"
            reason = self.budget_reason()
            if reason:
                return f"budget reached: {reason}"
            if self.exhausted():
                return (f"every island's operator gave up or failed {GIVE_UPS_TO_STOP} times in a row "
                        f"(search space exhausted, or see the errors above)")
            isl = self.islands[k % len(self.islands)]
            k += 1
            self.step(ev, isl)
            self.supervise(ev, isl)


def evolve_local(cfg: RunConfig, live: bool, operators: Optional[dict[str, Operator]] = None) -> int:
    """Run or resume an evolution on this machine; returns the exit code."""
    console, err = Console(), Console(stderr=True)
    from avo.run_summary import print_start, print_summary
    try:
        evo = Evolution(cfg, console, live, operators)
    except (EvolveError, ConfigError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return getattr(e, "code", EXIT_USAGE)
    print_start(evo, INTERPRETER_BANNER)
    evo.stop.install()
    code, why = EXIT_OK, ""
    try:
        with Evaluator(cfg.eval_config()) as ev:
            evo.open_lineage()
            evo.seed_islands(ev)
            with evo.progress:
                why = evo.loop(ev)
    except KeyboardInterrupt:
        why = "interrupted"
    except (EvolveError, LineageError, ConfigError) as e:
        evo.progress.stop()
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        code = getattr(e, "code", EXIT_USAGE)
    except HarnessError as e:
        evo.progress.stop()
        err.print(f"[bold red]error:[/] evaluator: {e}", highlight=False, soft_wrap=True)
        code = EXIT_FAILED
    if evo.stop.count or why == "interrupted":
        code = EXIT_INTERRUPTED
    try:
        if evo.lineage is not None and code in (EXIT_OK, EXIT_INTERRUPTED):
            print_summary(evo, why, write=code == EXIT_OK or evo.stop.count < 2)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        evo.stop.restore()
        if evo.lineage is not None:
            evo.lineage.close()
    return code
