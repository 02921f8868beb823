"""The git lineage: branches per island, commits with kernel/traces/meta, attempts log with
torn-line tolerance, reconcile after a kill between commit and log, run lock, stale git locks,
and the `avo lineage` commands."""
import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from avo.lineage import (ATTEMPTS_FILE, AttemptRecord, GateRecord, Lineage, LineageError, Scores, VersionMeta, resolve_run,
                         version_message)
from avo.lineage.durable import read_jsonl_tolerant
from avo.tasks import source_hash
from avo.ui.lineage_view import best_cmd as lineage_best_cmd
from avo.ui.lineage_view import diff_cmd as lineage_diff_cmd
from avo.ui.lineage_view import log_cmd as lineage_log_cmd
from avo.ui.lineage_view import show_cmd as lineage_show_cmd
from avo.tasks import REPO_ROOT

TASK = "grammar_bitmask"
SRC = "CONFIG = dict(A=1)\nTUNABLES = dict(A=[1, 2])\n\ndef run(x):\n    pass\n"
IDENT = {"device": "interpret", "tasks": [TASK], "islands": ["grammar_bitmask/island-0:h"], "seeds": {}, "workloads": {}}


def new_lineage(tmp_path, name="run1"):
    lin, created = Lineage.open_or_create(tmp_path / name, name, "run: run1\n", IDENT)
    assert created
    return lin


def seed(lin, island=0):
    meta = VersionMeta(run="run1", task=TASK, island=island, kind="seed", operator="seed", note="seed.py",
                       source_hash=source_hash(SRC), scores=Scores(speedup_vs_seed=1.0), device_mode="interpret")
    return lin.commit_version(meta, SRC, "", version_message(meta, []))


def version(lin, n, parent, speedup, island=0, src=None):
    src = src or SRC.replace("A=1", f"A={n + 1}")
    gate = GateRecord(accepted=True, gain=0.25, noise=0.02, threshold=0.02, min_gain=0.01, rounds=2, against=parent,
                      best_ms={"w": 2.0}, cand_ms={"w": 1.6})
    meta = VersionMeta(run="run1", task=TASK, island=island, kind="version", attempt=f"a{n:05d}", parent=parent,
                       operator="heuristic", note=f"A 1->{n + 1}", source_hash=source_hash(src),
                       scores=Scores(speedup_vs_seed=speedup), gate=gate, device_mode="interpret")
    return lin.commit_version(meta, src, "", version_message(meta, [])), meta


def fsck(path):
    r = subprocess.run(["git", "-C", str(path), "fsck", "--strict"], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def test_create_commit_and_read_back(tmp_path):
    lin = new_lineage(tmp_path)
    s0 = seed(lin)
    s1, m1 = version(lin, 1, s0, 1.25)
    s2, _ = version(lin, 2, s1, 1.5)
    assert lin.branches() == [(TASK, 0)] and lin.tasks() == [TASK]
    assert lin.head_sha(TASK, 0) == s2 and lin.head(TASK, 0).meta.attempt == "a00002"
    vs = lin.versions(TASK)
    assert [v.sha for v in vs] == [s0, s1, s2]
    best = lin.best(TASK)
    assert best.sha == s2 and best.meta.gate.cand_ms == {"w": 1.6} and "A=3" in best.source
    assert lin.identity() == IDENT
    # plain git sees one commit per version with readable messages and the three files
    log = subprocess.run(["git", "-C", str(lin.path), "log", "--format=%s%n%b", f"{TASK}/island-0"],
                         capture_output=True, text=True).stdout
    assert f"{TASK} island-0: A 1->2 (+25.0%, 1.25x vs seed)" in log
    assert "Avo-Attempt: a00001" in log and "Avo-Gain: 0.2500" in log
    files = subprocess.run(["git", "-C", str(lin.path), "ls-tree", "--name-only", s1], capture_output=True, text=True).stdout
    assert files.split() == ["kernel.py", "meta.json", "traces.jsonl"]
    assert json.loads(subprocess.run(["git", "-C", str(lin.path), "show", f"{s1}:meta.json"], capture_output=True,
                                     text=True).stdout)["parent"] == s0
    status = subprocess.run(["git", "-C", str(lin.path), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status == "", "the lineage's work tree stays clean"
    assert fsck(lin.path)[0] == 0
    lin.close()


def test_attempts_log_tolerates_a_torn_line(tmp_path):
    lin = new_lineage(tmp_path)
    for i in range(3):
        lin.append_attempt(AttemptRecord(id=f"a{i + 1:05d}", task=TASK, island=0, operator="h", status="REJECTED"))
    lin.close()
    path = tmp_path / "run1" / ATTEMPTS_FILE
    with open(path, "ab") as f:
        f.write(b'{"id": "a00004", "task": "gram')  # a writer killed mid-line
    assert [r["id"] for r in read_jsonl_tolerant(path)] == ["a00001", "a00002", "a00003"]
    lin2, created = Lineage.open_or_create(tmp_path / "run1", "run1", "", IDENT)
    assert not created and path.read_bytes().endswith(b"}\n"), "the torn tail is cut on open"
    lin2.append_attempt(AttemptRecord(id="a00004", task=TASK, island=0, operator="h", status="PASSED"))
    assert [a.id for a in Lineage.open(tmp_path / "run1").attempts()] == ["a00001", "a00002", "a00003", "a00004"]
    assert lin2.next_attempt_number() == 5
    lin2.close()


def test_reconcile_relogs_a_commit_whose_log_line_was_lost(tmp_path):
    lin = new_lineage(tmp_path)
    s0 = seed(lin)
    lin.append_attempt(AttemptRecord(id="a00001", task=TASK, island=0, operator="h", status="REJECTED"))
    s2, _ = version(lin, 2, s0, 1.3)  # committed, then "killed" before its attempt line
    fixed = lin.reconcile()
    assert [(r.id, r.commit, r.accepted, r.recovered) for r in fixed] == [("a00002", s2, True, True)]
    assert lin.reconcile() == [], "idempotent"
    assert [a.id for a in lin.attempts()] == ["a00001", "a00002"] and lin.next_attempt_number() == 3
    lin.close()


def test_run_lock_and_stale_git_locks(tmp_path):
    lin = new_lineage(tmp_path)
    seed(lin)
    with pytest.raises(LineageError, match=f"in use \\(pid {os.getpid()}"):
        Lineage.open_or_create(tmp_path / "run1", "run1", "", IDENT)
    lin.close()
    git_dir = tmp_path / "run1" / ".git"
    (git_dir / "index.lock").write_text("")
    (git_dir / "refs" / "heads" / TASK / "island-0.lock").write_text("")  # what a killed update-ref leaves
    lin2, _ = Lineage.open_or_create(tmp_path / "run1", "run1", "", IDENT)
    assert not (git_dir / "index.lock").exists()
    version(lin2, 1, lin2.head_sha(TASK, 0), 1.2)  # would fail on a stale ref lock
    assert fsck(lin2.path)[0] == 0
    lin2.close()


def test_interrupted_creation_is_redone_and_foreign_dirs_refused(tmp_path):
    import git
    (tmp_path / "half").mkdir()
    git.Repo.init(tmp_path / "half")  # killed after git init, before the root commit
    lin, created = Lineage.open_or_create(tmp_path / "half", "half", "run: half\n", IDENT)
    assert created and lin.identity() == IDENT
    lin.close()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(LineageError, match="not a lineage"):
        Lineage.open_or_create(tmp_path / "foreign", "foreign", "", IDENT)


def test_islands_are_separate_branches_and_best_spans_them(tmp_path):
    lin = new_lineage(tmp_path)
    s0, t0 = seed(lin, 0), seed(lin, 1)
    version(lin, 1, s0, 1.4, island=0)
    s3, _ = version(lin, 3, t0, 2.0, island=1)
    assert lin.branches() == [(TASK, 0), (TASK, 1)]
    assert lin.best(TASK).sha == s3 and lin.best(TASK, island=0).meta.scores.speedup_vs_seed == 1.4
    assert len(lin.versions(TASK, island=1)) == 2
    with pytest.raises(LineageError, match="no versions"):
        lin.best("other_task")
    lin.close()


def test_cli_commands_render(tmp_path, monkeypatch):
    lin = new_lineage(tmp_path)
    s0 = seed(lin)
    s1, _ = version(lin, 1, s0, 1.25)
    lin.append_attempt(AttemptRecord(id="a00001", task=TASK, island=0, operator="heuristic", status="PASSED",
                                     accepted=True, commit=s1, note="A 1->2", gain=0.25, noise=0.02))
    lin.append_attempt(AttemptRecord(id="a00002", task=TASK, island=0, operator="heuristic", status="COMPILE_ERROR",
                                     note="broken", error="SyntaxError: invalid syntax"))
    lin.close()
    buf = io.StringIO()
    con = Console(file=buf, width=200)
    run = str(tmp_path / "run1")
    lineage_log_cmd(run, None, False, con)
    lineage_log_cmd(run, TASK, True, con)
    lineage_best_cmd(run, None, con)
    lineage_show_cmd(run, "a00001", con)
    lineage_diff_cmd(run, f"{TASK}/island-0~1", s1, con)
    out = buf.getvalue()
    assert s1[:8] in out and "1.25x" in out and "COMPILE_ERROR" in out and "SyntaxError" in out
    assert "-CONFIG = dict(A=1)" in out and "+CONFIG = dict(A=2)" in out
    with pytest.raises(LineageError, match="not accepted"):
        lineage_show_cmd(run, "a00002", con)
    with pytest.raises(LineageError, match="unknown ref"):
        lineage_show_cmd(run, "nope", con)
    with pytest.raises(LineageError, match="no run 'absent-run'"):
        resolve_run("absent-run")
    r = subprocess.run([sys.executable, "-m", "avo.cli", "lineage", "best", run], capture_output=True, text=True,
                       cwd=REPO_ROOT)
    assert r.returncode == 0 and s1[:10] in r.stdout
    r = subprocess.run([sys.executable, "-m", "avo.cli", "lineage", "log", str(tmp_path / "nothing")],
                       capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 2 and "no run" in r.stderr and "Traceback" not in r.stderr
