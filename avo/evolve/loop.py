"""The local backend of `avo evolve`: one evaluator (one GPU, or the CPU interpreter) shared by
islands that take turns round-robin. Per step: the island's lineage view goes to its operator,
the proposal is judged (evaluation + commit gate), the attempt is settled and closed
(avo/evolve/attempt.py), then the supervisor takes its turn (avo/evolve/supervision.py).
A killed or stopped run resumes from its lineage; SIGINT/SIGTERM end the current step cleanly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from avo.config import ConfigError
from avo.evolve import attempt, final
from avo.evolve.setup import IslandRef
from avo.evolve.state import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, GIVE_UPS_TO_STOP, EvolveError,
                              RunState)
from avo.evolve.supervision import supervise
from avo.harness.runner import Evaluator
from avo.harness.workerproc import HarnessError
from avo.lineage import AttemptRecord, LineageError
from avo.lineage.records import attempt_number
from avo.operators.base import GiveUp, Operator, Proposal


def step(state: RunState, ev: Evaluator, isl: IslandRef, op: Optional[Operator] = None) -> AttemptRecord:
    """One variation step on an island, recorded whatever its outcome. `op`: an operator other
    than the island's (a workspace submitted by hand, avo/evolve/workspace.py), recorded by its name."""
    start, head = state.start_and_head(isl)
    rec = attempt.open_record(state, isl, parent=start.sha)
    if op is not None:
        rec.operator = op.name
    else:
        op = state.operators[isl.operator]
    busy0 = ev.busy_s
    state.stats.now = f"{rec.id} {isl.label}: {rec.operator} is proposing"
    state.stop.phase = "operator"
    error = ""
    try:
        out = op.propose(state.view_for(isl, start, head), state.step_context(isl, rec.id, attempt_number(rec.id), ev))
        if not isinstance(out, (Proposal, GiveUp)):
            out, error = None, f"operator returned {type(out).__name__}, not a Proposal or GiveUp"
    except (KeyboardInterrupt, HarnessError):
        raise
    except Exception as e:
        out, error = None, attempt.operator_error(e)
    attempt.take_outcome(rec, out, error)
    if isinstance(out, Proposal) and attempt.admit(state, isl.task, out, rec):
        state.stop.phase = "evaluate"
        state.stats.now = f"{rec.id} {isl.label}: evaluating and gating ({rec.note[:60]})"
        rep, dec = attempt.judge(ev, state.tasks[isl.task], f"{isl.task}-{rec.id}", head.sha, head.source, out,
                                 state.cfg.gate)
        attempt.settle(state, rec, out, rep, dec, head)
    state.stop.phase = "idle"
    state.stats.now = ""
    attempt.close_record(state, isl, rec, ev.busy_s - busy0)
    return rec


def loop(state: RunState, ev: Evaluator) -> str:
    """Steps round-robin over the islands until a budget or the stop signal ends the run; why."""
    k = len(state.attempts)
    while True:
        if state.stop.count:
            return "interrupted"
        reason = state.budget_reason()
        if reason:
            return f"budget reached: {reason}"
        if state.exhausted():
            return (f"every island's operator gave up or failed {GIVE_UPS_TO_STOP} times in a row "
                    f"(search space exhausted, or see the errors above)")
        isl = state.islands[k % len(state.islands)]
        k += 1
        step(state, ev, isl)
        supervise(state, ev, isl)


@dataclass
class RunEnd:
    code: int  # the process exit code
    why: str = ""  # why the loop ended ("budget reached: ...", "interrupted")
    error: str = ""  # a run-ending error, one line


def run_local(state: RunState) -> RunEnd:
    """Open (or resume) the lineage, seed the islands and loop, on one evaluator. The caller
    installs and restores state.stop's signal handlers and closes the state."""
    end = RunEnd(EXIT_OK)
    try:
        with Evaluator(state.cfg.eval_config()) as ev:
            ev.start()  # the workers import while the lineage opens and the seeds are set up
            state.open_lineage()
            attempt.seed_islands(state, ev)
            with state.display:
                end.why = loop(state, ev)
                if not state.stop.count:
                    final.measure_run(state, ev)
    except KeyboardInterrupt:
        end.why = "interrupted"
    except (EvolveError, LineageError, ConfigError) as e:
        end.code, end.error = getattr(e, "code", EXIT_USAGE), str(e)
    except HarnessError as e:
        end.code, end.error = EXIT_FAILED, f"evaluator: {e}"
    if state.stop.count or end.why == "interrupted":
        end.code = EXIT_INTERRUPTED
    return end


def resolve_run_device(cfg_device: str, device: Optional[str] = None) -> str:
    """The device a local run evaluates on; cuda must be visible."""
    from avo.harness.runner import resolve_device
    d = device or resolve_device(cfg_device)
    if d == "cuda" and device is None:
        import torch
        if not torch.cuda.is_available():
            raise EvolveError("device: cuda but no CUDA device is visible")
    return d
