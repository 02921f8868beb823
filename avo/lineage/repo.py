"""A run's lineage: one git repository per run (`lineages/<run>/`), one branch per island
(`<task>/island-<i>`), one commit per accepted version (kernel.py, traces.jsonl, meta.json), and
the append-only log of every attempt (attempts.jsonl). Format: docs/lineage.md.

Crash safety: commits are written with git plumbing (objects, then one atomic ref update), never
through the index; an accepted attempt is committed first and logged second, and `reconcile()`
re-logs a commit whose log line was lost. A run lock (flock + pid) keeps two writers apart and
lets a new writer remove lock files that a killed run left in .git (avo/lineage/durable.py).
The records themselves (meta.json, attempts.jsonl lines, commit messages) are in
avo/lineage/records.py."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

from avo.lineage.durable import (LineageError, RunLock, append_jsonl_durable, read_jsonl_tolerant,
                                 repair_after_kill)
from avo.lineage.records import AttemptRecord, Measurement, Version, VersionMeta, attempt_number
from avo.tasks import REPO_ROOT

ROOT_BRANCH = "main"
KERNEL_FILE, TRACES_FILE, META_FILE = "kernel.py", "traces.jsonl", "meta.json"
ATTEMPTS_FILE, INTERVENTIONS_FILE, LOCK_FILE = "attempts.jsonl", "interventions.jsonl", "run.lock"
MEASUREMENTS_FILE = "measurements.jsonl"
CONFIG_FILE, IDENTITY_FILE = "config.yaml", "identity.json"
# Files next to .git that are not versioned (git status stays clean).
UNTRACKED = [ATTEMPTS_FILE, INTERVENTIONS_FILE, MEASUREMENTS_FILE, LOCK_FILE, "report/", "work/", "transcripts/"]
GIT_ENV = {"GIT_AUTHOR_NAME": "avo", "GIT_AUTHOR_EMAIL": "avo@localhost",
           "GIT_COMMITTER_NAME": "avo", "GIT_COMMITTER_EMAIL": "avo@localhost",
           "GIT_TERMINAL_PROMPT": "0"}


def branch_name(task: str, island: int) -> str:
    return f"{task}/island-{island}"


class Lineage:
    def __init__(self, path: Path):
        import git
        self.path = Path(path)
        try:
            self.repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise LineageError(f"{self.path}: not a lineage (no git repository)") from None
        self._lock: Optional[RunLock] = None
        self._attempts: Optional[list[AttemptRecord]] = None
        self._measurements: Optional[list[Measurement]] = None
        self._versions: dict[str, Version] = {}

    # ---- opening ----
    @classmethod
    def open(cls, path: Path) -> "Lineage":
        """Read-only access (CLI, report, export); no lock."""
        path = Path(path)
        if not (path / ".git").exists():
            raise LineageError(f"{path}: not a lineage (no .git)")
        return cls(path)

    @classmethod
    def open_or_create(cls, path: Path, run: str, config_yaml: str, identity: dict) -> tuple["Lineage", bool]:
        """The run's lineage, locked for writing; (lineage, created). A lineage whose creation
        was killed before its root commit is created again."""
        path = Path(path)
        if path.exists() and not (path / ".git").exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
            raise LineageError(f"{path} exists and is not a lineage; remove it or use another --run")
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(path / LOCK_FILE)
        lock.acquire()
        try:
            if (path / ".git").exists():
                r = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "--quiet", f"refs/heads/{ROOT_BRANCH}"],
                                   capture_output=True)
                if r.returncode == 0:
                    lin = cls(path)
                    lin._take_lock(lock)
                    return lin, False
                shutil.rmtree(path / ".git")  # creation was interrupted: nothing was recorded yet
            return cls._create(path, run, config_yaml, identity, lock), True
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create(cls, path: Path, run: str, config_yaml: str, identity: dict, lock: RunLock) -> "Lineage":
        """git init, ignore rules, the root commit on `main` (config, identity, README).
        `identity` is what a resumed run must match (tasks, islands, seeds, device)."""
        import git
        git.Repo.init(path, initial_branch=ROOT_BRANCH)
        lin = cls(path)
        lin._take_lock(lock)
        lin._git("config", "core.fsync", "committed")  # objects and refs reach the disk before we log
        (path / ".git" / "info").mkdir(exist_ok=True)
        (path / ".git" / "info" / "exclude").write_text("\n".join(UNTRACKED) + "\n")
        readme = (f"# avo run `{run}`\n\nBranches `<task>/island-<i>` hold the accepted versions "
                  f"(kernel.py, traces.jsonl, meta.json); attempts.jsonl logs every attempt.\n"
                  f"Read it with `avo lineage log {run}`, `git log --all --graph`, `avo report {run}`. "
                  f"Format: docs/lineage.md in the avo repository.\n")
        files = {CONFIG_FILE: config_yaml, IDENTITY_FILE: json.dumps(identity, indent=2) + "\n", "README.md": readme}
        sha = lin._commit_tree(files, None, f"avo run {run}\n\nRun config and layout; islands branch from here.\n")
        for name, text in files.items():  # a checked-out main keeps `git status` clean
            (path / name).write_text(text)
        lin._git("read-tree", sha)
        lin._git("update-ref", "-m", "avo: root", f"refs/heads/{ROOT_BRANCH}", sha, "0" * 40)
        return lin

    def reset_root(self, run: str, config_yaml: str, identity: dict) -> None:
        """Replace the root commit of a lineage that holds no version and no attempt yet (its
        seed failed): the user fixed the config or the seed and starts again under the same name."""
        if self.branches() or self.attempts():
            raise LineageError(f"{self.path}: the lineage already holds versions or attempts; its setup is fixed")
        old = self.rev_parse(ROOT_BRANCH)
        files = {CONFIG_FILE: config_yaml, IDENTITY_FILE: json.dumps(identity, indent=2) + "\n",
                 "README.md": self.root_file("README.md")}
        sha = self._commit_tree(files, None, f"avo run {run}\n\nRun config and layout; islands branch from here.\n")
        for name, text in files.items():
            (self.path / name).write_text(text)
        self._git("read-tree", sha)
        self._git("update-ref", "-m", "avo: root (setup changed before any version)", f"refs/heads/{ROOT_BRANCH}", sha, old)

    def _take_lock(self, lock: RunLock) -> None:
        """Hold the run lock, then repair what a killed writer may have left behind."""
        self._lock = lock
        repair_after_kill(self.path, [ATTEMPTS_FILE, INTERVENTIONS_FILE, MEASUREMENTS_FILE])

    def close(self) -> None:
        self.repo.close()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- git plumbing ----
    def _git_raw(self, *args: str, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        # A session of its own: Ctrl-C in the terminal (sent to our process group) must not kill
        # a git that is writing a commit; the orchestrator decides when to stop.
        return subprocess.run(["git", "-C", str(self.path), *args], input=input, capture_output=True,
                              env={**os.environ, **GIT_ENV}, start_new_session=True)

    def _git(self, *args: str, input: Optional[bytes] = None) -> str:
        r = self._git_raw(*args, input=input)
        if r.returncode != 0:
            raise LineageError(f"git {args[0]} failed in {self.path}: {r.stderr.decode(errors='replace').strip()[:300]}")
        return r.stdout.decode().strip()

    def rev_parse(self, ref: str) -> Optional[str]:
        """The commit a ref (sha prefix, branch, rev expression) names, None if none."""
        r = self._git_raw("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return r.stdout.decode().strip() if r.returncode == 0 else None

    def _blobs(self, specs: list[str]) -> dict[str, Optional[bytes]]:
        """Read several `rev:path` objects with one `git cat-file --batch` (None when missing)."""
        out = self._git_raw("cat-file", "--batch", input="".join(s + "\n" for s in specs).encode()).stdout
        res, pos = {}, 0
        for spec in specs:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) == 3:
                size = int(header[2])
                res[spec] = out[pos:pos + size]
                pos += size + 1
            else:
                res[spec] = None  # "<spec> missing"
        return res

    def _commit_tree(self, files: dict[str, str], parent: Optional[str], message: str) -> str:
        entries = []
        for name in sorted(files):
            blob = self._git("hash-object", "-w", "--stdin", input=files[name].encode())
            entries.append(f"100644 blob {blob}\t{name}\n")
        tree = self._git("mktree", input="".join(entries).encode())
        args = ["commit-tree", tree, "-F", "-"] + (["-p", parent] if parent else [])
        return self._git(*args, input=message.encode())

    def root_file(self, name: str) -> str:
        data = self._blobs([f"{ROOT_BRANCH}:{name}"])[f"{ROOT_BRANCH}:{name}"]
        if data is None:
            raise LineageError(f"{self.path}: the root commit on {ROOT_BRANCH} has no {name}")
        return data.decode()

    def identity(self) -> dict:
        return json.loads(self.root_file(IDENTITY_FILE))

    # ---- versions ----
    def branches(self, task: Optional[str] = None) -> list[tuple[str, int]]:
        """(task, island) per island branch, sorted."""
        out = []
        for name in self._git("for-each-ref", "--format=%(refname:short)", "refs/heads/").split():
            if "/island-" in name:
                t, _, i = name.rpartition("/island-")
                if (task is None or t == task) and i.isdigit():
                    out.append((t, int(i)))
        return sorted(out)

    def tasks(self) -> list[str]:
        return sorted({t for t, _ in self.branches()})

    def head_sha(self, task: str, island: int) -> Optional[str]:
        return self.rev_parse(f"refs/heads/{branch_name(task, island)}")

    def version(self, sha: str) -> Version:
        full = sha if sha in self._versions else self.rev_parse(sha)
        if full is None:
            raise LineageError(f"no commit {sha!r} in {self.path}")
        if full not in self._versions:
            specs = [f"{full}:{META_FILE}", f"{full}:{KERNEL_FILE}", f"{full}:{TRACES_FILE}"]
            blobs = self._blobs(specs)
            if blobs[specs[0]] is None or blobs[specs[1]] is None:
                raise LineageError(f"commit {full[:10]} is not a version (no {META_FILE})")
            meta = VersionMeta.model_validate_json(blobs[specs[0]])
            self._versions[full] = Version(sha=full, source=blobs[specs[1]].decode(), meta=meta,
                                           traces_jsonl=(blobs[specs[2]] or b"").decode(), committed=meta.timestamp)
        return self._versions[full]

    def commit_record(self, sha: str) -> dict[str, bytes]:
        """A version's commit as stored: the raw commit object (`commit`) and its files, byte for
        byte (kernel.py, meta.json, traces.jsonl). An exported artifact keeps these so that it can
        be checked against its lineage (avo/apply/artifact.py: verify_provenance)."""
        full = self.rev_parse(sha)
        if full is None:
            raise LineageError(f"no commit {sha!r} in {self.path}")
        specs = [f"{full}:{KERNEL_FILE}", f"{full}:{META_FILE}", f"{full}:{TRACES_FILE}"]
        blobs = self._blobs(specs)
        if any(b is None for b in blobs.values()):
            raise LineageError(f"commit {full[:10]} is not a version (no {KERNEL_FILE}/{META_FILE}/{TRACES_FILE})")
        r = self._git_raw("cat-file", "commit", full)
        out = {name: blobs[spec] for name, spec in zip((KERNEL_FILE, META_FILE, TRACES_FILE), specs)}
        return {"commit": r.stdout, **out}

    def _walk(self, task: str, island: int) -> Iterator[Version]:
        """Versions of one island, newest first, down to its seed commit."""
        head = self.head_sha(task, island)
        if head is None:
            return
        chain = self._git("rev-list", "--first-parent", head).split()
        for sha in chain[:-1]:  # the last one is the root commit on main
            yield self.version(sha)

    def versions(self, task: Optional[str] = None, island: Optional[int] = None) -> list[Version]:
        """Accepted versions (seeds included), oldest first by commit time then island."""
        out = []
        for t, i in self.branches(task):
            if island is None or i == island:
                out.extend(reversed(list(self._walk(t, i))))
        return sorted(out, key=lambda v: (v.meta.timestamp, v.meta.attempt or "", v.meta.island))

    def head(self, task: str, island: int) -> Optional[Version]:
        sha = self.head_sha(task, island)
        return self.version(sha) if sha else None

    def best(self, task: str, island: Optional[int] = None, recorded: bool = False) -> Version:
        """The best version: of the task, the one its latest final measurement chose (with the
        measured figures) unless a version was committed since; else, and per island, the highest
        recorded speedup. `recorded`: ignore measurements."""
        vs = self.versions(task, island)
        if not vs:
            where = f"{task}" + (f" island {island}" if island is not None else "")
            raise LineageError(f"no versions for {where} in {self.path}")
        m = self.measurement(task) if island is None and not recorded else None
        if m is not None and m.versions_count == len(vs):
            v = next((v for v in vs if v.sha == m.best), None)
            if v is not None:
                return dataclasses.replace(v, measured=m.of(v.sha))  # a copy: versions are cached
        return max(vs, key=lambda v: v.meta.scores.speedup_vs_seed or 0.0)  # max() keeps the first: ties go to the earliest

    def measurements(self) -> list[Measurement]:
        if self._measurements is None:  # read once: best() consults it on every call
            self._measurements = [Measurement.model_validate(r) for r in read_jsonl_tolerant(self.path / MEASUREMENTS_FILE)]
        return list(self._measurements)

    def measurement(self, task: str) -> Optional[Measurement]:
        """The task's latest final measurement, or None."""
        return next((m for m in reversed(self.measurements()) if m.task == task), None)

    def append_measurement(self, m: Measurement) -> None:
        append_jsonl_durable(self.path / MEASUREMENTS_FILE, m.model_dump(mode="json"))
        if self._measurements is not None:
            self._measurements.append(m)

    def commit_version(self, meta: VersionMeta, source: str, traces_jsonl: str, message: str) -> str:
        """Append a version to its island branch (atomic ref update); returns the commit sha."""
        branch = branch_name(meta.task, meta.island)
        old = self.head_sha(meta.task, meta.island)
        parent = old or self.rev_parse(ROOT_BRANCH)
        files = {KERNEL_FILE: source, TRACES_FILE: traces_jsonl,
                 META_FILE: meta.model_dump_json(indent=2, exclude_none=True) + "\n"}
        sha = self._commit_tree(files, parent, message)
        self._git("update-ref", "-m", f"avo: {meta.kind} {meta.attempt or ''}".strip(), f"refs/heads/{branch}",
                  sha, old or "0" * 40)
        return sha

    # ---- attempts and interventions ----
    def attempts(self) -> list[AttemptRecord]:
        if self._attempts is None:
            self._attempts = [AttemptRecord.model_validate(r) for r in read_jsonl_tolerant(self.path / ATTEMPTS_FILE)]
        return list(self._attempts)

    def append_attempt(self, rec: AttemptRecord) -> None:
        append_jsonl_durable(self.path / ATTEMPTS_FILE, rec.model_dump(mode="json", exclude_none=True))
        if self._attempts is not None:
            self._attempts.append(rec)

    def interventions(self) -> list[dict[str, Any]]:
        return read_jsonl_tolerant(self.path / INTERVENTIONS_FILE)

    def append_intervention(self, row: dict[str, Any]) -> None:
        append_jsonl_durable(self.path / INTERVENTIONS_FILE, row)

    def reconcile(self) -> list[AttemptRecord]:
        """Log the accepted attempts whose commit exists but whose log line was lost (a kill
        between the ref update and the append). Returns the re-logged records."""
        logged = {a.id for a in self.attempts()}
        fixed = []
        for v in self.versions():
            m = v.meta
            if m.kind == "version" and m.attempt and m.attempt not in logged:
                rec = AttemptRecord(id=m.attempt, task=m.task, island=m.island, operator=m.operator, status="PASSED",
                                    accepted=True, commit=v.sha, parent=m.parent, gain=m.gate.gain if m.gate else None,
                                    noise=m.gate.noise if m.gate else None, gate=m.gate, source_hash=m.source_hash,
                                    note=m.note, transcript=m.transcript, started=m.timestamp, finished=m.timestamp,
                                    cost_usd=m.cost_usd, speedup_vs_seed=m.scores.speedup_vs_seed, recovered=True,
                                    run_elapsed_s=m.run_elapsed_s)
                self.append_attempt(rec)
                fixed.append(rec)
        return fixed

    def next_attempt_number(self) -> int:
        nums = [attempt_number(a.id) for a in self.attempts()]
        nums += [attempt_number(v.meta.attempt) for v in self.versions() if v.meta.attempt]
        return max(nums, default=0) + 1


def resolve_run(run: str) -> Path:
    """A run name under lineages/ (here or in the avo checkout) or a lineage path."""
    p = Path(run)
    for cand in (p, Path.cwd() / "lineages" / run, REPO_ROOT / "lineages" / run):
        if (cand / ".git").exists():
            return cand
    roots = [r for r in (Path.cwd() / "lineages", REPO_ROOT / "lineages") if r.is_dir()]
    known = sorted({q.name for r in roots for q in r.iterdir() if (q / ".git").exists()})
    raise LineageError(f"no run {run!r} (looked for lineages/{run}); runs: {', '.join(known) or 'none yet'}")

