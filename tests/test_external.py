"""The external operator with real tiny "agents" (Python scripts run through the configured
command): submit, give up, time out (the process group is killed), exit without a verdict."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from avo.operators.base import GiveUp, LineageView, Proposal, StepContext, VersionView
from avo.operators.external import ExternalOperator
from avo.tasks import REPO_ROOT

SEED = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()

# Follows AGENTS.md literally: runs the evaluate command written there, then edits CONFIG and
# submits. It fails loudly (no SUBMIT.md) if the instructions do not work.
SUBMITTING_AGENT = r'''
import re, subprocess, sys
from pathlib import Path
wd = Path(sys.argv[1])
agents = (wd / "AGENTS.md").read_text()
cmd = next(l.strip().strip("`") for l in agents.splitlines() if " eval " in l and "kernel.py" in l)
print("running:", cmd, flush=True)
r = subprocess.run(cmd + " --workloads cpu_b3_v1000_float32", shell=True, cwd=wd)
if r.returncode != 0:
    sys.exit("evaluate command from AGENTS.md failed")
k = wd / "kernel.py"
k.write_text(re.sub(r"BLOCK_SIZE=256,", "BLOCK_SIZE=1024,", k.read_text(), count=1))
(wd / "SUBMIT.md").write_text("BLOCK_SIZE 256 -> 1024: fewer, larger programs\n\nmore detail\n")
'''

GIVING_UP_AGENT = r'''
import sys
from pathlib import Path
(Path(sys.argv[1]) / "GIVEUP.md").write_text("# no idea beats the current best\n")
'''

# Starts a grandchild that would outlive a naive kill, records its pid, then hangs.
HANGING_AGENT = r'''
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
(Path(sys.argv[1]).parent / "grandchild.pid").write_text(str(child.pid))
time.sleep(120)
'''


def run_agent(tmp_path: Path, script: str, timeout_s: float = 120.0, lineage: Path | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    agent = tmp_path / "agent.py"
    agent.write_text(script)
    spec = SimpleNamespace(kind="external", name="ext", command=f"{sys.executable} {agent} {{workdir}}",
                           timeout_s=timeout_s)
    view = LineageView(task="grammar_bitmask", island=1,
                       best=VersionView(commit="feedc0ffee12", source=SEED, note="seed"),
                       directions=["try larger blocks"])
    ctx = StepContext(seed=0, workdir=tmp_path / "step", lineage_root=lineage)
    return ExternalOperator(spec, device="interpret").propose(view, ctx), ctx


def test_agent_follows_agents_md_and_submits(tmp_path):
    out, ctx = run_agent(tmp_path, SUBMITTING_AGENT)
    log = (ctx.workdir / "external.log").read_text()
    assert isinstance(out, Proposal), f"{out}\n{log}"
    assert out.note == "BLOCK_SIZE 256 -> 1024: fewer, larger programs"
    assert out.parent == "feedc0ffee12" and out.operator == "ext"
    assert "CONFIG = dict(BLOCK_SIZE=1024," in out.source
    assert out.transcript == str(ctx.workdir / "external.log")
    assert "PASSED" in log and "[avo] exit 0" in log  # the agent really ran the evaluator
    wd = ctx.workdir / "agent"
    agents = (wd / "AGENTS.md").read_text()
    assert "--device interpret" in agents and "SUBMIT.md" in agents and "GIVEUP.md" in agents
    assert "try larger blocks" in (wd / "CONTEXT.md").read_text()
    import git
    repo = git.Repo(wd)
    assert "parent feedc0ffee" in repo.head.commit.message
    assert "+CONFIG = dict(BLOCK_SIZE=1024" in repo.git.diff()  # the agent can diff against the parent


def test_agent_gives_up(tmp_path):
    out, _ = run_agent(tmp_path, GIVING_UP_AGENT)
    assert isinstance(out, GiveUp) and out.reason == "agent gave up: no idea beats the current best"


def test_timeout_kills_the_whole_agent_process_group(tmp_path):
    t0 = time.monotonic()
    out, ctx = run_agent(tmp_path, HANGING_AGENT, timeout_s=3)
    assert time.monotonic() - t0 < 20
    assert isinstance(out, GiveUp) and "timed out after 3s" in out.reason
    pid = int((ctx.workdir / "grandchild.pid").read_text())
    time.sleep(0.2)
    alive = True
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is dead
    except ProcessLookupError:
        alive = False
    assert not alive, "the agent's child process survived the timeout"
    assert "(killed: timeout)" in (ctx.workdir / "external.log").read_text()


def test_exit_without_verdict_or_change_is_a_give_up(tmp_path):
    out, _ = run_agent(tmp_path, "import sys; sys.exit(3)")
    assert isinstance(out, GiveUp) and "exited (code 3) without SUBMIT.md or GIVEUP.md" in out.reason
    unchanged = "import sys; from pathlib import Path; (Path(sys.argv[1]) / 'SUBMIT.md').write_text('did nothing')"
    out, _ = run_agent(tmp_path / "b", unchanged)
    assert isinstance(out, GiveUp) and "unchanged" in out.reason
