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
