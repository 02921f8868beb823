"""When a run may be stopped: SIGINT/SIGTERM are deferred by phase (an operator step is abandoned,
an evaluation finishes, a commit and its log line are never cut), and the crash-test hook that
kills the process at a named point. Shared by the local and the Ray backends (the Ray store
never installs the handlers; its phases only mark what a signal would have cut)."""
from __future__ import annotations

import os
import signal
from pathlib import Path


class StopSignal:
    """SIGINT/SIGTERM: stop after the current step. An operator step (LLM calls) is abandoned
    at once; an evaluation finishes (it is time-limited) unless a second signal comes; a
    commit and its log line are never interrupted."""

    def __init__(self):
        self.count, self.phase, self._old = 0, "idle", {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)

    def _handler(self, signum, frame) -> None:
        self.count += 1
        if self.phase == "commit":
            return
        if self.phase in ("operator", "report") or self.count >= 2:
            raise KeyboardInterrupt


def with_phase(stop: StopSignal, phase: str, fn):
    """Run fn with signals deferred (phase 'commit') and restore the previous phase."""
    prev, stop.phase = stop.phase, phase
    try:
        return fn()
    finally:
        stop.phase = prev


def fault_point(name: str) -> None:
    """Crash-test hook: AVO_FAULT=<name>:<marker file> kills this process with SIGKILL here,
    once (the marker records that it happened). tests/test_resume.py uses it to land a kill
    inside the few milliseconds between a commit and its log line."""
    spec = os.environ.get("AVO_FAULT", "")
    if spec.startswith(name + ":"):
        marker = Path(spec.split(":", 1)[1])
        if not marker.exists():
            marker.write_text(name)
            os.kill(os.getpid(), signal.SIGKILL)
