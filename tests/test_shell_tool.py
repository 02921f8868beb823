"""The agent's shell (avo/operators/shell.py, the `shell` tool): its limits (time, output, the
environment, the sandbox), the tool's cap from the config, the local loop's and the Ray
evaluator actor's way of running it, and one agentic step that uses it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from avo.harness import sandbox
from avo.operators.base import LineageView, StepContext, VersionView
from avo.operators.shell import members, pack, run_shell, run_shipped, shell_in_copy
from avo.operators.tools import ToolEnv, run_tool, tools_for
from avo.operators.llm import ToolCall
from avo.tasks import REPO_ROOT

SEED = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
KEY = "sk-avo-shell-secret-0d9e"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_timeout_kills_the_whole_process_group(tmp_path):
    t0 = time.monotonic()
    res = run_shell("sleep 60 & echo $! > bg.pid; echo started; sleep 60", tmp_path, timeout_s=1.0)
    assert time.monotonic() - t0 < 10
    assert res.timed_out and res.exit_code is None and "started" in res.output
    assert "[killed: timeout after" in res.text()
    time.sleep(0.2)
    assert not alive(int((tmp_path / "bg.pid").read_text())), "a background child survived the timeout"


def test_background_processes_end_with_the_command(tmp_path):
    res = run_shell("sleep 60 & echo $! > bg.pid; exit 7", tmp_path, timeout_s=10)
    assert res.exit_code == 7 and not res.timed_out and res.text().endswith("[exit 7 after %.1fs]" % res.seconds)
    time.sleep(0.2)
    assert not alive(int((tmp_path / "bg.pid").read_text()))


def test_output_is_merged_and_capped_head_and_tail(tmp_path):
    res = run_shell("echo to-stderr >&2; seq 1 20000; echo LAST", tmp_path, timeout_s=20, cap=600)
    assert res.exit_code == 0 and res.total_chars > 100_000
    assert res.output.startswith("to-stderr\n1\n2\n") and res.output.rstrip().endswith("LAST")
    assert "bytes of output elided ...]" in res.output and len(res.output) < 700


def test_environment_is_scrubbed_and_runs_in_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_SHELL_TEST_API_KEY", KEY)
    monkeypatch.setenv("AVO_SHELL_TEST_PLAIN", "visible")
    res = run_shell("env; pwd; command -v python", tmp_path, timeout_s=20)
    assert KEY not in res.output and "AVO_SHELL_TEST_PLAIN=visible" in res.output
    assert str(tmp_path) in res.output
    assert f"{Path(os.sys.executable).parent}/python" in res.output  # the venv's bin first on PATH


@pytest.mark.skipif(sandbox.landlock_abi()[0] == 0 or sandbox.disabled() is not None,
                    reason="needs Landlock (the candidate sandbox's fs layer)")
def test_commands_run_in_the_candidate_sandbox(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "ws"
    res = run_shell(f"touch inside && touch {outside}/x; echo rc=$?; "
                    "python -c 'import socket; socket.socket(socket.AF_INET).connect((\"127.0.0.1\", 9))' 2>&1 | tail -1",
                    folder, timeout_s=20)
    assert res.sandboxed and (folder / "inside").exists() and not (outside / "x").exists()
    assert "rc=1" in res.output and "Permission denied" in res.output  # no write outside the folder
    assert "PermissionError" in res.output  # no internet socket


def env_for(tmp_path: Path, run_shell_fn=None, limit=2.0) -> ToolEnv:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "kernel.py").write_text(SEED)
    view = LineageView(task="grammar_bitmask", island=0, best=VersionView(commit="c0ffee", source=SEED))
    ctx = StepContext(seed=0, workdir=tmp_path, run_shell=run_shell_fn)
    return ToolEnv(workspace=ws, view=view, ctx=ctx, parent_source=SEED, shell_timeout_s=limit)


def local(cmd, folder, timeout_s):
    return run_shell(cmd, folder, timeout_s, "interpret")


def test_the_tool_caps_the_time_the_model_asks_for(tmp_path):
    env = env_for(tmp_path, local, limit=1.0)
    assert "shell" in [t.name for t in tools_for(env)]
    t0 = time.monotonic()
    text, err = run_tool(env, tools_for(env), ToolCall(id="1", name="shell", arguments={"command": "sleep 30",
                                                                                     "timeout_s": 600}))
    assert not err and "[killed: timeout after 1." in text and time.monotonic() - t0 < 10
    text, err = run_tool(env, tools_for(env), ToolCall(id="2", name="shell", arguments={"command": "grep -c 'def run' kernel.py"}))
    assert not err and text.startswith("1\n") and "[exit 0 after" in text
    text, err = run_tool(env, tools_for(env), ToolCall(id="3", name="shell", arguments={"command": "x", "cwd": "/"}))
    assert err and "bad arguments" in text


def test_no_shell_tool_without_a_runner_or_when_the_config_turns_it_off(tmp_path):
    assert "shell" not in [t.name for t in tools_for(env_for(tmp_path, None))]
    assert "shell" not in [t.name for t in tools_for(env_for(tmp_path, local, limit=None))]


def test_ray_path_runs_on_a_shipped_copy_and_brings_the_folder_back(tmp_path):
    """On Ray the evaluator actor runs the command (its `shell` method calls shell_in_copy) on a
    copy of the operator's folder; files written there come back, files removed there go."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "kernel.py").write_text("K = 1\n")
    (ws / "scratch.txt").write_text("old")
    (ws / "__pycache__").mkdir()
    (ws / "__pycache__" / "x.pyc").write_bytes(b"\0")
    calls = []

    def send(data, command, timeout_s):  # what RemoteEvaluator.shell -> EvaluatorActor.shell does
        calls.append(sorted(members(data)))
        return shell_in_copy(data, command, timeout_s, "interpret", tmp_path / "actor")

    res = run_shipped(send, "echo K = 2 > kernel.py; mkdir -p out && echo ptx > out/k.ptx; rm scratch.txt; pwd",
                      ws, 20)
    assert res.exit_code == 0 and str(ws) not in res.output  # it ran elsewhere
    assert calls == [["kernel.py", "scratch.txt"]]  # caches are not shipped
    assert (ws / "kernel.py").read_text() == "K = 2\n" and (ws / "out" / "k.ptx").read_text() == "ptx\n"
    assert not (ws / "scratch.txt").exists() and (ws / "__pycache__" / "x.pyc").exists()
    assert not any((tmp_path / "actor").iterdir())  # the actor's copy is gone
    (ws / "big.bin").write_bytes(os.urandom(1 << 16))
    with pytest.raises(ValueError, match="more than"):
        pack(ws, cap=1 << 15)


def test_the_local_loop_counts_shell_time_as_the_evaluators(tmp_path):
    from avo.evolve.state import local_shell

    class Ev:
        busy_s = 1.0
    ev = Ev()
    res = local_shell(ev, "interpret", "sleep 0.3", tmp_path, 10)
    assert res.exit_code == 0 and ev.busy_s == pytest.approx(1.0 + res.seconds) and res.seconds >= 0.3


def test_an_agentic_step_uses_the_shell(tmp_path, monkeypatch):
    from avo.operators.agentic import AgenticOperator
    from fake_llm_server import FakeLLMServer, Turn, call
    monkeypatch.setenv("AVO_TEST_AGENT_KEY", KEY)

    class Spec:
        name, provider, model, api_key_env = "agentic", "openai", "fake-model", "AVO_TEST_AGENT_KEY"
        max_steps, context_tokens, temperature, price_in_per_mtok, price_out_per_mtok = 5, 200_000, None, 3.0, 15.0
        timeout_s, max_retries, backoff_s, shell_timeout_s = 10.0, 0, 0.05, 30.0

    script = [Turn(calls=[call("shell", command="python -c 'import kernel; print(kernel.CONFIG)'; echo $AVO_TEST_AGENT_KEY")]),
              Turn(calls=[call("give_up", reason="looked around")])]
    with FakeLLMServer(script) as srv:
        Spec.base_url = srv.openai_url
        ctx = StepContext(seed=0, workdir=tmp_path / "step", run_shell=local)
        view = LineageView(task="grammar_bitmask", island=0, best=VersionView(commit="c0ffee", source=SEED))
        out = AgenticOperator(Spec(), device="interpret").propose(view, ctx)
    assert out.reason == "looked around"
    reply = next(m for m in srv.requests[1].body["messages"] if m["role"] == "tool")["content"]
    assert "BLOCK_SIZE" in reply and "[exit 0 after" in reply and KEY not in reply
    events = [json.loads(l) for l in Path(out.transcript).read_text().splitlines()]
    assert "shell" in events[0]["tools"] and any(e["event"] == "tool" and e["name"] == "shell" for e in events)
