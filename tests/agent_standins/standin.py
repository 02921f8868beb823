"""What the stand-in `claude` and `codex` executables (same folder) share: the work of a tiny
coding agent in an avo step folder. They accept the real CLIs' flags (argparse refuses any
other), do what the flags allow, and print the real CLIs' reports; tests put this folder first
on PATH so the external operator's presets run them instead of the real CLIs.

The agent: read AGENTS.md, edit the kernel (BLOCK_SIZE 256 -> 1024, or AVO_STANDIN_EDIT="old=>new"),
run the `avo eval` command AGENTS.md gives (plus AVO_STANDIN_EVAL_ARGS), and write SUBMIT.md and
NOTES.md when it passed, GIVEUP.md otherwise. With a model server in the environment
(ANTHROPIC_BASE_URL / OPENAI_BASE_URL, e.g. tests/fake_llm_server.py on 127.0.0.1) it asks it
once, with the API key from the environment, and reports the usage the server returned.
AVO_STANDIN_SLEEP=S hangs S seconds first (a timeout)."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path


def hang() -> None:
    s = float(os.environ.get("AVO_STANDIN_SLEEP", "0") or 0)
    if s:
        time.sleep(s)


def eval_command(wd: Path) -> str:
    agents = (wd / "AGENTS.md").read_text()
    cmd = next(l.strip().strip("`") for l in agents.splitlines() if " eval " in l and "kernel.py" in l)
    extra = os.environ.get("AVO_STANDIN_EVAL_ARGS", "")
    return f"{cmd} {extra}".strip()


def edit(wd: Path) -> bool:
    old, _, new = os.environ.get("AVO_STANDIN_EDIT", "BLOCK_SIZE=256,=>BLOCK_SIZE=1024,").partition("=>")
    k = wd / "kernel.py"
    src = k.read_text()
    if old not in src:
        return False
    k.write_text(src.replace(old, new, 1))
    return True


def run(cmd: str, wd: Path) -> tuple[int, str]:
    r = subprocess.run(cmd, shell=True, cwd=wd, capture_output=True, text=True)
    return r.returncode, (r.stdout + r.stderr)[-4000:]


def finish(wd: Path, passed: bool, output: str) -> str:
    if passed:
        (wd / "SUBMIT.md").write_text("BLOCK_SIZE 256 -> 1024: fewer, larger programs\n\nevaluated: PASSED\n")
        (wd / "NOTES.md").write_text("tried BLOCK_SIZE 1024; avo eval passed on the CPU workload\n")
        return "Submitted: BLOCK_SIZE 256 -> 1024."
    tail = " ".join(output.split())[-200:]
    (wd / "GIVEUP.md").write_text(f"the evaluation did not pass: {tail}\n")
    return "Gave up: the evaluation did not pass."


def ask_model(kind: str) -> dict | None:
    """One request to the configured server; its usage (None without a server)."""
    if kind == "anthropic":
        base = os.environ.get("ANTHROPIC_BASE_URL")
        if not base:
            return None
        req = urllib.request.Request(base.rstrip("/") + "/v1/messages", data=json.dumps({
            "model": "stand-in", "max_tokens": 1024, "messages": [{"role": "user", "content": "plan"}]}).encode(),
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                     "x-api-key": os.environ.get("ANTHROPIC_API_KEY", "")})
    else:
        base = os.environ.get("OPENAI_BASE_URL")
        if not base:
            return None
        req = urllib.request.Request(base.rstrip("/") + "/chat/completions", data=json.dumps({
            "model": "stand-in", "messages": [{"role": "user", "content": "plan"}]}).encode(),
            headers={"content-type": "application/json",
                     "authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()).get("usage") or {}
