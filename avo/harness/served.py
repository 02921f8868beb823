"""A long-lived evaluator for commands that each judge one kernel: `avo workspace serve RUN` keeps
one Evaluator (its candidate and reference workers, and the kept trials' reference outputs) up
between `avo workspace submit`s and `avo eval`s. Each of those started its own workers before: 7
to 9 s of `spawn` per attempt on an H100 (docs/data/workspace-attention-s15/README.md).

A Unix socket in a private folder (mode 0700) with a random auth key beside it (0600). One client
at a time, one request at a time, so timings never overlap on the GPU; others wait their turn.
Each request carries the client's own EvalConfig, so `avo eval --peer` and a run's gate settings
are honoured; only the device and the output transfer must be the served ones (the workers were
started for them).

**(decision)** Requests are JSON, never pickles, and name a task the server loaded itself (by name
and a digest of the client's copy): the key file is readable by any process of the user, a
candidate worker's included, and a pickle or a client-supplied task (its reference runs unsandboxed
in the reference worker) would be code run outside the sandbox. What a stranger holding the key
can do is ask for evaluations of solutions, which run sandboxed like any candidate."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import tempfile
import threading
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Callable, Optional

from avo.config import EvalConfig
from avo.harness.runner import ABResult, EvalReport, Evaluator, resolve_device
from avo.harness.workerproc import HarnessError
from avo.schema import Solution, Workload
from avo.tasks import Task

ADDRESS_ENV = "AVO_EVALUATOR"  # `avo eval` uses the evaluator served at this socket path
KEY_FILE = "key"
IDLE_S = 120.0  # a client silent this long between requests is dropped: the next one gets the evaluator
HANDSHAKE_S = 10.0
MAX_REQUEST = 64 << 20  # bytes of one JSON request (solutions are source text)


def address_for(lineage: Path) -> Path:
    """Where a run's evaluator is served: short (a Unix socket path has ~100 bytes), per user and
    per lineage, outside the lineage (nothing of it belongs in a run's files)."""
    h = hashlib.sha256(str(Path(lineage).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"avo-eval-{os.getuid()}-{h}" / "sock"


def _private(folder: Path) -> None:
    """The socket's folder must be this user's and closed to others: in a shared /tmp another user
    could otherwise have made it first and answer in the server's place."""
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise HarnessError(f"{folder} is not private to this user (owner uid {st.st_uid}, mode "
                           f"{oct(st.st_mode & 0o777)}): not serving or using an evaluator there")


def _alive(address: Path) -> bool:
    try:
        Client(str(address), family="AF_UNIX", authkey=(address.parent / KEY_FILE).read_bytes()).close()
        return True
    except (OSError, EOFError):
        return False
    except Exception:  # an AuthenticationError: something answers there
        return True


def task_digest(task: Task) -> str:
    return hashlib.sha256(task.model_dump_json().encode()).hexdigest()


class NotServed(HarnessError):
    """The served evaluator does not hold this task as the client loaded it."""


def serve(address: Path, cfg: EvalConfig, tasks: list[Task], say: Callable[[str], None] = print) -> None:
    """Serve an Evaluator for `tasks` at `address` until SIGINT/SIGTERM; the socket and key are
    removed after."""
    folder = address.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private(folder)
    if address.exists():
        if _alive(address):
            raise HarnessError(f"an evaluator is already served at {address}")
        address.unlink()  # left by a server that was killed
    key = secrets.token_bytes(32)
    fd = os.open(folder / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    by_name = {t.name: (t, task_digest(t)) for t in tasks}

    def stop(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, stop)
    try:
        with Evaluator(cfg) as ev, Listener(str(address), family="AF_UNIX") as lis:
            ev.start()
            say(f"evaluator served at {address} ({ev.device}, {ev.hardware}) for {', '.join(by_name)}; "
                "stop it with Ctrl-C")
            while True:
                try:
                    conn = lis.accept()
                except OSError as e:
                    say(f"refused a connection: {type(e).__name__}")
                    continue
                with conn:
                    why = _authenticate(conn, key)
                    if why:
                        say(f"refused a connection: {why}")
                        continue
                    _session(ev, by_name, conn, say)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        for p in (address, folder / KEY_FILE):
            p.unlink(missing_ok=True)


def _authenticate(conn, key: bytes) -> str:
    """multiprocessing's mutual HMAC handshake (what Listener(authkey=...) does in accept), within
    HANDSHAKE_S: a client that connects and says nothing must not hold the server. '' when it passed."""
    from multiprocessing.connection import answer_challenge, deliver_challenge
    out: list[str] = []

    def shake():
        try:
            deliver_challenge(conn, key)
            answer_challenge(conn, key)
            out.append("")
        except Exception as e:  # AuthenticationError: a wrong key; OSError/EOFError: gone
            out.append(type(e).__name__)
    t = threading.Thread(target=shake, daemon=True)
    t.start()
    t.join(HANDSHAKE_S)
    if t.is_alive():
        conn.close()  # the handshake's read fails and the thread ends
        return f"no handshake within {HANDSHAKE_S:.0f} s"
    return out[0] if out else "handshake failed"


def _call(ev: Evaluator, by_name: dict, req: dict):
    """One request's answer (JSON-able), or HarnessError."""
    task, digest = by_name.get(req.get("task"), (None, None))
    if task is None or req.get("digest") != digest:
        raise NotServed(f"task {req.get('task')!r} is not served here as the client loaded it "
                        f"(served: {', '.join(by_name)})")
    want = EvalConfig.model_validate(req["config"])
    if resolve_device(want.device) != ev.device or want.output_transfer != ev.cfg.output_transfer:
        raise HarnessError(f"this evaluator is served for device {ev.device} with output_transfer "
                           f"{ev.cfg.output_transfer}; the request wants {want.device}/{want.output_transfer}")
    wls = req.get("workloads")
    if wls is not None:
        known = {w.uuid: w for w in task.workloads}
        if any(u not in known for u in wls):
            raise HarnessError(f"unknown workloads of {task.name}: {', '.join(u for u in wls if u not in known)}")
        wls = [known[u] for u in wls]
    sols = [Solution.model_validate(x) for x in req["solutions"]]
    method, rounds = req["method"], int(req.get("rounds", 2))
    served, ev.cfg = ev.cfg, want
    try:
        if method == "evaluate" and len(sols) == 1:
            return ev.evaluate(task, sols[0], wls).model_dump(mode="json")
        if method == "ab" and len(sols) == 2:
            return ev.ab(task, sols[0], sols[1], wls, rounds).model_dump(mode="json")
        if method == "measure":
            return ev.measure(task, sols, wls, rounds)
        raise HarnessError(f"no request {method!r} with {len(sols)} solutions")
    finally:
        ev.cfg = served


def _session(ev: Evaluator, by_name: dict, conn, say) -> None:
    """One client's requests until it hangs up or stays silent for IDLE_S (so no client holds the
    evaluator forever): {"hello"} first, then {method, task, digest, solutions, workloads, config}."""
    while True:
        try:
            if not conn.poll(IDLE_S):
                return
            req = json.loads(conn.recv_bytes(MAX_REQUEST))
            if req.get("method") == "hello":
                out = {"device": ev.device, "hardware": ev.hardware, "pid": os.getpid()}
            else:
                b0 = ev.busy_s
                try:
                    out = {"ok": _call(ev, by_name, req)}
                except NotServed as e:
                    out = {"not_served": str(e)}
                except (HarnessError, ValueError) as e:  # pydantic's ValidationError is a ValueError
                    out = {"error": " ".join(str(e).split())[:2000]}
                out["busy_s"] = ev.busy_s - b0
                say(f"{req.get('method')} {req.get('task')}: {'ok' if 'ok' in out else 'refused'} ({out['busy_s']:.1f} s)")
            conn.send_bytes(json.dumps(out).encode())
        except (EOFError, OSError, ValueError, AttributeError):  # gone, oversized or not a JSON object
            return


class ServedEvaluator:
    """The Evaluator calls a run makes (evaluate, ab, measure, busy_s, device), answered by the
    evaluator served at `address` with this client's `cfg`. HarnessError when none answers."""

    def __init__(self, address: Path, cfg: EvalConfig):
        self.address, self.cfg, self.busy_s = Path(address), cfg, 0.0
        try:
            _private(self.address.parent)
            key = (self.address.parent / KEY_FILE).read_bytes()
            self.conn = Client(str(self.address), family="AF_UNIX", authkey=key)
        except (OSError, EOFError) as e:
            raise HarnessError(f"no evaluator answers at {self.address} ({type(e).__name__})") from None
        info = self._send({"method": "hello"}, "hello")
        self.device, self.hardware, self.pid = info["device"], info["hardware"], info["pid"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.conn.close()

    def default_workloads(self, task: Task) -> list[Workload]:
        return task.select("gpu" if self.device == "cuda" else "cpu")

    def _send(self, req: dict, what: str) -> dict:
        try:
            self.conn.send_bytes(json.dumps(req).encode())
            return json.loads(self.conn.recv_bytes())
        except (OSError, EOFError):
            raise HarnessError(f"the evaluator served at {self.address} went away during {what}") from None

    def _call(self, method: str, task: Task, sols: list[Solution], workloads: Optional[list[Workload]], rounds: int = 2):
        out = self._send({"method": method, "task": task.name, "digest": task_digest(task),
                          "solutions": [s.model_dump(mode="json") for s in sols],
                          "workloads": None if workloads is None else [w.uuid for w in workloads],
                          "rounds": rounds, "config": self.cfg.model_dump(mode="json")}, method)
        self.busy_s += out.get("busy_s", 0.0)
        if "not_served" in out:
            raise NotServed(out["not_served"])
        if "error" in out:
            raise HarnessError(out["error"])
        return out["ok"]

    def evaluate(self, task: Task, solution: Solution, workloads: Optional[list[Workload]] = None) -> EvalReport:
        return EvalReport.model_validate(self._call("evaluate", task, [solution], workloads))

    def ab(self, task: Task, best: Solution, cand: Solution, workloads: Optional[list[Workload]] = None,
           rounds: int = 2) -> ABResult:
        return ABResult.model_validate(self._call("ab", task, [best, cand], workloads, rounds))

    def measure(self, task: Task, solutions: list[Solution], workloads: Optional[list[Workload]] = None,
                rounds: int = 2) -> dict[str, list[list[float]]]:
        return self._call("measure", task, solutions, workloads, rounds)


def served_or_local(address: Optional[Path], cfg: EvalConfig, note: Callable[[str], None]):
    """The evaluator served at `address` if one answers there, else a fresh local Evaluator (with a
    note when a socket was left by a server that is gone)."""
    if address is not None and Path(address).exists():
        try:
            return ServedEvaluator(address, cfg)
        except HarnessError as e:
            note(f"{e}: evaluating here instead")
    return Evaluator(cfg)
