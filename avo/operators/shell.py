"""Shell commands for agents: the agentic operator's `shell` tool (compile a variant and dump
PTX/SASS, micro-benchmark a fragment, a quick Python check) and the process-group handling the
external operator shares.

`run_shell(command, folder, timeout_s, ...)` runs `bash -c COMMAND` in `folder` (not a login
shell: a login profile resets PATH and writes outside the sandbox; the run's environment,
scrubbed, is what the command gets):

* its own process group, killed whole on timeout (SIGTERM, then SIGKILL), and whatever it left
  running in the background is killed when it ends;
* stdout and stderr merged, kept to `cap` characters (the head and the tail, with a line saying
  how much was elided in between), the exit code reported;
* the candidate worker's environment (`avo.harness.workerproc.scrubbed_env`: no variable whose
  name says KEY/TOKEN/SECRET/...), the venv's `bin/` first on PATH;
* inside the candidate worker's sandbox (avo/harness/sandbox.py `confine`): `python -m
  avo.operators.shell` confines itself (capabilities dropped, Landlock writes only under the
  folder and the compile caches, no internet sockets, no ptrace) and then execs bash, so every
  process of the command inherits it. `AVO_SANDBOX=off` turns it off, as for the worker.

GPU work from a shell command obeys the rule evaluations obey (one at a time per GPU) because
the caller runs it where evaluations run: the local loop is one thread, so nothing else is
evaluating while an operator proposes; on Ray the evaluator actor runs it (`shell_in_copy`) in
its slot, on a copy of the folder shipped as a tar (`pack`/`unpack`), and the changed files come
back. See StepContext.run_shell (avo/operators/base.py)."""
from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel

KILL_GRACE_S = 5.0
OUTPUT_CAP = 10000  # bytes of output a shell result keeps (head + tail): under the tool result cap
PACK_CAP = 32 << 20  # bytes of a folder shipped to an evaluator actor (and back)
SKIP_DIRS = {"__pycache__", ".cache", ".git"}  # not shipped: caches, and the agent folder's own repo


class ShellResult(BaseModel):
    command: str
    exit_code: Optional[int] = None  # None: killed on timeout
    output: str = ""  # stdout + stderr, capped
    seconds: float = 0.0
    timed_out: bool = False
    total_chars: int = 0  # before the cap
    sandboxed: bool = False

    def text(self) -> str:
        """The result as the model reads it: the output, then the exit line."""
        if self.timed_out:
            end = f"[killed: timeout after {self.seconds:.1f}s; the whole process group was stopped]"
        else:
            end = f"[exit {self.exit_code} after {self.seconds:.1f}s]"
        return (self.output.rstrip("\n") + "\n" if self.output.strip() else "(no output)\n") + end


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> Optional[int]:
    """SIGTERM a process's whole group, SIGKILL after a grace period; its exit code (or None)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


class _Capped:
    """Reads a pipe to its end, keeping the first `head` and the last `tail` bytes."""

    def __init__(self, stream, cap: int):
        self.head_n, self.tail_n = cap // 3, cap - cap // 3
        self.head, self.tail, self.total = bytearray(), deque(), 0
        self.tail_len = 0
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                self.total += len(chunk)
                room = self.head_n - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    self.tail.append(chunk)
                    self.tail_len += len(chunk)
                    while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_n:
                        self.tail_len -= len(self.tail.popleft())
        except (OSError, ValueError):
            pass

    def text(self) -> tuple[str, int]:
        tail = b"".join(self.tail)[-self.tail_n:] if self.tail else b""
        elided = self.total - len(self.head) - len(tail)
        head = self.head.decode(errors="replace")
        if elided > 0:
            return head + f"\n[... {elided} bytes of output elided ...]\n" + tail.decode(errors="replace"), self.total
        return head + tail.decode(errors="replace"), self.total


def shell_env(device: str) -> dict[str, str]:
    """The candidate worker's scrubbed environment, the venv's bin/ first on PATH."""
    from avo.harness.workerproc import scrubbed_env
    env = scrubbed_env(device)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_shell(command: str, folder: Path, timeout_s: float, device: str = "interpret", cap: int = OUTPUT_CAP,
              sandbox: bool = True) -> ShellResult:
    """Run `bash -c command` in `folder` (see the module docstring)."""
    from avo.harness import sandbox as sb
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    use_sandbox = sandbox and sb.disabled() is None and sys.platform.startswith("linux")
    argv = ([sys.executable, "-m", "avo.operators.shell", "--scratch", str(folder), "--device", device, command]
            if use_sandbox else ["bash", "-c", command])
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=folder, env=shell_env(device), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = _Capped(proc.stdout, cap)
    timed_out = False
    try:
        code: Optional[int] = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc, grace_s=1.0)
        code = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what it left in the background ends with it
    except (ProcessLookupError, PermissionError):
        pass
    out.thread.join(timeout=5.0)
    proc.stdout.close()
    text, total = out.text()
    return ShellResult(command=command, exit_code=code, output=text, seconds=round(time.monotonic() - t0, 3),
                       timed_out=timed_out, total_chars=total, sandboxed=use_sandbox)


# ---- a folder shipped to where the command runs (the Ray evaluator actor) and back ----
def pack(folder: Path, cap: int = PACK_CAP) -> bytes:
    """The folder's files as a gzipped tar (caches and .git left out); ValueError past `cap`."""
    folder = Path(folder)
    buf = io.BytesIO()
    size = 0
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if any(part in SKIP_DIRS for part in rel.parts) or p.is_symlink() or not p.is_file():
                continue
            size += p.stat().st_size
            if size > cap:
                raise ValueError(f"the folder holds more than {cap >> 20} MiB; remove large files first")
            tar.add(p, arcname=rel.as_posix(), recursive=False)
    return buf.getvalue()


def members(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def unpack(data: bytes, folder: Path, sent: Optional[set[str]] = None) -> None:
    """Write the tar's files into `folder`; files that were `sent` and are not in it are removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(folder, members=[m for m in tar.getmembers() if m.isfile()], filter="data")
        names = {m.name for m in tar.getmembers() if m.isfile()}
    for name in (sent or set()) - names:
        (folder / name).unlink(missing_ok=True)


def shell_in_copy(data: bytes, command: str, timeout_s: float, device: str, root: Path,
                  cap: int = OUTPUT_CAP) -> tuple[ShellResult, bytes]:
    """Run a command on a copy of a shipped folder (under `root`); (result, the folder after it)."""
    import shutil
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shell-", dir=root))
    try:
        unpack(data, work)
        res = run_shell(command, work, timeout_s, device, cap)
        try:
            back = pack(work)
        except ValueError as e:
            res.output += f"\n[the folder was not copied back: {e}]"
            back = data
        return res, back
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_shipped(send: Callable[[bytes, str, float], tuple[ShellResult, bytes]], command: str, folder: Path,
                timeout_s: float) -> ShellResult:
    """A command run elsewhere on a copy of `folder` (`send(data, command, timeout_s)`, e.g. an
    evaluator actor's `shell`): the folder goes as a tar, the folder after the command comes back
    into it (files the command removed are removed here too)."""
    data = pack(folder)
    res, back = send(data, command, timeout_s)
    unpack(back, folder, sent=members(data))
    return res


def _main(argv: Optional[list[str]] = None) -> None:
    """`python -m avo.operators.shell --scratch DIR --device D SCRIPT`: confine this process as
    the candidate worker is confined, then become `bash -c SCRIPT`."""
    ap = argparse.ArgumentParser(prog="python -m avo.operators.shell")
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--device", default="interpret")
    ap.add_argument("script")
    a = ap.parse_args(argv)
    from avo.harness import sandbox
    sandbox.confine(Path(a.scratch), None, a.device, ipc=False)
    sys.stdout.flush()
    os.execvp("bash", ["bash", "-c", a.script])


if __name__ == "__main__":
    _main()
