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
from avo.tasks import REPO_ROOT, list_tasks, load_task

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


# ---- headless presets through stand-in CLIs (tests/agent_standins/claude, codex) ----
import json  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from avo.config import ExternalSpec  # noqa: E402
from avo.operators.llm import CostMeter  # noqa: E402
from fake_llm_server import FakeLLMServer, Turn  # noqa: E402

STANDINS = Path(__file__).resolve().parent / "agent_standins"
KEY = "sk-avo-external-secret-51c7"
SMALL_WL = "cpu_b3_v1000_float32"


@pytest.fixture
def standins(monkeypatch):
    """The stand-in `claude` and `codex` first on PATH; their `avo eval` on one small workload."""
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AVO_STANDIN_EVAL_ARGS", f"--workloads {SMALL_WL}")
    for var in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "AVO_STANDIN_SLEEP", "AVO_STANDIN_EDIT"):
        monkeypatch.delenv(var, raising=False)


def run_preset(tmp_path: Path, meter=None, **spec):
    op = ExternalOperator(ExternalSpec(name=spec.get("agent", "ext"), **spec), device="interpret", meter=meter)
    view = LineageView(task="grammar_bitmask", island=1, best=VersionView(commit="feedc0ffee12", source=SEED, note="seed"))
    ctx = StepContext(seed=0, workdir=tmp_path / "step")
    return op.propose(view, ctx), ctx, op


def test_claude_headless_preset_runs_avo_eval_and_charges_its_cost(tmp_path, standins, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    meter = CostMeter(limit_usd=1.0)
    with FakeLLMServer([Turn(text="plan", input_tokens=1000, output_tokens=100)]) as srv:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_url)
        out, ctx, _ = run_preset(tmp_path, meter, agent="claude", max_turns=30, model="claude-sonnet-4-5")
    log = (ctx.workdir / "external.log").read_text()
    assert isinstance(out, Proposal), f"{out}\n{log}"
    assert out.note == "BLOCK_SIZE 256 -> 1024: fewer, larger programs" and "BLOCK_SIZE=1024," in out.source
    cmd = log.splitlines()[0]
    assert cmd.startswith("$ claude -p ") and "--output-format json" in cmd and "--permission-mode acceptEdits" in cmd
    assert "'Bash(avo eval *),Bash(avo lineage *)," in cmd and "--max-turns 30" in cmd and "--max-budget-usd 1.0000" in cmd
    assert "PASSED" in (ctx.workdir / "external.stdout").read_text() or "success" in log
    report = json.loads((ctx.workdir / "external.stdout").read_text())
    assert report["type"] == "result" and report["subtype"] == "success" and report["permission_denials"] == []
    cost = (1000 * 3.0 + 100 * 15.0) / 1e6  # what the stand-in reports from the server's usage
    assert out.cost_usd == pytest.approx(cost) and out.tokens == 1100
    assert meter.spent_usd == pytest.approx(cost) and meter.tokens == 1100  # the run's budget saw it
    assert "claude: success" in log and "charged to the run's LLM budget" in log
    assert "[avo] NOTES.md:\ntried BLOCK_SIZE 1024" in log  # the agent's notes join the transcript
    assert srv.requests[0].headers.get("x-api-key") == KEY  # the agent kept its key (the evaluator never has it)


def test_claude_without_permission_for_avo_eval_gives_up_and_still_pays(tmp_path, standins):
    meter = CostMeter(limit_usd=None)
    out, ctx, _ = run_preset(tmp_path, meter, agent="claude", allowed_tools=["Read", "Edit", "Write"])
    assert isinstance(out, GiveUp) and "permission denied" in out.reason, out
    report = json.loads((ctx.workdir / "external.stdout").read_text())
    assert report["permission_denials"][0]["tool_name"] == "Bash"
    assert out.cost_usd == pytest.approx(report["total_cost_usd"]) and out.cost_usd > 0
    assert meter.spent_usd == pytest.approx(out.cost_usd)


def test_codex_exec_preset_prices_the_reported_tokens(tmp_path, standins, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    meter = CostMeter(limit_usd=5.0)
    with FakeLLMServer([Turn(text="plan", input_tokens=5000, output_tokens=300)]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_url)
        out, ctx, _ = run_preset(tmp_path, meter, agent="codex", model="gpt-5-codex",
                                 price_in_per_mtok=2.0, price_out_per_mtok=8.0)
    log = (ctx.workdir / "external.log").read_text()
    assert isinstance(out, Proposal), f"{out}\n{log}"
    cmd = log.splitlines()[0]
    assert cmd.startswith("$ codex exec --json --sandbox workspace-write --skip-git-repo-check")
    assert "--model gpt-5-codex" in cmd and cmd.endswith("GIVEUP.md).'")  # the prompt comes last
    events = [json.loads(l) for l in (ctx.workdir / "external.stdout").read_text().splitlines()]
    assert [e["type"] for e in events][:2] == ["thread.started", "turn.started"] and events[-1]["type"] == "turn.completed"
    ran = next(e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution")
    assert ran["exit_code"] == 0 and "PASSED" in ran["aggregated_output"]  # avo eval ran inside its sandbox mode
    cost = (5000 * 2.0 + 300 * 8.0) / 1e6
    assert out.cost_usd == pytest.approx(cost) and out.tokens == 5300 and meter.spent_usd == pytest.approx(cost)
    assert "codex: 1 turns, 5000 input (0 cached) + 300 output tokens" in log
    assert srv.requests[0].headers.get("authorization") == f"Bearer {KEY}"


def test_codex_read_only_sandbox_cannot_edit(tmp_path, standins):
    out, ctx, _ = run_preset(tmp_path, agent="codex", extra_args=["--sandbox", "read-only"])
    assert isinstance(out, GiveUp) and "without SUBMIT.md" in out.reason, out
    assert "read-only" in (ctx.workdir / "external.log").read_text()
    assert out.cost_usd == pytest.approx((4000 * 1.25 + 20000 * 0.125 + 1500 * 10.0) / 1e6)  # priced tokens, cached apart


def test_stand_ins_refuse_flags_their_cli_lacks(tmp_path, standins):
    for argv in (["claude", "-p", "x", "--frobnicate"], ["codex", "exec", "--frobnicate", "x"]):
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 2 and "unrecognized arguments: --frobnicate" in r.stderr, (argv, r.stderr)
    out, ctx, _ = run_preset(tmp_path / "bad", agent="claude", extra_args=["--frobnicate"])
    assert isinstance(out, GiveUp) and "exited (code 2)" in out.reason and out.cost_usd == 0
    assert "no cost reported" in (ctx.workdir / "external.log").read_text()


def test_a_spent_budget_stops_the_step_before_the_agent_runs(tmp_path, standins):
    meter = CostMeter(limit_usd=0.01)
    meter.spent_usd = 0.02
    out, ctx, _ = run_preset(tmp_path, meter, agent="claude")
    assert isinstance(out, GiveUp) and "LLM budget exhausted" in out.reason
    assert not (ctx.workdir / "external.log").exists()


def test_a_timed_out_preset_is_killed_and_reports_no_cost(tmp_path, standins, monkeypatch):
    monkeypatch.setenv("AVO_STANDIN_SLEEP", "60")
    t0 = time.monotonic()
    out, ctx, _ = run_preset(tmp_path, agent="claude", timeout_s=2)
    assert time.monotonic() - t0 < 20
    assert isinstance(out, GiveUp) and "timed out after 2s" in out.reason and out.cost_usd == 0
    assert "(killed: timeout)" in (ctx.workdir / "external.log").read_text()


def test_external_spec_presets_validate():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="needs a command"):
        ExternalSpec(agent="command")
    with pytest.raises(ValidationError, match="builds its own command line"):
        ExternalSpec(agent="claude", command="claude -p hi")
    assert ExternalSpec(agent="codex").output is None  # read by agent: codex-jsonl


def test_evolve_local_charges_a_headless_agent_to_the_run_budget(tmp_path, standins):
    """A short local run whose island is Claude Code (the stand-in): the step's reported cost
    goes into the attempt record, and the run stops when it reaches budget.llm_usd."""
    from avo.config import BudgetConfig, GateConfig, RunConfig
    from avo.lineage import Lineage
    from avo.ui.run import evolve_local
    cfg = RunConfig(run="claude-e2e", lineage_dir=tmp_path / "lineage", tasks=["grammar_bitmask"],
                    workloads={"grammar_bitmask": [SMALL_WL]}, operators=[ExternalSpec(name="cc", agent="claude")],
                    budget=BudgetConfig(wall_minutes=None, attempts=5, llm_usd=0.01),
                    gate=GateConfig(min_gain=0.05, rounds=2), device="interpret")
    assert evolve_local(cfg, live=False) == 0
    with Lineage.open(tmp_path / "lineage") as lin:
        attempts = lin.attempts()
        head = lin.head("grammar_bitmask", 0)
    (rec,) = attempts  # the stand-in's step costs $0.033: over the $0.01 budget after one attempt
    assert rec.operator == "cc" and rec.cost_usd == pytest.approx(0.03285) and rec.tokens == 25000
    assert rec.status in ("PASSED", "REJECTED") and rec.note.startswith("BLOCK_SIZE 256 -> 1024")
    assert "--max-budget-usd 0.0100" in Path(rec.transcript).read_text()
    if rec.accepted:
        assert head.meta.cost_usd == pytest.approx(0.03285) and head.meta.operator == "cc"


@pytest.mark.parametrize("name", [t.name for t in list_tasks()])
def test_task_summary_names_every_input_of_every_task(name):
    """The task lines an agent's AGENTS.md and prompt open with, for every built-in task: a scalar
    input (attention's `causal`, shape None) once made `avo workspace open` fail on the H100."""
    from avo.operators.prompting import task_summary
    text = task_summary(name)
    d = load_task(name).definition
    assert d.name in text
    for n, spec in {**d.inputs, **d.outputs}.items():
        assert f"{n} {spec.dtype}" in text
