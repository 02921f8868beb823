"""`avo evolve --backend ray` on a local Ray cluster (2 CPUs, 2 interpreter-evaluator slots),
shared by the module: heuristic islands give a lineage of the same kind as the local backend's;
an agentic island (real SDK client, scripted LLM server) commits through the gate and reads the
lineage through a git mirror; operator, evaluator and store actors killed with `ray.kill`
mid-run are restarted and the run finishes with its invariants; a driver killed with SIGKILL
is resumed by the same command; a bad address or a missing `ray` is one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")  # a declared dependency: missing only in a broken environment

from avo.config import load_config
from avo.ray.actors import NAMESPACE
from avo.ui.run import evolve_local, evolve_ray
from avo.lineage import Lineage
from avo.operators.heuristic import HeuristicOperator
from avo.tasks import REPO_ROOT
from fake_llm_server import FakeLLMServer, Turn, call

pytestmark = pytest.mark.timeout(600)
TESTS = Path(__file__).resolve().parent
SMALL_WL = "cpu_b3_v1000_float32"


@pytest.fixture(scope="module")
def cluster():
    """One Ray instance for the module: 2 CPUs (one per operator actor) and 2 evaluator slots.
    Workers get tests/ on their path so the test operators below unpickle there."""
    import logging
    ray.init(num_cpus=2, resources={"avo_evaluator": 2}, include_dashboard=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS), "AVO_TEST_AGENT_KEY": "sk-test-ray"}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write_cfg(tmp_path: Path, name: str, attempts: int, islands: int = 2, extra: str = "", usd: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""run: {name}
lineage_dir: {tmp_path / name}
tasks: [grammar_bitmask]
workloads: {{grammar_bitmask: [{SMALL_WL}]}}
islands_per_task: {islands}
budget: {{attempts: {attempts}, wall_minutes: 8{usd}}}
gate: {{min_gain: 0.05, rounds: 2}}
supervisor: {{stagnation_k: 3}}
device: interpret
{extra}""")
    return p


def check_invariants(lineage: Path, n_attempts: int) -> list[dict]:
    """The lineage's promises: ids a00001.. without gap or repeat, one commit per accepted
    attempt and no other, a seed at the bottom of every island, `git fsck` clean."""
    rows = [json.loads(x) for x in (lineage / "attempts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"a{i:05d}" for i in range(1, n_attempts + 1)], [r["id"] for r in rows]
    with Lineage.open(lineage) as lin:
        versions = [v for v in lin.versions() if v.meta.kind == "version"]
        by_attempt = [v.meta.attempt for v in versions]
        assert len(by_attempt) == len(set(by_attempt)), "an attempt was committed twice"
        assert {r["id"]: r["commit"] for r in rows if r["accepted"]} == {v.meta.attempt: v.sha for v in versions}
        # every step (ticket) is recorded once; a re-logged commit carries its ticket in meta.json
        tickets = [r.get("ticket") or getattr(lin.version(r["commit"]).meta, "ticket", None) for r in rows]
        assert all(tickets) and len(tickets) == len(set(tickets)), "a step was recorded twice"
        for task, island in lin.branches():
            chain = lin.versions(task, island)
            assert chain[0].meta.kind == "seed"
            for prev, v in zip(chain, chain[1:]):  # each commit beat the head it extends, in the gate
                assert v.meta.gate.against == prev.sha and v.meta.gate.gain > v.meta.gate.threshold
    r = subprocess.run(["git", "-C", str(lineage), "fsck", "--strict"], capture_output=True, text=True)
    assert r.returncode == 0 and "error" not in r.stdout + r.stderr, r.stderr
    assert not list((lineage / ".git").rglob("*.lock"))
    return rows


class SlowHeuristic:
    """The heuristic operator taking its time, like an LLM: it notes (pid, island) when a step
    starts, so a test can kill its actor inside a step and see the step redone elsewhere."""

    def __init__(self, marks: Path, think_s: float):
        self.name, self.marks, self.think_s = "heuristic", str(marks), think_s
        self.inner = HeuristicOperator()

    def propose(self, view, ctx):
        with open(self.marks, "a") as f:
            f.write(f"{os.getpid()} {view.island}\n")
        time.sleep(self.think_s)
        return self.inner.propose(view, ctx)


def test_heuristic_islands_give_the_local_lineage_format(cluster, tmp_path, capsys):
    cfg = load_config(write_cfg(tmp_path, "rayfmt", attempts=8, extra="ray: {evaluators: 1}\n"))
    runs: list = []
    assert evolve_ray(cfg, live=False, run_out=runs) == 0
    out = capsys.readouterr().out
    assert "1 evaluator actors (interpreter), 2 operator actors" in out and "report -> " in out, out
    assert "budget reached: 8 attempts of 8" in out
    rows = check_invariants(tmp_path / "rayfmt", 8)
    assert {r["island"] for r in rows} == {0, 1} and all(r["ticket"].startswith(f"t{runs[0].session}-") for r in rows)
    assert any(r["accepted"] for r in rows), "the recipe's wide blocks beat the seed in the interpreter"
    ss = runs[0].session_stats
    assert ss.attempts == 8 and 0.0 < ss.busy_fraction <= 1.0 and len(ss.queue_waits_s) >= 1
    # the same config on the local backend: the same files, keys, branches and statuses
    local = load_config(write_cfg(tmp_path, "localfmt", attempts=4))
    assert evolve_local(local, live=False) == 0
    lrows = [json.loads(x) for x in (tmp_path / "localfmt" / "attempts.jsonl").read_text().splitlines()]
    evaluated = lambda rs: {k for r in rs if r["status"] in ("PASSED", "REJECTED") for k in r} - {"ticket"}
    assert evaluated(lrows) <= evaluated(rows), evaluated(lrows) ^ evaluated(rows)
    with Lineage.open(tmp_path / "rayfmt") as a, Lineage.open(tmp_path / "localfmt") as b:
        assert a.branches() == b.branches()
        va = [v for v in a.versions() if v.meta.kind == "version"][0]
        vb = [v for v in b.versions() if v.meta.kind == "version"][0]
        assert set(json.loads(va.meta.model_dump_json())) - {"ticket"} == set(json.loads(vb.meta.model_dump_json()))
        assert [t.solution for t in va.traces] == [f"grammar_bitmask-{va.meta.attempt}"]  # named as local names it
        parent = subprocess.run(["git", "-C", str(a.path), "rev-parse", f"{va.sha}^"], capture_output=True, text=True)
        assert va.meta.gate.against == parent.stdout.strip()  # gated against the island head it extends
        # both backends end with the final measurement, and the best is the one it measured fastest
        for lin in (a, b):
            m = lin.measurement("grammar_bitmask")
            assert m is not None and lin.best("grammar_bitmask").sha == m.best
    assert "re-measured against" in " ".join(out.split())
    for f in ("report.html", "progress.png"):
        assert (tmp_path / "rayfmt" / "report" / f).stat().st_size > 1000
    r = subprocess.run([sys.executable, "-m", "avo.cli", "lineage", "log", str(tmp_path / "rayfmt"), "--attempts"],
                       capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 0 and "a00008" in r.stdout, r.stderr


class Ladder:
    """Proposes BLOCK_SIZE 1024, then 2048, both edits of the seed: the second is proposed (and
    queued against the seed) while the first is evaluated and committed."""

    def __init__(self):
        self.name, self.calls = "heuristic", 0

    def propose(self, view, ctx):
        from avo.operators.base import GiveUp, Proposal
        self.calls += 1
        size = {1: 1024, 2: 2048}.get(self.calls)
        if size is None or "BLOCK_SIZE=256," not in view.best.source:
            return GiveUp(operator=self.name, reason="ladder done")
        return Proposal(source=view.best.source.replace("BLOCK_SIZE=256,", f"BLOCK_SIZE={size},"),
                        parent=view.best.commit, operator=self.name, note=f"BLOCK_SIZE 256->{size}")


def test_a_proposal_queued_against_a_moved_head_is_gated_again(cluster, tmp_path):
    cfg = load_config(write_cfg(tmp_path, "rayregate", attempts=2, islands=1, extra="ray: {evaluators: 1}\n"))
    runs: list = []
    assert evolve_ray(cfg, live=False, operators={"heuristic": Ladder()}, run_out=runs) == 0
    rows = check_invariants(tmp_path / "rayregate", 2)
    assert rows[0]["accepted"] and rows[0]["note"] == "BLOCK_SIZE 256->1024", rows[0]
    assert rows[1]["note"] == "BLOCK_SIZE 256->2048" and rows[1]["status"] in ("PASSED", "REJECTED")
    assert rows[1]["gate"]["against"] == rows[0]["commit"], "measured against the head it would extend"
    assert runs[0].session_stats.regates >= 1


def test_agentic_island_commits_and_reads_the_lineage_mirror(cluster, tmp_path):
    """A scripted agent on an operator actor: reads the lineage through its git mirror (the
    store ships a bundle), runs a shell command (on the evaluator actor, on a copy of its folder
    that comes back), edits, evaluates on an evaluator actor, submits; the gate commits it and
    its transcript lands in the lineage's work/ folder."""
    script = [Turn(calls=[call("lineage_log")]),
              Turn(calls=[call("shell", command="echo made > shell_note.txt; pwd; echo key=$AVO_TEST_AGENT_KEY"),
                          call("list_files")]),
              Turn(calls=[call("edit", path="kernel.py", search="BLOCK_SIZE=256,", replace="BLOCK_SIZE=2048,")]),
              Turn(calls=[call("evaluate")]),
              Turn(calls=[call("submit", note="one program per row: BLOCK_SIZE 2048")]),
              Turn(calls=[call("submit", note="one program per row: BLOCK_SIZE 2048")])]
    with FakeLLMServer(script) as srv:
        cfg = load_config(write_cfg(tmp_path, "rayagent", attempts=1, islands=1, usd=", llm_usd: 1.0", extra=f"""operators:
  - {{kind: agentic, name: claude, provider: openai, model: fake-model, base_url: "{srv.openai_url}",
     api_key_env: AVO_TEST_AGENT_KEY, max_steps: 8}}
ray: {{evaluators: 1, mirror_lineage: always}}
"""))
        assert evolve_ray(cfg, live=False) == 0
    assert srv.remaining == 0
    msgs = srv.requests[1].body["messages"]  # what the agent got back from lineage_log
    log_result = json.dumps(msgs[max(i for i, m in enumerate(msgs) if m["role"] == "assistant") + 1:])
    assert "grammar_bitmask/island-0" in log_result and "seed" in log_result, log_result[:800]
    msgs = srv.requests[2].body["messages"]  # the shell's result, then list_files after it
    shell_result = json.dumps(msgs[max(i for i, m in enumerate(msgs) if m["role"] == "assistant") + 1:])
    assert "evaluator-0-shell" in shell_result and "[exit 0 after" in shell_result, shell_result[:800]
    assert "key=\\n" in shell_result and "sk-test-ray" not in shell_result  # no key in its environment
    assert "shell_note.txt" in shell_result  # the file it wrote came back to the operator's workspace
    from avo.ray.actors import scratch_root
    assert (scratch_root("rayagent") / "grammar_bitmask_island-0" / "lineage" / ".git").is_dir()
    rows = check_invariants(tmp_path / "rayagent", 1)
    with Lineage.open(tmp_path / "rayagent") as lin:
        head = lin.head("grammar_bitmask", 0)
    assert rows[0]["accepted"] and head.meta.operator == "claude" and "BLOCK_SIZE=2048," in head.source
    assert head.meta.note == "one program per row: BLOCK_SIZE 2048" and head.meta.cost_usd > 0
    tr = Path(head.meta.transcript)
    assert tr == tmp_path / "rayagent" / "work" / "a00001" / "transcript.jsonl" and tr.exists()
    assert rows[0]["eval_s"] > 0 and rows[0]["transcript"] == str(tr)


def test_killed_actors_are_restarted_and_nothing_is_lost(cluster, tmp_path, capsys, monkeypatch):
    """The store dies once between its first commit and that attempt's log line (fault point),
    then an operator actor inside a step, an evaluator actor and the store are killed."""
    marks, fault = tmp_path / "steps.txt", tmp_path / "fault.marker"
    monkeypatch.setenv("AVO_FAULT", f"after-commit:{fault}")
    cfg = load_config(write_cfg(tmp_path, "raykill", attempts=12, extra="ray: {evaluators: 2}\n"))
    op = SlowHeuristic(marks, think_s=1.0)
    runs: list = []
    kills: list[str] = []

    def logged() -> int:
        p = tmp_path / "raykill" / "attempts.jsonl"
        return len(p.read_text().splitlines()) if p.exists() else 0

    def killer():
        def wait(pred, what):
            t0 = time.monotonic()
            while not pred():
                assert time.monotonic() - t0 < 240, f"timed out waiting for {what}"
                time.sleep(0.05)
        wait(lambda: runs and logged() >= 2, "two attempts")
        name = lambda what: f"avo-raykill-{runs[0].session}-{what}"
        n = len(marks.read_text().splitlines())
        wait(lambda: len(marks.read_text().splitlines()) > n, "an operator step to start")
        island = marks.read_text().splitlines()[-1].split()[1]  # kill the operator inside its step
        ray.kill(ray.get_actor(name(f"op-grammar_bitmask-island-{island}"), namespace=NAMESPACE), no_restart=False)
        kills.append(f"op{island}")
        wait(lambda: logged() >= 5, "five attempts")
        ray.kill(ray.get_actor(name("eval-0"), namespace=NAMESPACE), no_restart=False)
        kills.append("eval")
        wait(lambda: logged() >= 8, "eight attempts")
        ray.kill(ray.get_actor(name("store"), namespace=NAMESPACE), no_restart=False)
        kills.append("store")

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    assert evolve_ray(cfg, live=False, operators={"heuristic": op}, run_out=runs) == 0
    th.join(timeout=5)
    out = capsys.readouterr().out
    assert kills == [kills[0], "eval", "store"], kills
    rows = check_invariants(tmp_path / "raykill", 12)
    assert fault.exists() and any(r.get("recovered") for r in rows), "the commit whose log line was lost is re-logged"
    pids = {}
    for line in marks.read_text().splitlines():
        pid, island = line.split()
        pids.setdefault(island, set()).add(pid)
    assert len(pids[kills[0][2:]]) >= 2, "the killed operator's island went on in a restarted actor"
    assert runs[0].session_stats.evaluator_restarts >= 1
    assert "resuming" in out, "the restarted store reopened the lineage"


def test_killed_driver_resumes_with_the_same_command(cluster, tmp_path):
    cfg = write_cfg(tmp_path, "raydriver", attempts=10, extra="ray: {evaluators: 1}\n")
    lineage = tmp_path / "raydriver"
    cmd = [sys.executable, "-m", "avo.cli", "evolve", "--config", str(cfg), "--no-live", "--backend", "ray",
           "--address", cluster]
    logged = lambda: len((lineage / "attempts.jsonl").read_text().splitlines()) if (lineage / "attempts.jsonl").exists() else 0
    with open(tmp_path / "1.log", "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        t0 = time.monotonic()
        while logged() < 3 and p.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert 3 <= logged() < 10, (tmp_path / "1.log").read_text()[-2000:]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "resuming" in r.stdout and "evaluating the seed" not in r.stdout and "10 attempts of 10" in r.stdout
    check_invariants(lineage, 10)


def test_cluster_errors_are_one_line(cluster, tmp_path, capsys):
    cfg = write_cfg(tmp_path, "rayerr", attempts=2, islands=3)
    assert evolve_ray(load_config(cfg), live=False) == 2  # 3 operator actors x 1 CPU on a 2-CPU cluster
    err = capsys.readouterr().err
    assert "the cluster has 2 CPUs" in err and "ray.operator_cpus" in err and "Traceback" not in err
    base = [sys.executable, "-m", "avo.cli", "evolve", "--config", str(cfg), "--no-live", "--backend", "ray"]
    r = subprocess.run(base + ["--address", "127.0.0.1:9"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    noray = tmp_path / "noray" / "ray"  # a path on which `import ray` fails, as where ray is not installed
    noray.mkdir(parents=True)
    (noray / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    r = subprocess.run(base, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(noray.parent)})
    assert r.returncode == 2 and "needs the `ray` package" in r.stderr and "Traceback" not in r.stderr, r.stderr
