"""Crash safety of a lineage's files outside git: the run lock (flock + pid, released by the kernel
when its holder dies), the repair a new writer makes after a killed one (stale git lock files, a
torn last log line), and the append-only JSONL logs (fsynced appends, tolerant reads)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from avo.lineage.records import now_iso


class LineageError(Exception):
    """A lineage that cannot be read or written; the message is one line for the user."""


def read_jsonl_tolerant(path: Path) -> list[dict]:
    """Rows of a JSONL log; a torn line (a writer killed mid-append) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_jsonl_durable(path: Path, row: dict) -> None:
    """One line, flushed and fsynced: what the log says survives a kill or a power cut."""
    data = (json.dumps(row, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def trim_torn_tail(path: Path) -> None:
    """Cut a partial last line so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class RunLock:
    """flock on run.lock (released by the kernel when the holder dies, even by kill -9)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LineageError(f"run {self.path.parent.name} is in use ({holder}); stop that run or use another --run") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def repair_after_kill(path: Path, logs: list[str]) -> None:
    """What a killed writer may have left in a lineage: git lock files in .git, a torn last line
    in the logs. Call with the run lock held."""
    gitdir = path / ".git"
    stale = [gitdir / "index.lock", gitdir / "HEAD.lock", gitdir / "packed-refs.lock",
             *(gitdir / "refs").rglob("*.lock")]
    for p in stale:
        if p.exists():
            p.unlink()
    for name in logs:
        trim_torn_tail(path / name)
