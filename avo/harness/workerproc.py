"""The worker processes as the runner drives them: spawn with a scrubbed environment (no API keys)
and a private socket, wait for "ready", receive with a time limit, kill the whole process group.
A worker never outlives its runner: it is told the runner's pid (`--parent`) and asks the kernel
for SIGKILL when its parent dies (worker.py); what either leaves in the temp dir is named by the
owning pid and swept once that pid is gone (channel.sweep).
Kept apart from runner.py, which decides what to send and how to judge the replies."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from avo.harness import channel
from avo.schema import EvaluationStatus

S = EvaluationStatus
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")


class HarnessError(Exception):
    pass


def scrubbed_env(device: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not any(m in k.upper() for m in SECRET_MARKERS)}
    if device == "interpret":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProc:
    """A worker subprocess and its private channel; killed (whole process group) on timeout."""

    def __init__(self, device: str, role: str, ipc: bool = False, spare: bool = False):
        self.device, self.role, self.ipc = device, role, ipc and device == "cuda"
        # A second process of this role, started once this one is ready and never given a job: a
        # restart promotes it (its imports, CUDA initialisation and sandbox already done) and
        # starts the next spare, so a failed candidate costs no start-up on the next evaluation.
        self.spare: Optional[WorkerProc] = WorkerProc(device, role, ipc) if spare else None
        self.proc: Optional[subprocess.Popen] = None
        self.conn: Optional[Connection] = None
        self.bulk: Optional[Path] = None  # scratch folder for bulk tensors from this worker
        self.ready = False  # said "ready" since its spawn
        self.info: dict = {}  # its "ready" info: pid, sandbox layers (avo/harness/sandbox.py), dumpable
        self.log_path = channel.worker_log_path(role)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        ours, theirs = socket.socketpair()
        log = open(self.log_path, "ab")
        self.bulk = channel.bulk_dir(self.role)
        # The worker dies with this process (PR_SET_PDEATHSIG, worker.py). Linux sends that signal
        # when the *thread* that forked it ends: use an Evaluator from a thread that lives as long
        # as it does (the CLI and the local loop use the main thread, a Ray actor its task thread).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "avo.harness.worker", "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
             "--device", self.device, "--role", self.role, "--bulk", str(self.bulk)] + (["--ipc"] if self.ipc else []),
            pass_fds=(theirs.fileno(),), env=scrubbed_env(self.device), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        theirs.close()
        log.close()
        self.conn = Connection(os.dup(ours.fileno()))
        ours.close()
        self.ready = False

    def wait_ready(self) -> None:
        msg = self.recv(120.0)
        if msg is None or msg[0] != "ready":
            self.kill()
            raise HarnessError(f"{self.role} worker did not start: {self.log_tail()}")
        self.ready = True
        self.info = msg[1] if isinstance(msg[1], dict) else {}
        if self.spare is not None and self.spare.proc is None:
            self.spare.spawn()

    def ensure(self) -> None:
        ensure_workers(self)

    def send(self, obj: Any) -> None:
        channel.send(self.conn, obj)

    def recv(self, timeout: float):
        """A message, None on timeout, ('dead', code) when the process died."""
        try:
            if self.conn.poll(timeout):
                return channel.recv(self.conn, self.bulk, self.ipc)
        except (EOFError, OSError):
            pass
        except channel.IpcUnavailable as e:  # this machine's fault, not the candidate's
            return ("fail", S.RUNTIME_ERROR.value, None, str(e))
        except Exception as e:  # bytes that are no harness message (e.g. a tensor subclass): never trust them
            return ("fail", S.REWARD_HACK.value, "channel", f"unreadable message from the worker: {type(e).__name__}")
        else:
            return None
        code = self.proc.wait(timeout=10) if self.proc else None
        return ("dead", code)

    def restart(self) -> None:
        """Kill it and start the next one now, without waiting: it imports torch and initialises
        CUDA (seconds) while the runner reports and the operator proposes; ensure() waits for it.
        With a spare alive, the spare takes its place (a process that never ran a job) and a new
        spare starts."""
        self.kill()
        sp = self.spare
        if sp is not None and sp.proc is not None and sp.proc.poll() is None:
            self.log_path.unlink(missing_ok=True)
            self.proc, self.conn, self.bulk, self.ready, self.info, self.log_path = \
                sp.proc, sp.conn, sp.bulk, sp.ready, sp.info, sp.log_path
            sp.proc, sp.conn, sp.bulk, sp.ready, sp.info = None, None, None, False, {}
            sp.log_path = channel.worker_log_path(self.role)
            if self.ready:  # else wait_ready starts the next spare once this one is up
                sp.spawn()
            return
        if sp is not None:
            sp.kill()  # one that died on its own still holds its socket and scratch folder
        self.spawn()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        if self.proc:
            channel.remove_worker_tmp(self.proc.pid)  # a killed worker could not remove its own
        if self.conn:
            self.conn.close()
        channel.remove_bulk_dir(self.bulk)
        self.proc, self.conn, self.bulk, self.ready = None, None, None, False

    def close(self) -> None:
        """Kill it (and its spare) and remove its log: the Evaluator is done with this worker."""
        self.kill()
        self.log_path.unlink(missing_ok=True)
        if self.spare is not None:
            self.spare.close()

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def exit_words(code: Optional[int]) -> str:
    """How a worker ended: "SIGSEGV, exit -11" for a signal, "exit 3" for an exit status."""
    if code is not None and code < 0:
        try:
            return f"{signal.Signals(-code).name}, exit {code}"
        except ValueError:
            pass
    return f"exit {code}"


def ensure_workers(*procs: WorkerProc) -> None:
    """Start the ones not running, together: their imports and CUDA initialisation overlap; wait
    for those not yet ready (one restarted earlier may be ready already)."""
    for p in procs:
        if p.proc is None or p.proc.poll() is not None:
            p.restart()  # kills one that died on its own (it still holds its socket and scratch folder)
    for p in procs:
        if not p.ready:
            p.wait_ready()
