"""The agentic variation operator: an LLM with tools runs one variation step,
plan -> implement -> evaluate -> diagnose/repair -> critique -> submit, within limits on turns,
tokens, wall time and the run's LLM budget.

Every step writes `transcript.jsonl` in `ctx.workdir` (prompts, each model turn with usage and
cost, each tool call and result, compactions, the outcome); its path goes into the Proposal or
GiveUp. The API key never enters it (values of the key variable are redacted besides).

Context (avo/operators/context.py): the conversation's size comes from the provider's usage;
above a fraction of `context_tokens` whole old turns after the stable prefix (system and step
prompt, earlier notices) are replaced by one notice, so the cached prefix stays byte-identical.
See docs/agents.md."""
from __future__ import annotations

import difflib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from avo.operators.base import GiveUp, LineageView, Proposal, Review, StepContext
from avo.operators.knowledge import KBError, KnowledgeBase
from avo.operators.context import ContextWindow
from avo.operators.llm import (BudgetExhausted, CostMeter, LLMClient, LLMError, Message, Transcript, key_env,
                               llm_spec_from)
from avo.operators.providers import make_client
from avo.operators.prompting import device_note, render, step_prompt
from avo.operators.review import review_trajectory
from avo.operators.tools import ToolEnv, run_tool, tools_for
from avo.tasks import source_hash

log = logging.getLogger("avo.agentic")
IDLE_TURNS = 3  # consecutive turns without a tool call before the step ends
TRUNCATED = ("Your last answer was cut off at the output limit, even with a larger budget, and its unfinished "
             "tool call was not run. Make the change in smaller pieces: `edit` with a short search/replace, "
             "or write a long file in parts.")


class AgenticOperator:
    """`AgenticOperator(spec)` with the run config's AgenticSpec. `meter` is shared by the run's
    agentic operators (and the supervisor's reviews) to enforce `budget.llm_usd`."""

    def __init__(self, spec: Any, meter: Optional[CostMeter] = None, device: str = "auto",
                 knowledge_dir: Optional[Path] = None):
        self.spec = spec
        self.name = getattr(spec, "name", "agentic")
        self.llm = llm_spec_from(spec)
        self.meter = meter or CostMeter(None)
        self.device = device
        self.knowledge_dir = knowledge_dir
        self.max_turns = int(getattr(spec, "max_steps", 40))
        self.step_tokens = getattr(spec, "step_tokens", None)  # None: no per-step token cap
        self.step_minutes = getattr(spec, "step_minutes", None)
        self.max_evaluations = int(getattr(spec, "max_evaluations", 8) or 8)
        self.context_tokens = int(getattr(spec, "context_tokens", 200_000))
        self.critique = bool(getattr(spec, "critique", True))
        self.profile = bool(getattr(spec, "profile", True))
        # the shell tool (avo/operators/shell.py), where the step offers one: on unless the spec says no
        self.shell_timeout_s = float(getattr(spec, "shell_timeout_s", 300.0)) if getattr(spec, "shell", True) else None
        self._client: Optional[LLMClient] = None

    def client(self) -> LLMClient:
        if self._client is None:
            self._client = make_client(self.llm)
        return self._client

    def _secrets(self) -> list[str]:
        env = key_env(self.llm)
        return [os.environ.get(env, "")] if env else []

    def _kb(self, ctx: StepContext) -> Optional[KnowledgeBase]:
        try:
            return KnowledgeBase(ctx.knowledge_dir or self.knowledge_dir)
        except KBError as e:
            log.warning("knowledge base unavailable: %s", e)
            return None

    def _repo(self, ctx: StepContext):
        if ctx.lineage_root is None or not (Path(ctx.lineage_root) / ".git").exists():
            return None
        import git
        return git.Repo(ctx.lineage_root)

    def _profiler(self, view: LineageView):
        if not self.profile or self.device == "interpret":
            return None
        from avo.operators.profile import make_profiler
        return make_profiler(view.task)

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp:
        workdir = Path(ctx.workdir)
        ws = workdir / "workspace"
        if ws.exists():
            shutil.rmtree(ws)
        ws.mkdir(parents=True)
        (ws / view.kernel_name).write_text(view.best.source)
        tr = Transcript(workdir / "transcript.jsonl", self._secrets())
        cost0, tokens0 = self.meter.spent_usd, self.meter.tokens
        repo = self._repo(ctx)
        env = ToolEnv(workspace=ws, view=view, ctx=ctx, parent_source=view.best.source, kb=self._kb(ctx),
                      repo=repo, max_evaluations=self.max_evaluations, profiler=self._profiler(view),
                      shell_timeout_s=self.shell_timeout_s)
        if self.critique:
            env.critique = lambda src: self._critique(env, src)

        def done(result: Proposal | GiveUp) -> Proposal | GiveUp:
            result.cost_usd = self.meter.spent_usd - cost0
            result.tokens = self.meter.tokens - tokens0
            result.transcript = str(tr.path)
            tr.write("end", outcome=type(result).__name__, note=getattr(result, "note", None),
                     reason=getattr(result, "reason", None), cost_usd=result.cost_usd, tokens=result.tokens,
                     evaluations=[e.model_dump() for e in env.evaluations])
            tr.close()
            if repo is not None:
                repo.close()
            return result

        def give_up(reason: str) -> GiveUp:
            fallback = self._fallback(env, view, reason)
            return done(fallback or GiveUp(operator=self.name, reason=reason))

        tools = tools_for(env)
        specs = [t.spec() for t in tools]
        system = render("system", kernel_name=view.kernel_name, device_note=device_note(self._device()))
        messages = [Message(role="system", text=system),
                    Message(role="user", text=step_prompt(view, self.max_turns, self.max_evaluations), pinned=True)]
        window = ContextWindow(self.context_tokens)
        tr.write("start", task=view.task, island=view.island, parent=view.best.commit, provider=self.llm.provider,
                 model=self.llm.model, base_url=self.llm.base_url, tools=[t.name for t in tools],
                 system=system, prompt=messages[1].text)
        try:
            client = self.client()
        except LLMError as e:
            return give_up(str(e))
        t_end = time.monotonic() + 60 * self.step_minutes if self.step_minutes else None
        idle = 0
        for turn_no in range(1, self.max_turns + 1):
            if t_end is not None and time.monotonic() > t_end:
                return give_up(f"step wall time ({self.step_minutes:g} min) reached")
            if self.step_tokens and self.meter.tokens - tokens0 >= self.step_tokens:
                return give_up(f"step token limit ({self.step_tokens}) reached")
            try:
                self.meter.check()
            except BudgetExhausted as e:
                return give_up(str(e))
            compacted = window.compact(messages)
            if compacted:
                tr.write("compact", **compacted)
            try:
                turn = client.chat(messages, specs)
            except LLMError as e:
                tr.write("llm_error", error=str(e))
                return give_up(f"LLM error: {e}")
            self.meter.add(turn)
            tr.write("turn", n=turn_no, text=turn.text, tool_calls=[c.model_dump() for c in turn.tool_calls],
                     usage=turn.usage.model_dump(), cost_usd=turn.cost_usd, latency_s=round(turn.latency_s, 3),
                     retries=[r.model_dump() for r in turn.retries], stop_reason=turn.stop_reason,
                     thinking=turn.thinking, truncated=turn.truncated,
                     truncations=[t.model_dump() for t in turn.truncations], context_tokens=turn.context_tokens,
                     run_cost_usd=round(self.meter.spent_usd, 6))
            messages.append(Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls, opaque=turn.opaque,
                                    opaque_api=turn.opaque_api))
            window.observe(messages, turn.context_tokens)
            if not turn.tool_calls:
                idle += 1
                if idle >= IDLE_TURNS:
                    return give_up(f"the model stopped calling tools ({IDLE_TURNS} turns)")
                messages.append(Message(role="user", text=TRUNCATED if turn.truncated else "Continue with the tools. "
                                        "End the step with submit(note) or give_up(reason)."))
                continue
            idle = 0
            for call in turn.tool_calls:
                if env.submitted is not None or env.gave_up is not None:
                    text, err = "not run: the step already ended", True
                else:
                    t0 = time.monotonic()
                    text, err = run_tool(env, tools, call)
                    tr.write("tool", id=call.id, name=call.name, arguments=call.arguments, parse_error=call.parse_error,
                             is_error=err, result=text, seconds=round(time.monotonic() - t0, 3))
                messages.append(Message(role="tool", tool_call_id=call.id, text=text, is_error=err))
            if env.submitted is not None:
                return done(self._proposal(env, view, env.submitted))
            if env.gave_up is not None:
                return done(GiveUp(operator=self.name, reason=env.gave_up))
            left = self.max_turns - turn_no
            if left == 2:
                messages.append(Message(role="user", text="Two turns left in this step: submit the best version "
                                        "that passed its evaluation, or give_up."))
        return give_up(f"turn limit ({self.max_turns}) reached")

    def review(self, view: LineageView, ctx: StepContext) -> Review:
        """The supervisor's TrajectoryReview hook: new directions for a stagnant island."""
        path = Path(ctx.workdir) / "review.jsonl"
        try:
            client = self.client()
        except LLMError as e:
            log.warning("trajectory review unavailable: %s", e)
            return Review(error=str(e))
        return review_trajectory(client, self.meter, view, path, secrets=tuple(self._secrets()))

    def _device(self) -> str:
        from avo.harness.runner import resolve_device
        return resolve_device(self.device)

    def _proposal(self, env: ToolEnv, view: LineageView, note: str) -> Proposal:
        return Proposal(source=env.kernel_source(), parent=view.best.commit, operator=self.name, note=note)

    def _fallback(self, env: ToolEnv, view: LineageView, reason: str) -> Optional[Proposal]:
        """A limit ended the step, but the current kernel passed its latest evaluation and beat the
        island best there: hand it to the gate rather than lose it."""
        src = env.kernel_source()
        h = source_hash(src)
        last = next((e for e in reversed(env.evaluations) if e.hash == h), None)
        if env.gave_up is not None or last is None or last.status != "PASSED" or src == env.parent_source \
                or h in view.seen_hashes or not (last.speedup_vs_best and last.speedup_vs_best > 1.0):
            return None
        return self._proposal(env, view, f"auto-submitted ({reason}); evaluated {last.speedup_vs_best:.3f}x vs best")

    def _critique(self, env: ToolEnv, src: str) -> str:
        diff = "".join(difflib.unified_diff(env.parent_source.splitlines(True), src.splitlines(True),
                                            "parent/" + env.view.kernel_name, "candidate/" + env.view.kernel_name, n=2))
        h = source_hash(src)
        last = next((e for e in reversed(env.evaluations) if e.hash == h), None)
        if last is None:
            status = "NOT EVALUATED: this exact file has not been evaluated yet."
        else:
            vs = f", {last.speedup_vs_best:.3f}x vs the island best" if last.speedup_vs_best else ""
            status = f"{last.status}{vs}."
        if len(diff) > 6000:
            diff = diff[:6000] + "\n[... diff cut]"
        return render("critique", diff=diff, eval_status=status)
