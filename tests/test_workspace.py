"""The workspace protocol (avo/evolve/workspace.py, `avo workspace open|submit`): a step folder
opened by hand on a seeded run, worked on as AGENTS.md says, and submitted through the same
step the evolve loop runs (evaluation, commit gate, attempt record, commit)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avo.cli import app
from avo.config import BudgetConfig, GateConfig, HeuristicSpec, RunConfig
from avo.evolve import attempt
from avo.evolve.state import RunState
from avo.harness.runner import Evaluator
from avo.lineage import Lineage

SMALL_WL = "cpu_b3_v1000_float32"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run whose two islands hold their seed, as `avo evolve` leaves it."""
    path = tmp_path_factory.mktemp("ws") / "lineage"
    cfg = RunConfig(run="ws-run", lineage_dir=path, tasks=["grammar_bitmask"], workloads={"grammar_bitmask": [SMALL_WL]},
                    operators=[HeuristicSpec()], islands_per_task=2, budget=BudgetConfig(wall_minutes=None, attempts=4),
                    gate=GateConfig(min_gain=0.05, rounds=2), device="interpret")
    state = RunState(cfg, "interpret")
    try:
        with Evaluator(cfg.eval_config()) as ev:
            state.open_lineage()
            attempt.seed_islands(state, ev)
    finally:
        state.close()
    return path


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_open_work_submit_commits_through_the_gate(run):
    r = cli("workspace", "open", str(run), "--island", "1", "--agent", "by-hand")
    assert r.exit_code == 0, r.output
    folder = Path(r.output.strip())
    assert folder.name == "agent" and folder.parent.parent == run / "work"
    agents = (folder / "AGENTS.md").read_text()
    assert f"avo workspace submit {run} {folder}" in agents and "avo eval grammar_bitmask kernel.py --device interpret" in agents
    assert "NOTES.md" in agents and "Lineage view: grammar_bitmask, island 1" in (folder / "CONTEXT.md").read_text()
    meta = json.loads((folder.parent / "workspace.json").read_text())
    assert meta["label"] == "grammar_bitmask/island-1" and meta["agent"] == "by-hand" and meta["submitted"] is None
    import git
    assert "parent " + meta["parent"][:10] in git.Repo(folder).head.commit.message
    # The index matches the files as git itself sees them (no refresh first): `git apply --3way` of
    # an agent's patch refused "kernel.py: does not match index" on the H100 before.
    assert subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=folder).returncode == 0

    k = folder / "kernel.py"
    k.write_text(k.read_text().replace("BLOCK_SIZE=256,", "BLOCK_SIZE=2048,", 1))
    r = cli("workspace", "submit", str(run), str(folder))  # no SUBMIT.md yet: refused, nothing recorded
    assert r.exit_code == 2 and "neither SUBMIT.md" in r.output
    (folder / "SUBMIT.md").write_text("one program per row: BLOCK_SIZE 2048\n")
    (folder / "NOTES.md").write_text("checked with avo eval: PASSED\n")
    r = cli("workspace", "submit", str(run), str(folder))
    assert r.exit_code == 0, r.output
    assert "ACCEPTED" in r.output and "commit" in r.output

    with Lineage.open(run) as lin:
        (rec,) = lin.attempts()
        head = lin.head("grammar_bitmask", 1)
        seed0 = lin.head("grammar_bitmask", 0)
    assert rec.operator == "by-hand" and rec.accepted and rec.commit == head.sha and rec.parent == meta["parent"]
    assert head.meta.note == "one program per row: BLOCK_SIZE 2048" and head.meta.operator == "by-hand"
    assert "BLOCK_SIZE=2048," in head.source and seed0.meta.kind == "seed"  # only island 1 moved
    log = Path(rec.transcript).read_text()
    assert rec.transcript == str(folder.parent / "workspace.log") == head.meta.transcript
    assert "workspace opened for by-hand" in log and "[avo] NOTES.md:\nchecked with avo eval: PASSED" in log
    assert f"{rec.id}: {rec.status}, commit {rec.commit[:10]}" in log  # the verdict, in the step's own transcript

    r = cli("workspace", "submit", str(run), str(folder.parent))  # the step folder names it too
    assert r.exit_code == 2 and f"already submitted (attempt {rec.id})" in r.output


def test_a_give_up_is_recorded_and_a_wrong_island_refused(run):
    r = cli("workspace", "open", str(run), "--island", "7")
    assert r.exit_code == 2 and "no island 7" in r.output
    r = cli("workspace", "open", str(run))  # island 0, recorded as "workspace"
    folder = Path(r.output.strip())
    (folder / "GIVEUP.md").write_text("# nothing beats the seed here\n")
    r = cli("workspace", "submit", str(run), str(folder))
    assert r.exit_code == 1 and "GAVE_UP" in r.output
    with Lineage.open(run) as lin:
        rec = lin.attempts()[-1]
    assert rec.operator == "workspace" and rec.status == "GAVE_UP" and rec.note == "workspace gave up: nothing beats the seed here"
    r = cli("workspace", "submit", str(run), str(run))
    assert r.exit_code == 2 and "not a workspace" in r.output


def _submit_one(run: Path, block: int):
    r = cli("workspace", "open", str(run), "--island", "0", "--agent", "served")
    assert r.exit_code == 0, r.output
    folder = Path(r.output.strip())
    k = folder / "kernel.py"
    import re
    k.write_text(re.sub(r"BLOCK_SIZE=\d+,", f"BLOCK_SIZE={block},", k.read_text(), count=1))
    (folder / "SUBMIT.md").write_text(f"BLOCK_SIZE {block}\n")
    r = cli("workspace", "submit", str(run), str(folder))
    with Lineage.open(run) as lin:
        rec = lin.attempts()[-1]
    assert rec.note.startswith(f"BLOCK_SIZE {block}") and rec.status in ("PASSED", "REJECTED"), r.output
    return r, rec


def test_a_served_evaluator_judges_submits_and_evals_without_starting_workers(run, tmp_path):
    """`avo workspace serve RUN` (a real server process on its Unix socket): submits and `avo eval`
    with AVO_EVALUATOR go to its evaluator, whose workers are up already (no `spawn` in the
    attempt's phases); a request for another device gets a one-line refusal; a socket left by a
    server that is gone makes a submit evaluate by itself, with a note."""
    import os
    import socket
    import sys
    import time
    from avo.harness.served import ADDRESS_ENV, KEY_FILE, address_for
    from avo.tasks import REPO_ROOT
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "avo.cli", "workspace", "serve", str(run)], cwd=REPO_ROOT,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "300"})
    address = address_for(run)
    try:
        for _ in range(600):
            if "evaluator served at" in log.read_text() or server.poll() is not None:
                break
            time.sleep(0.1)
        assert f"evaluator served at {address}" in log.read_text(), log.read_text()
        assert oct(address.parent.stat().st_mode & 0o777) == "0o700"
        assert oct((address.parent / KEY_FILE).stat().st_mode & 0o777) == "0o600"
        for block in (512, 1024):
            r, rec = _submit_one(run, block)
            assert "evaluating here instead" not in r.output
        assert "spawn" not in rec.eval_phases, rec.eval_phases  # the second: the served workers were up
        served = log.read_text()
        assert served.count("evaluate grammar_bitmask: ok") == 2 and "ab grammar_bitmask: ok" in served  # the gate's A/B went there too
        env = {**os.environ, ADDRESS_ENV: str(address)}
        silent = socket.socket(socket.AF_UNIX)  # connects and never answers the handshake: dropped after
        silent.connect(str(address))            # HANDSHAKE_S, so the `avo eval` behind it still gets its turn
        e = subprocess.run([sys.executable, "-m", "avo.cli", "eval", "grammar_bitmask", "kernels/grammar/bitmask_seed.py",
                            "--device", "interpret", "--workloads", SMALL_WL], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert e.returncode == 0 and "PASSED" in e.stdout, e.stdout + e.stderr
        assert log.read_text().count("evaluate grammar_bitmask: ok") == 3
        assert "refused a connection: no handshake within" in log.read_text()
        silent.close()
        e = subprocess.run([sys.executable, "-m", "avo.cli", "eval", "grammar_bitmask", "kernels/grammar/bitmask_seed.py",
                            "--device", "cuda"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert e.returncode == 1 and "served for device interpret" in e.stderr, e.stdout + e.stderr
        # Anyone holding the key (the candidate worker can read it) gets JSON answers only: a pickle
        # is not read, and a task is only ever the server's own (a client's reference would run
        # unsandboxed in the reference worker), so a changed copy is refused.
        from multiprocessing.connection import Client
        key = (address.parent / KEY_FILE).read_bytes()
        with Client(str(address), family="AF_UNIX", authkey=key) as c:
            c.send(("evaluate", ("os.system",)))  # a pickle: the session ends, nothing unpickled
            with pytest.raises((EOFError, OSError)):
                c.recv_bytes()
        from avo.harness.served import task_digest
        from avo.tasks import load_task
        mine = load_task("grammar_bitmask")
        mine.definition.reference = "import os\nos.system('touch /tmp/pwned')\n" + mine.definition.reference
        with Client(str(address), family="AF_UNIX", authkey=key) as c:
            c.send_bytes(json.dumps({"method": "evaluate", "task": "grammar_bitmask", "digest": task_digest(mine),
                                     "solutions": [], "config": {"device": "interpret"}}).encode())
            assert "is not served here as the client loaded it" in json.loads(c.recv_bytes())["not_served"]
        e = subprocess.run([sys.executable, "-m", "avo.cli", "eval", "layout_transpose2d", "kernels/layout/transpose2d_seed.py",
                            "--device", "interpret"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert e.returncode == 0 and "evaluating here instead" in e.stdout, e.stdout + e.stderr  # not the run's task
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
    assert not address.exists() and not (address.parent / KEY_FILE).exists()  # cleaned up on SIGTERM
    # A socket file nobody listens on (a killed server's): the submit evaluates by itself and says so.
    address.parent.mkdir(mode=0o700, exist_ok=True)
    (address.parent / KEY_FILE).write_bytes(b"k" * 32)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(address))
    s.close()
    try:
        r, rec = _submit_one(run, 4096)
        assert "no evaluator answers at" in r.output and "evaluating here instead" in r.output
        assert "spawn" in rec.eval_phases  # its own workers started: what the served ones save
        # a socket folder others can enter (another user's, in a shared /tmp) is never used
        from avo.config import EvalConfig
        from avo.harness.served import ServedEvaluator
        from avo.harness.workerproc import HarnessError
        address.parent.chmod(0o755)
        with pytest.raises(HarnessError, match="is not private to this user"):
            ServedEvaluator(address, EvalConfig(device="interpret"))
    finally:
        address.unlink(missing_ok=True)
        (address.parent / KEY_FILE).unlink(missing_ok=True)


def test_submit_rebase_merges_the_change_onto_the_moved_best(run):
    """A workspace opened before the island best moved: `--rebase` merges the agent's change onto
    the best as it is now (the evaluated kernel has both), records the new best as its parent and
    keeps the agent's file; a change that conflicts with the move is refused in one line."""
    import re
    from avo.tasks import source_hash
    opened = []
    for _ in range(2):
        r = cli("workspace", "open", str(run), "--island", "1", "--agent", "rebased")
        assert r.exit_code == 0, r.output
        opened.append(Path(r.output.strip()))
    with Lineage.open(run) as lin:  # the best moves on (as another workspace's accepted attempt would)
        h = lin.head("grammar_bitmask", 1)
        moved = h.source + "\n# the island best moved on\n"
        meta = h.meta.model_copy(update={"source_hash": source_hash(moved), "attempt": None, "note": "moved"})
        moved_sha = lin.commit_version(meta, moved, "".join(t.model_dump_json() + "\n" for t in h.traces), "moved")
    ok, clash = opened
    k = ok / "kernel.py"
    block = int(re.search(r"BLOCK_SIZE=(\d+),", k.read_text()).group(1))
    k.write_text(k.read_text().replace(f"BLOCK_SIZE={block},", f"BLOCK_SIZE={block * 2},", 1))
    (ok / "SUBMIT.md").write_text("BLOCK_SIZE x2 on top of the moved best\n")
    r = cli("workspace", "submit", str(run), str(ok), "--rebase")
    assert r.exit_code in (0, 1), r.output
    with Lineage.open(run) as lin:
        rec = lin.attempts()[-1]
    assert rec.note.startswith("BLOCK_SIZE x2") and rec.status in ("PASSED", "REJECTED"), r.output
    assert rec.parent == moved_sha
    merged = k.read_text()
    assert f"BLOCK_SIZE={block * 2}," in merged and merged.endswith("# the island best moved on\n")
    assert "moved on" not in (ok / "kernel.py.agent").read_text()
    assert f"merged onto the island best {moved_sha[:10]}" in (ok.parent / "workspace.log").read_text()
    # the other workspace edits the very line the move touched: no silent merge
    c = clash / "kernel.py"
    c.write_text(c.read_text() + "\n# my own last line\n")
    (clash / "SUBMIT.md").write_text("a last line\n")
    r = cli("workspace", "submit", str(run), str(clash), "--rebase")
    assert r.exit_code == 2 and "does not merge onto the island best" in r.output and "1 conflicting hunk(s)" in r.output
