"""Device faults that surface after the kernel call returned.

A kernel that raises at launch is caught where it is called (runtime.py: the original function
runs, the key is disabled). A fault on the GPU itself (an illegal address, a device-side assert)
is reported asynchronously: by the next call that synchronizes with the device. To attribute it,
the runtime records a CUDA event after each of the first `checks` launches of every (task, key)
on a device (its probation; `checks=None` fences every launch, 0 none) and keeps them pending
until they complete. The pending events are polled (non-blocking `query()`) at the start of every
avo.apply call, and waited for by `avo.apply.synchronize()`, the sync point an engine can call
(after a step, before reading results). When a query or the sync raises, the launches still
pending are the suspects: their keys are disabled (reason `disabled after device fault`), the
fault is counted as an error `device fault` of each task, logged with the artifacts and keys, and
written to the quarantine file when one is set (`enable(..., quarantine=PATH)`: a restarted
engine skips those kernels on those keys), then `DeviceFault` is raised: the outputs of the
faulting launch are garbage, and a sticky CUDA error leaves the context unusable, so the engine
must not carry on silently.

Not covered: launches after a key's probation (their faults surface as the engine's own CUDA
error, unattributed), and launches replayed from a captured CUDA graph (no Python runs there;
the fence of the capture is not recorded, events cannot be queried inside a capture).
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger("avo.apply")

DEFAULT_CHECKS = 16  # fenced launches per (task, key, device) before the key is trusted


class DeviceFault(RuntimeError):
    """A device fault surfaced while avo kernels were in flight; names the suspects."""


@dataclass
class Launch:
    event: Any  # has .query() -> bool (raises on a device error)
    task: str
    table: Any  # the TaskTable whose key to disable
    key: tuple
    key_text: str
    artifact: str
    digest: str


def cuda_event(device) -> Any:
    import torch
    ev = torch.cuda.Event()
    ev.record(torch.cuda.current_stream(device))
    return ev


def _capturing_now() -> bool:
    import torch
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def capturing(device) -> bool:
    import torch
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class FaultWatch:
    """Pending fences of recent avo launches. `event_factory(device)` records one (CUDA events by
    default; tests pass a fake with `devices=("cpu",)`). How many launches per key are fenced is
    the route's `probation` (table.py, from enable(fault_checks=...))."""

    def __init__(self, event_factory: Callable = cuda_event, devices: tuple = ("cuda",),
                 quarantine: Optional[Path] = None, on_fault: Optional[Callable[[Launch, str], None]] = None):
        self.event_factory = event_factory
        self.devices = devices
        self.quarantine = Path(quarantine) if quarantine is not None else None
        self.on_fault = on_fault  # counts the error (runtime's counters)
        self.pending: collections.deque = collections.deque()
        self._lock = threading.Lock()  # only on a fault, and for new probation entries

    def after_launch(self, device, tt, key, route) -> None:
        """Called after a kernel on probation returned (route.probation != 0): fence it."""
        if route.probation > 0:
            route.probation -= 1
        if device is None or device.type not in self.devices or (device.type == "cuda" and capturing(device)):
            return
        self.pending.append(Launch(self.event_factory(device), tt.task, tt, key, route.key_text, route.artifact,
                                   route.digest))

    def poll(self) -> None:
        """Drop the completed fences from the front; on a device error, fault()."""
        pending = self.pending
        if pending and "cuda" in self.devices and _capturing_now():
            return  # no event queries inside a CUDA graph capture: the next call after it polls
        while pending:
            try:
                launch = pending[0]
            except IndexError:  # another thread emptied it
                return
            try:
                done = launch.event.query()
            except Exception as e:  # noqa: BLE001: a CUDA error of any type
                self.fault(e)
            if not done:
                return
            try:
                pending.popleft()
            except IndexError:
                return

    def synchronize(self, device=None) -> None:
        """Wait for the device, then check every pending fence; on a device error, fault()."""
        import torch
        if "cuda" in self.devices and torch.cuda.is_available():
            try:
                torch.cuda.synchronize(device)
            except Exception as e:  # noqa: BLE001
                self.fault(e)
        self.poll()

    def fault(self, error: BaseException) -> None:
        with self._lock:
            suspects = list(self.pending)
            self.pending.clear()
        what = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        for s in suspects:
            s.table.disable(s.key, "disabled after device fault")
            if self.on_fault is not None:
                self.on_fault(s, what)
        if self.quarantine is not None and suspects:
            stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.quarantine.parent.mkdir(parents=True, exist_ok=True)
            with open(self.quarantine, "a") as f:
                for s in suspects:
                    f.write(json.dumps({"task": s.task, "artifact": s.artifact, "digest": s.digest, "key": s.key_text,
                                        "error": what, "time": stamp}) + "\n")
        names = "; ".join(f"{s.task} [{s.key_text}] by {s.artifact}" for s in suspects) or "none in flight"
        log.warning("avo.apply: device fault (%s); avo kernels in flight: %s; those keys are disabled%s",
                    what, names, f", quarantined in {self.quarantine}" if self.quarantine and suspects else "")
        raise DeviceFault(f"device fault ({what}); avo kernels in flight when it surfaced: {names}. Their "
                          "outputs are not valid; the keys are disabled") from error
