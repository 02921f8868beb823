"""Crash safety of `avo evolve`: a real `avo evolve` process killed with SIGKILL at random
moments (and once exactly between a commit and its log line), with a torn log line and stale git
locks left behind, then the same command again until the run finishes. No accepted commit lost
or duplicated, attempt ids contiguous, `git fsck` clean, the log readable; a second process on
the same run is refused; SIGINT stops cleanly with exit code 130."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avo.lineage import Lineage
from avo.lineage.durable import read_jsonl_tolerant
from avo.tasks import REPO_ROOT

pytestmark = pytest.mark.timeout(900)
BUDGET = 10


def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "resume.yaml"
    p.write_text(f"""run: resume
lineage_dir: {tmp_path / 'resume'}
tasks: [grammar_bitmask]
workloads: {{grammar_bitmask: [cpu_b3_v1000_float32]}}
islands_per_task: 2
budget: {{attempts: {BUDGET}, wall_minutes: 20}}
gate: {{min_gain: 0.05, rounds: 2}}
supervisor: {{stagnation_k: 3}}
device: interpret
""")
    return p


def start(cfg: Path, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "avo.cli", "evolve", "--config", str(cfg), "--no-live", *args],
                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **(env or {})})


def wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def logged_ids(lineage: Path) -> list[str]:
    """Attempt ids logged so far (a torn last line, as a kill can leave, is skipped)."""
    return [r["id"] for r in read_jsonl_tolerant(lineage / "attempts.jsonl")]


def check_invariants(lineage: Path, n_attempts: int) -> None:
    rows = [json.loads(x) for x in (lineage / "attempts.jsonl").read_text().splitlines()]  # every line parses
    ids = [r["id"] for r in rows]
    assert ids == [f"a{i:05d}" for i in range(1, n_attempts + 1)], ids
    lin = Lineage.open(lineage)
    versions = [v for v in lin.versions() if v.meta.kind == "version"]
    by_attempt = [v.meta.attempt for v in versions]
    assert len(by_attempt) == len(set(by_attempt)), "an attempt was committed twice"
    accepted = {r["id"]: r["commit"] for r in rows if r["accepted"]}
    assert accepted == {v.meta.attempt: v.sha for v in versions}, "commits and accepted attempts disagree"
    assert len({v.meta.source_hash for v in versions}) == len(versions)
    for task, island in lin.branches():
        assert [v.meta.kind for v in lin.versions(task, island)][0] == "seed"
    r = subprocess.run(["git", "-C", str(lineage), "fsck", "--strict"], capture_output=True, text=True)
    assert r.returncode == 0 and not any(w in (r.stdout + r.stderr) for w in ("error", "missing", "broken")), r.stderr
    assert not list((lineage / ".git").rglob("*.lock"))
    lin.close()


def test_kill9_at_random_points_then_finish(tmp_path):
    cfg, lineage = cfg_file(tmp_path), tmp_path / "resume"
    logs = tmp_path / "logs"
    logs.mkdir()
    # 1) killed exactly between a commit and its attempt line (fault point)
    marker = tmp_path / "fault.marker"
    p = start(cfg, logs / "0.log", env={"AVO_FAULT": f"after-commit:{marker}"})
    assert p.wait(timeout=400) == -signal.SIGKILL and marker.exists(), (logs / "0.log").read_text()[-2000:]
    lin = Lineage.open(lineage)
    committed = [v.meta.attempt for v in lin.versions() if v.meta.kind == "version"]
    assert committed and committed[-1] not in logged_ids(lineage), "the kill landed after the commit, before the log"
    lin.close()
    # 2) SIGKILL at random moments (import, seed, evaluation, gate, commit, ...), leaving the
    #    debris a killed writer can leave: a torn log line, stale git lock files
    rng = random.Random(20261124)
    for k in range(3):
        before = len(logged_ids(lineage))
        p = start(cfg, logs / f"{k + 1}.log")
        if k == 0:
            time.sleep(rng.uniform(0.5, 4.0))  # during start-up: imports, lock, reconcile
        else:  # inside the attempt loop: operator, evaluation, A/B gate, commit, log
            wait_for(lambda: len(logged_ids(lineage)) > before or p.poll() is not None, 300, "an attempt")
            time.sleep(rng.uniform(0.0, 3.0))
        p.kill()
        p.wait(timeout=60)
        if k == 0:
            with open(lineage / "attempts.jsonl", "ab") as f:
                f.write(b'{"id": "a9999", "task": "grammar_bi')
        if k == 1:
            (lineage / ".git" / "index.lock").write_text("")
            (lineage / ".git" / "refs" / "heads" / "grammar_bitmask" / "island-0.lock").write_text("")
    # 3) the same command finishes the run
    p = start(cfg, logs / "final.log")
    assert p.wait(timeout=600) == 0, (logs / "final.log").read_text()[-3000:]
    text = (logs / "final.log").read_text()
    assert "report -> " in text and f"{BUDGET} attempts of {BUDGET}" in text
    check_invariants(lineage, BUDGET)
    recovered = [json.loads(x) for x in (lineage / "attempts.jsonl").read_text().splitlines()]
    assert any(r.get("recovered") for r in recovered), "the commit whose log line was lost is re-logged"
    # 4) a second process on a running run is refused; SIGINT ends the current step cleanly
    #    with exit code 130, and the run resumes to its new budget
    p = start(cfg, logs / "int.log", "--attempts", str(BUDGET + 4))
    wait_for(lambda: "resuming" in (logs / "int.log").read_text() or p.poll() is not None, 120, "resume")
    other = subprocess.run([sys.executable, "-m", "avo.cli", "evolve", "--config", str(cfg), "--no-live",
                            "--minutes", "0.001"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert p.poll() is None, "the run should still hold its lock"
    assert other.returncode == 2 and "in use (pid" in other.stderr, other.stderr
    wait_for(lambda: len(logged_ids(lineage)) > BUDGET or p.poll() is not None, 300, "a new attempt")
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=300) == 130, (logs / "int.log").read_text()[-2000:]
    assert "stopped cleanly" in (logs / "int.log").read_text()
    p = start(cfg, logs / "final2.log", "--attempts", str(BUDGET + 4))
    assert p.wait(timeout=600) == 0, (logs / "final2.log").read_text()[-3000:]
    check_invariants(lineage, BUDGET + 4)
