"""The external operator: a coding-agent CLI (Claude Code, Codex, aider, a script, ...) runs one
variation step in a scratch folder. The folder holds the parent kernel, a generated AGENTS.md
that teaches `avo eval` / `avo lineage` and the submit protocol, and CONTEXT.md with the lineage
view; it is a git repository whose first commit is the parent, so the agent can `git diff`.

The command comes from the config with `{workdir}`, `{task}`, `{kernel}`, `{device}`,
`{python}` substituted, and runs through the shell in that folder, in its own process group
(killed whole on timeout). The agent submits by writing SUBMIT.md (first line = note) next to
the final kernel, or gives up with GIVEUP.md. The gate still decides."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from avo.operators.base import GiveUp, LineageView, Proposal, StepContext
from avo.operators.prompting import (device_note, format_directions, format_elites, format_recent, render,
                                     task_summary)

KILL_GRACE_S = 5.0


def note_from(text: str, limit: int = 300) -> str:
    line = next((l.strip().lstrip("#").strip() for l in text.splitlines() if l.strip()), "")
    return line[:limit]


class ExternalOperator:
    """`ExternalOperator(spec)` with the run config's ExternalSpec (`command`, `timeout_s`)."""

    def __init__(self, spec: Any, device: str = "auto", knowledge_dir: Optional[Path] = None):
        self.spec = spec
        self.name = getattr(spec, "name", "external")
        self.command: str = spec.command
        self.timeout_s = float(getattr(spec, "timeout_s", 1800.0))
        self.device = getattr(spec, "device", None) or device
        self.knowledge_dir = knowledge_dir

    def _device(self) -> str:
        from avo.harness.runner import resolve_device
        return resolve_device(self.device)

    def prepare(self, view: LineageView, ctx: StepContext) -> Path:
        """The agent's folder: kernel, AGENTS.md, CONTEXT.md, git repo with the parent committed."""
        import git
        from avo.operators.knowledge import DEFAULT_KB_DIR
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
            kb_dir=str(ctx.knowledge_dir or self.knowledge_dir or DEFAULT_KB_DIR), device_note=device_note(device),
            timeout_min=f"{self.timeout_s / 60:.0f}"))
        (wd / "CONTEXT.md").write_text(context_md(view))
        (wd / ".gitignore").write_text("__pycache__/\n.cache/\n")
        repo = git.Repo.init(wd)
        with repo.config_writer() as cw:
            cw.set_value("user", "name", "avo")
            cw.set_value("user", "email", "avo@localhost")
        repo.index.add([view.kernel_name, "AGENTS.md", "CONTEXT.md", ".gitignore"])
        repo.index.commit(f"parent {view.best.commit[:10]}: {view.best.note or 'seed'}")
        repo.close()
        return wd

    def command_line(self, wd: Path, view: LineageView) -> str:
        subs = {"workdir": str(wd), "task": view.task, "kernel": str(wd / view.kernel_name),
                "device": self._device(), "python": sys.executable}
        cmd = self.command
        for k, v in subs.items():
            cmd = cmd.replace("{" + k + "}", v)
        return cmd

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp:
        wd = self.prepare(view, ctx)
        log_path = Path(ctx.workdir) / "external.log"
        cmd = self.command_line(wd, view)
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update({"AVO_TASK": view.task, "AVO_KERNEL": str(wd / view.kernel_name), "AVO_DEVICE": self._device(),
                    # inside the folder: sandboxed agents (Codex workspace-write) may not write ~/.triton
                    "TRITON_CACHE_DIR": str(wd / ".cache" / "triton")})
        t0 = time.monotonic()
        with open(log_path, "ab") as logf:
            logf.write(f"$ {cmd}\n".encode())
            logf.flush()
            proc = subprocess.Popen(cmd, shell=True, cwd=wd, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            timed_out = False
            try:
                code = proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = kill_group(proc)
            logf.write(f"\n[avo] exit {code} after {time.monotonic() - t0:.1f}s"
                       f"{' (killed: timeout)' if timed_out else ''}\n".encode())
        return self._outcome(view, wd, log_path, code, timed_out)

    def _outcome(self, view: LineageView, wd: Path, log_path: Path, code: Optional[int], timed_out: bool):
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


def kill_group(proc: subprocess.Popen) -> Optional[int]:
    """SIGTERM the agent's whole process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def context_md(view: LineageView) -> str:
    b = view.best
    lat = ", ".join(f"{k} {v:.4f} ms" for k, v in b.latencies_ms.items()) or "n/a"
    widen = f"\nExploration level {view.widen}: the island stagnated; prefer a structural change.\n" if view.widen else ""
    return (f"# Lineage view: {view.task}, island {view.island}\n\n"
            f"## Parent (island best): {b.commit[:10]}\n\n{b.note or '(seed)'}\n"
            f"speedup vs seed {b.speedup_vs_seed}, vs baseline {b.speedup_vs_baseline}, fraction of SOL {b.sol_fraction}\n"
            f"latency per workload: {lat}\n\n## Elites\n\n{format_elites(view)}\n\n"
            f"## Recent attempts (newest last)\n\n{format_recent(view)}\n\n"
            f"## Supervisor directions\n\n{format_directions(view)}\n{widen}")
