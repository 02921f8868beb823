"""The external operator: a coding-agent CLI (Claude Code, Codex, aider, a script, ...) runs one
variation step in a scratch folder. The folder holds the parent kernel, a generated AGENTS.md
that teaches `avo eval` / `avo lineage` and the submit protocol, and CONTEXT.md with the lineage
view; it is a git repository whose first commit is the parent, so the agent can `git diff`.

`agent: claude` runs Claude Code headless (`claude -p PROMPT --output-format json` with the tools
it needs allowed, so `avo eval` runs without a prompt) and reads `total_cost_usd` from its JSON;
`agent: codex` runs `codex exec --json --sandbox workspace-write` and prices the tokens its
`turn.completed` events report; `agent: command` runs the configured command with `{workdir}`,
`{task}`, `{kernel}`, `{device}`, `{python}` substituted (`output:` says whether its stdout is
one of those two reports). Either way it runs through the shell in that folder, in its own
process group (killed whole on timeout), and the cost is charged to the run's `budget.llm_usd`
(the CostMeter the agentic operators share; a step does not start once it is spent). The agent
submits by writing SUBMIT.md (first line = note) next to the final kernel, or gives up with
GIVEUP.md; NOTES.md, if written, joins the transcript. The gate still decides."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from avo.operators.base import GiveUp, LineageView, Proposal, StepContext
from avo.operators.llm import BudgetExhausted
from avo.operators.prompting import (device_note, fmt, format_directions, format_elites, format_recent, render,
                                     task_summary)
from avo.operators.shell import kill_group

PROMPT = ("Read AGENTS.md in this folder and follow it: make {kernel} faster, check it with the avo eval "
          "command given there, and finish by writing SUBMIT.md (or GIVEUP.md).")
# Claude Code's permission rules for a headless step: the evaluator and the lineage through avo,
# read-only git and grep, and the file tools (edits are accepted by --permission-mode acceptEdits)
CLAUDE_TOOLS = ["Bash(avo eval *)", "Bash(avo lineage *)", "Bash(git diff*)", "Bash(git log*)", "Bash(git status*)",
                "Bash(grep *)", "Read", "Edit", "Write", "Glob", "Grep"]
OUTPUT_BY_AGENT = {"command": "text", "claude": "claude-json", "codex": "codex-jsonl"}
STDOUT_KEPT = 1 << 20  # bytes of a reporting agent's stdout copied into the transcript (the tail)


class AgentReport(BaseModel):
    """What a headless CLI reported on stdout: its cost, tokens, and a one-line summary."""
    reported: bool = False
    cost_usd: float = 0.0
    tokens: int = 0
    summary: str = ""


def _json_objects(text: str) -> list[dict]:
    """The JSON objects in a CLI's stdout: the whole of it, else one per line."""
    try:
        obj = json.loads(text)
        return [obj] if isinstance(obj, dict) else [o for o in obj if isinstance(o, dict)] if isinstance(obj, list) else []
    except (json.JSONDecodeError, ValueError):
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def read_claude(stdout: str) -> AgentReport:
    """`claude -p --output-format json`: the `result` object (subtype, num_turns, total_cost_usd,
    usage with input/output/cache tokens, result text)."""
    res = next((o for o in reversed(_json_objects(stdout)) if o.get("type") == "result"), None)
    if res is None:
        return AgentReport(summary="claude: no result JSON on stdout")
    u = res.get("usage") or {}
    tokens = sum(int(u.get(k) or 0) for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                                 "cache_read_input_tokens"))
    cost = float(res.get("total_cost_usd") or 0.0)
    text = " ".join(str(res.get("result") or "").split())[:200]
    return AgentReport(reported=True, cost_usd=cost, tokens=tokens,
                       summary=f"claude: {res.get('subtype', '?')}, {res.get('num_turns', '?')} turns, ${cost:.4f}"
                               + (f": {text}" if text else ""))


def read_codex(stdout: str, spec: Any) -> AgentReport:
    """`codex exec --json`: JSONL events; each `turn.completed` carries usage (input_tokens, of which
    cached_input_tokens, and output_tokens), priced with the spec's prices."""
    inp = cached = out = turns = 0
    errors, last = [], ""
    for ev in _json_objects(stdout):
        kind = ev.get("type")
        if kind == "turn.completed":
            u = ev.get("usage") or {}
            inp, cached, out = inp + int(u.get("input_tokens") or 0), cached + int(u.get("cached_input_tokens") or 0), \
                out + int(u.get("output_tokens") or 0)
            turns += 1
        elif kind == "turn.failed":
            errors.append(str((ev.get("error") or {}).get("message", "turn failed")))
        elif kind == "error":
            errors.append(str(ev.get("message", "error")))
        elif kind == "item.completed" and (ev.get("item") or {}).get("type") == "agent_message":
            last = str(ev["item"].get("text") or "")
    if not turns and not errors:
        return AgentReport(summary="codex: no turn.completed event on stdout")
    cost = ((inp - cached) * spec.price_in_per_mtok + cached * spec.price_cached_in_per_mtok
            + out * spec.price_out_per_mtok) / 1e6
    text = " ".join((errors[-1] if errors else last).split())[:200]
    return AgentReport(reported=bool(turns), cost_usd=cost, tokens=inp + out,
                       summary=f"codex: {turns} turns, {inp} input ({cached} cached) + {out} output tokens, ${cost:.4f}"
                               + (f"; error: {text}" if errors else f": {text}" if text else ""))


def note_from(text: str, limit: int = 300) -> str:
    line = next((l.strip().lstrip("#").strip() for l in text.splitlines() if l.strip()), "")
    return line[:limit]


class ExternalOperator:
    """`ExternalOperator(spec)` with the run config's ExternalSpec (`agent`, `command`,
    `timeout_s`, ...). `meter` (avo.operators.llm.CostMeter, shared with the run's agentic
    operators) is charged what the agent reports and stops steps once `budget.llm_usd` is spent."""

    def __init__(self, spec: Any, device: str = "auto", knowledge_dir: Optional[Path] = None, meter: Any = None):
        self.spec = spec
        self.name = getattr(spec, "name", "external")
        self.agent: str = getattr(spec, "agent", "command") or "command"
        self.command: Optional[str] = getattr(spec, "command", None)
        self.output: str = getattr(spec, "output", None) or OUTPUT_BY_AGENT[self.agent]
        self.timeout_s = float(getattr(spec, "timeout_s", 1800.0))
        self.device = getattr(spec, "device", None) or device
        self.knowledge_dir = knowledge_dir
        self.meter = meter

    def _device(self) -> str:
        from avo.harness.runner import resolve_device
        return resolve_device(self.device)

    def _kb_dir(self, ctx: StepContext) -> Path:
        from avo.operators.knowledge import DEFAULT_KB_DIR
        return Path(ctx.knowledge_dir or self.knowledge_dir or DEFAULT_KB_DIR)

    def prepare(self, view: LineageView, ctx: StepContext, finish_note: Optional[str] = None) -> Path:
        """The agent's folder: kernel, AGENTS.md, CONTEXT.md, git repo with the parent committed.
        `finish_note`: the last paragraph of AGENTS.md's "How to finish" (default: exit in time)."""
        import git
        wd = Path(ctx.workdir) / "agent"
        if wd.exists():
            shutil.rmtree(wd)
        wd.mkdir(parents=True)
        (wd / view.kernel_name).write_text(view.best.source)
        avo = "avo"  # the venv's bin/ is first on the agent's PATH (propose)
        lineage = str(ctx.lineage_root) if ctx.lineage_root else "(no lineage yet)"
        device = self._device()
        (wd / "AGENTS.md").write_text(render(
            "external_agents", task=view.task, island=view.island, kernel_name=view.kernel_name,
            task_summary=task_summary(view.task), avo=avo, task_arg=view.task, device=device, lineage=lineage,
            kb_dir=str(self._kb_dir(ctx)), device_note=device_note(device),
            finish_note=finish_note or (f"Then exit. You have {self.timeout_s / 60:.0f} minutes; after that the process "
                                        f"is killed and the step counts as given up unless `SUBMIT.md` exists.")))
        (wd / "CONTEXT.md").write_text(context_md(view))
        (wd / ".gitignore").write_text("__pycache__/\n.cache/\n")
        repo = git.Repo.init(wd)
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "avo")
            cw.set_value("user", "email", "avo@localhost")
        repo.index.add([view.kernel_name, "AGENTS.md", "CONTEXT.md", ".gitignore"])
        repo.index.commit(f"parent {view.best.commit[:10]}: {view.best.note or 'seed'}")
        # GitPython writes the index without the files' stat data, so until git refreshes it,
        # `git apply --index/--3way` in the folder says "kernel.py: does not match index".
        repo.git.update_index("--refresh")
        repo.close()
        return wd

    def command_line(self, wd: Path, view: LineageView, ctx: Optional[StepContext] = None) -> str:
        """The shell command of this step: the configured command, or a preset's command line."""
        kernel = wd / view.kernel_name
        if self.agent == "command":
            subs = {"workdir": str(wd), "task": view.task, "kernel": str(kernel),
                    "device": self._device(), "python": sys.executable}
            cmd = self.command
            for k, v in subs.items():
                cmd = cmd.replace("{" + k + "}", v)
            return cmd
        spec = self.spec
        prompt = (getattr(spec, "prompt", None) or PROMPT).replace("{kernel}", view.kernel_name)
        model = getattr(spec, "model", None)
        if self.agent == "claude":
            argv = [getattr(spec, "executable", None) or "claude", "-p", prompt, "--output-format", "json",
                    "--permission-mode", "acceptEdits",
                    "--allowedTools", ",".join(getattr(spec, "allowed_tools", None) or CLAUDE_TOOLS),
                    "--add-dir", str(self._kb_dir(ctx or StepContext(seed=0, workdir=wd)))]
            if model:
                argv += ["--model", model]
            if getattr(spec, "max_turns", None):
                argv += ["--max-turns", str(spec.max_turns)]
            left = self.meter.left() if self.meter is not None else None
            if left is not None:
                argv += ["--max-budget-usd", f"{left:.4f}"]
        else:  # codex: workspace-write lets it edit the folder and run avo eval there (no network)
            from avo.harness.build import cache_root
            cache = cache_root()
            cache.mkdir(parents=True, exist_ok=True)  # CUDA C++ builds of `avo eval` land there
            argv = [getattr(spec, "executable", None) or "codex", "exec", "--json", "--sandbox", "workspace-write",
                    "--skip-git-repo-check", "--add-dir", str(cache)]
            if model:
                argv += ["--model", model]
        argv += list(getattr(spec, "extra_args", None) or [])
        if self.agent == "codex":
            argv.append(prompt)  # the prompt last: after every flag
        return shlex.join(argv)

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp:
        if self.meter is not None:
            try:
                self.meter.check()
            except BudgetExhausted as e:
                return GiveUp(operator=self.name, reason=str(e))
        wd = self.prepare(view, ctx)
        log_path = Path(ctx.workdir) / "external.log"
        out_path = Path(ctx.workdir) / "external.stdout"
        cmd = self.command_line(wd, view, ctx)
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update({"AVO_TASK": view.task, "AVO_KERNEL": str(wd / view.kernel_name), "AVO_DEVICE": self._device(),
                    # inside the folder: sandboxed agents (Codex workspace-write) may not write ~/.triton
                    "TRITON_CACHE_DIR": str(wd / ".cache" / "triton")})
        reporting = self.output != "text"
        t0 = time.monotonic()
        with open(log_path, "ab") as logf, open(out_path, "wb") if reporting else open(os.devnull, "wb") as outf:
            logf.write(f"$ {cmd}\n".encode())
            logf.flush()
            # a reporting agent's stdout is its report (one JSON object, or JSONL events): kept apart
            proc = subprocess.Popen(cmd, shell=True, cwd=wd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=outf if reporting else logf, stderr=logf, start_new_session=True)
            timed_out = False
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = kill_group(proc)
            logf.write(f"\n[avo] exit {code} after {time.monotonic() - t0:.1f}s"
                       f"{' (killed: timeout)' if timed_out else ''}\n".encode())
        report = self._report(out_path, log_path) if reporting else AgentReport()
        keep_notes(wd, log_path)
        out = self.outcome(view, wd, log_path, code, timed_out)
        out.cost_usd, out.tokens = report.cost_usd, report.tokens
        return out

    def _report(self, out_path: Path, log_path: Path) -> AgentReport:
        """Read the agent's stdout report, charge its cost to the run's meter, and copy both into
        the transcript (external.log)."""
        data = out_path.read_bytes() if out_path.exists() else b""
        text = data.decode(errors="replace")
        kind = self.output
        report = read_claude(text) if kind == "claude-json" else read_codex(text, self.spec)
        if self.meter is not None:
            self.meter.charge(report.cost_usd, report.tokens)
        with open(log_path, "ab") as logf:
            logf.write(f"[avo] agent stdout ({kind}, {len(data)} bytes):\n".encode())
            logf.write(data[-STDOUT_KEPT:] + (b"" if data.endswith(b"\n") or not data else b"\n"))
            cost = (f"cost ${report.cost_usd:.4f}, {report.tokens} tokens (charged to the run's LLM budget)"
                    if report.reported else "no cost reported (the agent was killed or printed no report): $0 charged")
            logf.write(f"[avo] {report.summary}; {cost}\n".encode())
        return report

    def outcome(self, view: LineageView, wd: Path, log_path: Path, code: Optional[int], timed_out: bool):
        """What the agent left in `wd`: a Proposal (SUBMIT.md and a changed kernel) or a GiveUp."""
        give = lambda reason: GiveUp(operator=self.name, reason=reason, transcript=str(log_path))
        kernel = wd / view.kernel_name
        if (wd / "GIVEUP.md").exists():
            return give("agent gave up: " + (note_from((wd / "GIVEUP.md").read_text()) or "no reason given"))
        if not (wd / "SUBMIT.md").exists():
            if timed_out:
                return give(f"agent timed out after {self.timeout_s:g}s without SUBMIT.md")
            return give(f"agent exited (code {code}) without SUBMIT.md or GIVEUP.md")
        if not kernel.exists() or not kernel.read_text().strip():
            return give(f"SUBMIT.md written but {view.kernel_name} is missing or empty")
        source = kernel.read_text()
        if source == view.best.source:
            return give(f"SUBMIT.md written but {view.kernel_name} is unchanged")
        note = note_from((wd / "SUBMIT.md").read_text()) or "external agent edit"
        return Proposal(source=source, parent=view.best.commit, operator=self.name, note=note,
                        transcript=str(log_path))


def keep_notes(wd: Path, log_path: Path) -> None:
    """The agent's NOTES.md (what it tried and learned), if any, into the transcript."""
    notes = wd / "NOTES.md"
    if notes.is_file():
        with open(log_path, "ab") as logf:
            logf.write(b"\n[avo] NOTES.md:\n" + notes.read_bytes()[:1 << 20] + b"\n")


def context_md(view: LineageView) -> str:
    b = view.best
    lat = ", ".join(f"{k} {v:.4f} ms" for k, v in b.latencies_ms.items()) or "n/a"
    widen = f"\nExploration level {view.widen}: the island stagnated; prefer a structural change.\n" if view.widen else ""
    return (f"# Lineage view: {view.task}, island {view.island}\n\n"
            f"## Parent (island best): {b.commit[:10]}\n\n{b.note or '(seed)'}\n"
            f"speedup vs seed {fmt(b.speedup_vs_seed)}, vs baseline {fmt(b.speedup_vs_baseline)}, "
            f"fraction of SOL {fmt(b.sol_fraction)}\n"
            f"latency per workload: {lat}\n\n## Elites\n\n{format_elites(view)}\n\n"
            f"## Recent attempts (newest last)\n\n{format_recent(view)}\n\n"
            f"## Supervisor directions\n\n{format_directions(view)}\n{widen}")
