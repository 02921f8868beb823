"""apply() runtime: `@avo.apply("task")` on a reference function routes each call to the best
artifact for the call's shape key and falls back to the function itself on a miss, a failed guard
or a kernel exception. `enable(DIR)` / `reload()` / `disable()` swap the whole dispatch table in
one assignment, so concurrent calls see the old table or the new one, never a mix.

The decorated function is the definition's reference signature: its parameters are the
definition's inputs (same names, same order), it returns the outputs (None for in-place tasks).
The runtime allocates the outputs and calls the artifact's DPS entry `run(*inputs, *outputs)`.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from avo.apply.counters import CallCounters
from avo.apply.keys import KeyGuardError
from avo.apply.table import DispatchTable, TaskTable, build_table

log = logging.getLogger("avo.apply")


class _State:
    """The one mutable reference calls read (`table`), the call counters and the log-once set."""

    def __init__(self) -> None:
        self.table: Optional[DispatchTable] = None  # None = disabled: calls go straight through
        self.swap_lock = threading.Lock()  # serialises enable/reload/disable, never taken by calls
        self.counters = CallCounters()
        self.logged: set = set()

    def once(self, level: int, task: str, key: Any, what: str, msg: Callable[[], str], text: Callable[[], str]) -> None:
        """Log a message once per (task, key, kind); the strings are only built the first time."""
        tag = (task, key, what)
        if tag in self.logged:
            return
        self.logged.add(tag)
        log.log(level, "avo.apply %s [%s]: %s", task, text(), msg())


_STATE = _State()


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enable(*dirs: Union[str, Path]) -> dict[str, list[str]]:
    """Load every artifact under the given folders and route decorated calls to them. Raises
    ArtifactError (old table kept) if any artifact is invalid. Returns {task: [artifacts]}."""
    if not dirs:
        raise TypeError("enable() needs at least one artifact folder")
    with _STATE.swap_lock:
        table = build_table(tuple(Path(d) for d in dirs), _interpret())
        _STATE.logged = set()
        _STATE.table = table  # the swap: one reference assignment
    return table.summary()


def reload() -> dict[str, list[str]]:
    """Re-read the enabled folders (hot swap). The new table is built fully before it replaces the
    old one; on an invalid artifact the old table stays and ArtifactError is raised."""
    with _STATE.swap_lock:
        cur = _STATE.table
        if cur is None:
            raise RuntimeError("avo.apply.reload(): not enabled (call avo.apply.enable(DIR) first)")
        table = build_table(cur.dirs, _interpret())
        _STATE.logged = set()
        _STATE.table = table
    return table.summary()


def disable() -> None:
    """Route every decorated call to its original function again."""
    with _STATE.swap_lock:
        _STATE.table = None


def enabled() -> bool:
    return _STATE.table is not None


def stats(reset: bool = False) -> dict[str, dict[str, Any]]:
    """Per task: calls, hits (= exact + nearest), misses (no artifact for the key), fallbacks (a
    guard failed, or the key was disabled after an error), errors (the kernel raised),
    `reasons` (miss/fallback/error reasons with counts) and `artifacts` (hits per artifact).
    reset=True returns the counts and starts counting from zero."""
    out = _STATE.counters.snapshot()
    if reset:
        _STATE.counters.reset()
    return out


def note_fallback(task: str, reason: str) -> None:
    """For integrations: a call the integration kept on the engine's own path (a feature the
    definition does not cover, e.g. GQA or a padding mask) counts as a fallback of `task`."""
    if _STATE.table is not None:
        _STATE.counters.bump(task, "fallback", reason)


def loaded() -> dict[str, list[str]]:
    t = _STATE.table
    return t.summary() if t is not None else {}


class Applied:
    """A reference function wrapped for dispatch (what `@apply(task)` returns)."""

    def __init__(self, task: str, fn: Callable):
        self.task, self.original = task, fn
        self._sig = inspect.signature(fn)
        self._params = tuple(p.name for p in self._sig.parameters.values()
                             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        self._checked: tuple = (0, False)  # (task table id, positional args map to inputs 1:1)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<avo.apply {self.task!r} over {self.original.__qualname__}>"

    def _inputs(self, tt: TaskTable, args: tuple, kwargs: dict) -> Optional[tuple]:
        """The call's inputs in definition order, or None when it cannot be mapped."""
        names = tt.layout.input_names
        if self._checked[0] != tt.id:
            self._checked = (tt.id, self._params[:len(names)] == names)
        if not kwargs and len(args) == len(names) and self._checked[1]:
            return args
        try:
            ba = self._sig.bind(*args, **kwargs)
        except TypeError:
            return None
        ba.apply_defaults()
        extra = [n for n in ba.arguments if n not in names
                 and ba.arguments[n] is not self._sig.parameters[n].default]
        if extra or any(n not in ba.arguments for n in names):
            return None
        return tuple(ba.arguments[n] for n in names)

    def __call__(self, *args, **kwargs):
        table = _STATE.table  # read once: this call uses this table throughout
        if table is None:
            return self.original(*args, **kwargs)
        task = self.task
        tt = table.tasks.get(task)
        if tt is None:
            _STATE.counters.bump(task, "miss", "no artifact for task")
            return self.original(*args, **kwargs)
        inputs = self._inputs(tt, args, kwargs)
        if inputs is None:
            return self._fallback(task, None, "signature", lambda: "arguments do not map onto the definition's inputs",
                                  args, kwargs, tt)
        key = tt.fast_key(inputs)
        if key is None:  # the shapes do not fit the definition: the slow path says why
            try:
                key = tt.layout.call_key(inputs)
            except KeyGuardError as e:
                return self._fallback(task, None, "guard:shape", lambda: str(e), args, kwargs, tt)
        route = tt.route(key)
        if route.__class__ is str:
            if route == "miss":
                _STATE.counters.bump(task, "miss", "miss")
                _STATE.once(logging.DEBUG, task, key, "miss", lambda: "no artifact covers this key",
                            lambda: tt.layout.text(key))
                return self.original(*args, **kwargs)
            return self._fallback(task, key, route, lambda: route, args, kwargs, tt)
        device = None
        for i in tt.tensor_positions:
            t = inputs[i]
            if device is None:
                device = t.device
            elif t.device != device:
                return self._fallback(task, key, "guard:device", lambda: "inputs on different devices", args, kwargs, tt)
            if not t.is_contiguous():
                return self._fallback(task, key, "guard:contiguous",
                                      lambda: f"input {tt.layout.input_names[i]!r} is not contiguous", args, kwargs, tt)
        if route.device_type is not None and device is not None and device.type != route.device_type:
            return self._fallback(task, key, "guard:device",
                                  lambda: f"inputs on {device.type}, the artifact runs on {route.device_type}",
                                  args, kwargs, tt)
        outs = [torch.empty(shape, dtype=dt, device=device) for shape, dt in route.outputs]
        try:
            route.fn(*inputs, *outs)
        except Exception as e:
            tt.disable(key, "disabled after error")
            _STATE.counters.bump(task, "error", f"error: {type(e).__name__}")
            _STATE.once(logging.WARNING, task, key, "error",
                        lambda: f"artifact {route.artifact} raised {type(e).__name__}: {e}; using the original "
                                "function for this key until reload()", lambda: route.key_text)
            return self.original(*args, **kwargs)
        _STATE.counters.bump(task, route.kind, route.artifact)
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _fallback(self, task: str, key: Any, reason: str, msg: Callable[[], str], args: tuple, kwargs: dict,
                  tt: TaskTable):
        _STATE.counters.bump(task, "fallback", reason)
        _STATE.once(logging.INFO, task, key, reason, lambda: f"fallback to the original function: {msg()}",
                    lambda: "?" if key is None else tt.layout.text(key))
        return self.original(*args, **kwargs)


def apply(task: str) -> Callable[[Callable], Applied]:
    """Decorator factory: `@avo.apply("grammar_bitmask")` over a reference implementation."""
    if not isinstance(task, str) or not task:
        raise TypeError("avo.apply(task): task must be a non-empty task name, e.g. @avo.apply('grammar_bitmask')")

    def deco(fn: Callable) -> Applied:
        if not callable(fn):
            raise TypeError(f"@avo.apply({task!r}) decorates a function, got {type(fn).__name__}")
        return Applied(task, fn)
    return deco
