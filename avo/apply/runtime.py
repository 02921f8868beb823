"""apply() runtime: `@avo.apply("task")` on a reference function routes each call to the best
artifact for the call's shape key and falls back to the function itself on a miss, a failed guard
or a kernel exception. `enable(DIR)` / `reload()` / `disable()` swap the whole dispatch table in
one assignment, so concurrent calls see the old table or the new one, never a mix.

The decorated function is the definition's reference signature: its parameters are the
definition's inputs (same names, same order), it returns the outputs (None for in-place tasks).
The runtime allocates the outputs and calls the artifact's DPS entry `run(*inputs, *outputs)`.

Policy (docs/apply.md): verified keys only (exact, or inside a range the artifact was checked on;
the nearest-key rule is `enable(..., nearest=True)`), and only on a GPU model where the artifact
measured faster than the call it replaces (`require_faster=True`; False for CPU tests, where
there is no speed claim). Under torch.compile a call goes through the function's custom op
(avo/apply/ops.py); `record(DIR)` writes the keys the calls saw (avo/apply/record.py); device
faults surfacing later are attributed by avo/apply/faults.py.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from avo.apply.counters import CallCounters
from avo.apply.faults import DEFAULT_CHECKS, DeviceFault, FaultWatch, Launch  # noqa: F401 (re-exported)
from avo.apply.keys import KeyGuardError, call_semantics
from avo.apply.ops import build_op
from avo.apply.record import Recorder
from avo.apply.speed import TASK_BASELINE, hardware_name
from avo.apply.table import DispatchTable, Policy, TaskTable, build_table
from avo.schema import Definition

log = logging.getLogger("avo.apply")

__all__ = ["Applied", "DeviceFault", "apply", "count", "disable", "enable", "enabled", "loaded", "note_fallback", "op",
           "record", "recording", "reload", "stats", "synchronize", "table_token"]


class _State:
    """The one mutable reference calls read (`table`), the call counters and the log-once set."""

    def __init__(self) -> None:
        self.table: Optional[DispatchTable] = None  # None = disabled: calls go straight through
        self.swap_lock = threading.Lock()  # serialises enable/reload/disable, never taken by calls
        self.counters = CallCounters()
        self.logged: set = set()
        self.recorder: Optional[Recorder] = None
        self.faults = FaultWatch(on_fault=_count_fault)
        self.applied: "weakref.WeakSet[Applied]" = weakref.WeakSet()
        self.reference_ops: dict[str, "Applied"] = {}  # task -> Applied over the definition's reference
        self.definitions: dict[str, Any] = {}  # task -> (Definition, baseline) from evaluators/, or an Exception

    def once(self, level: int, task: str, key: Any, what: str, msg: Callable[[], str], text: Callable[[], str]) -> None:
        """Log a message once per (task, key, kind); the strings are only built the first time."""
        tag = (task, key, what)
        if tag in self.logged:
            return
        self.logged.add(tag)
        log.log(level, "avo.apply %s [%s]: %s", task, text(), msg())


def _count_fault(launch: Launch, what: str) -> None:
    _STATE.counters.bump(launch.task, "error", "device fault")


_STATE = _State()


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def enable(*dirs: Union[str, Path], nearest: bool = False, require_faster: bool = True, min_speedup: float = 1.0,
           fault_checks: Optional[int] = DEFAULT_CHECKS, quarantine: Union[str, Path, None] = None,
           ) -> dict[str, list[str]]:
    """Load every artifact under the given folders and route decorated calls to them. Raises
    ArtifactError (old table kept) if any artifact is invalid. Returns {task: [artifacts]}.

    nearest: also serve unverified keys by the nearest-key rule inside the artifacts' declared
        ranges (off: a key is served only if an artifact was verified on it, or on a range it was
        checked on).
    require_faster: serve a key on a device only where the artifact measured faster than the call
        it replaces on that GPU model (speed records: the artifacts' traces, `speed-*.jsonl` in the
        folders). CPU / interpreter timings make no claim: tests on CPU pass False.
    min_speedup: "faster" means replaced latency / kernel latency above this.
    fault_checks: launches per key fenced to attribute asynchronous device faults (None: all).
    quarantine: a JSONL file; keys disabled by a device fault are added to it and skipped by
        enable()/reload() from then on."""
    if not dirs:
        raise TypeError("enable() needs at least one artifact folder")
    policy = Policy(nearest=bool(nearest), require_faster=bool(require_faster), min_speedup=float(min_speedup),
                    fault_checks=fault_checks)
    with _STATE.swap_lock:
        table = build_table(tuple(Path(d) for d in dirs), _interpret(), policy,
                            Path(quarantine) if quarantine is not None else None)
        fw = _STATE.faults
        fw.quarantine = table.quarantine
        _publish(table)
    return table.summary()


def reload() -> dict[str, list[str]]:
    """Re-read the enabled folders (hot swap) with the same policy. The new table is built fully
    before it replaces the old one; on an invalid artifact the old table stays and ArtifactError
    is raised. Compiled graphs call the new table at their next call (the custom op reads it);
    a captured CUDA graph replays the kernels it captured until it is captured again."""
    with _STATE.swap_lock:
        cur = _STATE.table
        if cur is None:
            raise RuntimeError("avo.apply.reload(): not enabled (call avo.apply.enable(DIR) first)")
        table = build_table(cur.dirs, _interpret(), cur.policy, cur.quarantine)
        _publish(table)
    return table.summary()


def _publish(table: DispatchTable) -> None:
    _STATE.logged = set()
    _STATE.table = table  # the swap: one reference assignment
    for task in table.tasks:
        _reference_op(task)
    for a in list(_STATE.applied):
        a._bind_op()


def disable() -> None:
    """Route every decorated call to its original function again (compiled graphs too: their op
    reads the table at each call)."""
    with _STATE.swap_lock:
        _STATE.table = None


def enabled() -> bool:
    return _STATE.table is not None


def synchronize(device=None) -> None:
    """A sync point that attributes device faults: waits for the device, then raises DeviceFault
    naming the avo kernels in flight if it reported an error (their keys are disabled)."""
    _STATE.faults.synchronize(device)


def stats(reset: bool = False) -> dict[str, dict[str, Any]]:
    """Per task: calls, hits (= exact + range + nearest), misses (no artifact for the key),
    fallbacks (a guard failed, no speed claim on this GPU, or the key was disabled after an
    error), errors (the kernel raised, or a device fault), `reasons` (miss/fallback/error reasons
    with counts), `artifacts` (hits per artifact) and `copies` (inputs copied to a contiguous
    buffer on a hit). reset=True returns the counts and starts counting from zero. Under a CUDA
    graph replay no Python runs: only the calls made while capturing are counted."""
    out = _STATE.counters.snapshot()
    if reset:
        _STATE.counters.reset()
    return out


def note_fallback(task: str, reason: str) -> None:
    """For integrations: a call the integration kept on the engine's own path (a feature the
    definition does not cover, e.g. a padding mask) counts as a fallback of `task` (and, while
    recording, as a call not recorded). Not counted while torch.compile traces (it would count
    the trace, not the calls)."""
    if torch.compiler.is_compiling():
        return
    if _STATE.table is not None:
        _STATE.counters.bump(task, "fallback", reason)
    rec = _STATE.recorder
    if rec is not None:
        rec.skip(task, reason)


def table_token() -> Optional[object]:
    """The dispatch table in force (None: disabled). enable()/reload()/disable() replace it, so a
    decision cached under one token (Applied.decide) is stale once the token changes; a key a
    device fault disables afterwards only moves from served to fallback, which the full dispatch
    handles."""
    return _STATE.table


def count(task: str, outcome: str, reason: str) -> None:
    """Count a call an integration answered itself from a cached Applied.decide() (not while
    torch.compile traces)."""
    _STATE.counters.bump(task, outcome, reason)


def recording() -> bool:
    return _STATE.recorder is not None


def loaded() -> dict[str, list[str]]:
    t = _STATE.table
    return t.summary() if t is not None else {}


# ---- definitions (for ops and recording) --------------------------------------------------------

def task_definition(task: str) -> tuple[Definition, Optional[str]]:
    """(definition, baseline code) of a task: the enabled artifacts' definition, else
    evaluators/<task>/ (its baseline.py too, when the definition is the same). Raises when neither."""
    table = _STATE.table
    tt = table.tasks.get(task) if table is not None else None
    got = _STATE.definitions.get(task)
    if got is None:
        try:
            from avo.tasks import load_task
            t = load_task(task)
            got = (t.definition, t.baseline)
        except Exception as e:  # noqa: BLE001: the caller reports it
            got = e
        _STATE.definitions[task] = got
    if tt is not None:
        same = not isinstance(got, Exception) and call_semantics(got[0]) == call_semantics(tt.definition)
        return tt.definition, (got[1] if same else None)
    if isinstance(got, Exception):
        raise got
    return got


def _reference_op(task: str) -> Optional["Applied"]:
    """The Applied over a loaded task's own reference (its op: torch.ops.avo.<task>)."""
    a = _STATE.reference_ops.get(task)
    if a is None:
        tt = _STATE.table.tasks.get(task) if _STATE.table is not None else None
        if tt is None:
            return None
        ns: dict = {}
        try:
            exec(compile(tt.definition.reference, f"<{task}/reference>", "exec"), ns)
        except Exception as e:  # noqa: BLE001: a reference that needs what this process lacks
            log.info("avo.apply %s: no reference op (%s: %s)", task, type(e).__name__, e)
            return None
        a = _STATE.reference_ops[task] = Applied(task, ns["run"], op_name=task)
    return a


def op(task: str) -> "Applied":
    """The loaded task's reference as an avo.apply function (and its custom op,
    `torch.ops.avo.<task>`): every loaded kernel is callable as a torch op, falling back to the
    task's own reference. Needs enable() first."""
    a = _reference_op(task)
    if a is None:
        raise KeyError(f"avo.apply.op({task!r}): no such loaded task (loaded: {', '.join(loaded()) or 'none'})")
    return a


# ---- recording ----------------------------------------------------------------------------------

def record(out_dir: Union[str, Path]) -> Recorder:
    """Start recording the shape keys every @avo.apply call sees; the returned Recorder writes
    them as problem folders under out_dir on close() / leaving its `with` block (record.py)."""
    with _STATE.swap_lock:
        if _STATE.recorder is not None:
            raise RuntimeError(f"avo.apply.record(): already recording into {_STATE.recorder.out_dir}")

        def stop(r: Recorder) -> None:
            with _STATE.swap_lock:
                if _STATE.recorder is r:
                    _STATE.recorder = None

        rec = Recorder(Path(out_dir), task_definition, stop)
        _STATE.recorder = rec
        for a in list(_STATE.applied):  # so graphs compiled from now on record through the op
            if a._op is None:
                a._bind_op()
    return rec


# ---- the decorated function ---------------------------------------------------------------------

class Applied:
    """A reference function wrapped for dispatch (what `@apply(task)` returns).

    copy_inputs: a non-contiguous input of a call an artifact serves is copied into a contiguous
    buffer (counted in stats()['copies']) instead of falling back (in-place inputs never are).
    op_name: the name of its custom op (torch.ops.avo.<op_name>); default <task>__<function name>.
    replaces: the call this function stands for in the engine, as speed records name it
    (SpeedRecord.against): "task" (default) = the task's own T_b; an integration that replaces
    another call says so (xgrammar_bitmask: "xgrammar"), and require_faster then counts only
    records measured against that call."""

    def __init__(self, task: str, fn: Callable, copy_inputs: bool = False, op_name: Optional[str] = None,
                 replaces: str = TASK_BASELINE):
        self.task, self.original = task, fn
        self.replaces = replaces
        self.copy_inputs = copy_inputs
        self.op_name = op_name or f"{task}__{getattr(fn, '__name__', 'fn')}"
        self._sig = inspect.signature(fn)
        self._params = tuple(p.name for p in self._sig.parameters.values()
                             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        self._checked: tuple = ((), False)  # (input names, positional args map to inputs 1:1)
        self._op = None  # the custom op torch.compile calls; None: compile traces the original
        self._op_inputs = -1
        functools.update_wrapper(self, fn)
        _STATE.applied.add(self)
        if _STATE.table is not None:
            self._bind_op()

    def __repr__(self) -> str:
        return f"<avo.apply {self.task!r} over {self.original.__qualname__}>"

    def _bind_op(self) -> None:
        """Make (or rebind) this function's custom op from the task's definition."""
        try:
            d, _ = task_definition(self.task)
        except Exception:  # noqa: BLE001: no definition anywhere: compile traces the original
            return
        names = tuple(d.inputs)
        if self._params[:len(names)] != names:
            return  # positional arguments would not map onto the op's inputs
        o = build_op(self.op_name, d, self._op_call, owner=self)
        self._op, self._op_inputs = o, (len(names) if o is not None else -1)

    def _inputs(self, names: tuple, args: tuple, kwargs: dict) -> Optional[tuple]:
        """The call's inputs in definition order, or None when it cannot be mapped."""
        if self._checked[0] != names:
            self._checked = (names, self._params[:len(names)] == names)
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
        if torch.compiler.is_compiling():
            return self._compiled(args, kwargs)
        if _STATE.recorder is not None:
            self._record(_STATE.recorder, args, kwargs)
        if _STATE.faults.pending:
            _STATE.faults.poll()
        return self._dispatch(args, kwargs)

    def _compiled(self, args: tuple, kwargs: dict):
        """Under torch.compile: one opaque custom op (its implementation is _op_call at run time)."""
        o = self._op
        if o is None or kwargs or len(args) != self._op_inputs or (
                torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return self.original(*args, **kwargs)
        return o(*args)

    def _op_call(self, args: tuple):
        return self._eager(args, {})

    def _eager(self, args: tuple, kwargs: dict):
        rec = _STATE.recorder
        if rec is not None:
            self._record(rec, args, kwargs)
        fw = _STATE.faults
        if fw.pending:
            fw.poll()
        return self._dispatch(args, kwargs)

    def _record(self, rec: Recorder, args: tuple, kwargs: dict) -> None:
        rec.note(self.task, lambda names: self._inputs(names, args, kwargs))

    def _dispatch(self, args: tuple, kwargs: dict):
        table = _STATE.table  # read once: this call uses this table throughout
        if table is None:
            return self.original(*args, **kwargs)
        task = self.task
        tt = table.tasks.get(task)
        if tt is None:
            _STATE.counters.bump(task, "miss", "no artifact for task")
            return self.original(*args, **kwargs)
        inputs = self._inputs(tt.layout.input_names, args, kwargs)
        if inputs is None:
            return self._fallback(task, None, "signature", lambda: "arguments do not map onto the definition's inputs",
                                  args, kwargs, tt)
        key = tt.fast_key(inputs)
        if key is None:  # the shapes do not fit the definition: the slow path says why
            try:
                key = tt.layout.call_key(inputs)
            except KeyGuardError as e:
                return self._fallback(task, None, "guard:shape", lambda: str(e), args, kwargs, tt)
        # The route first (a cached dict lookup per key and GPU model), the guards only for a call an
        # artifact serves: a key no artifact serves costs the key, one lookup and a counter.
        device = inputs[tt.tensor_positions[0]].device if tt.tensor_positions else None
        route = tt.route(key, hardware_name(device) if device is not None else "none", self.replaces)
        if route.__class__ is str:
            if route == "miss":
                _STATE.counters.bump(task, "miss", "miss")
                _STATE.once(logging.DEBUG, task, key, "miss", lambda: "no artifact covers this key",
                            lambda: tt.layout.text(key))
                return self.original(*args, **kwargs)
            return self._fallback(task, key, route, lambda: route, args, kwargs, tt)
        strided = None
        for i in tt.tensor_positions:
            t = inputs[i]
            if t.device != device:
                return self._fallback(task, key, "guard:device", lambda: "inputs on different devices", args, kwargs, tt)
            if not t.is_contiguous():
                if not self.copy_inputs or i in tt.inplace_positions:
                    return self._fallback(task, key, "guard:contiguous",
                                          lambda: f"input {tt.layout.input_names[i]!r} is not contiguous",
                                          args, kwargs, tt)
                strided = (strided or ()) + (i,)
        if route.device_type is not None and device is not None and device.type != route.device_type:
            return self._fallback(task, key, "guard:device",
                                  lambda: f"inputs on {device.type}, the artifact runs on {route.device_type}",
                                  args, kwargs, tt)
        if strided is not None:
            inputs = list(inputs)
            for i in strided:
                inputs[i] = inputs[i].contiguous()
                _STATE.counters.bump(task, "copy", f"layout copy: {tt.layout.input_names[i]}")
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
        if route.probation:
            _STATE.faults.after_launch(device, tt, key, route)
        _STATE.counters.bump(task, route.kind, route.artifact)
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else tuple(outs)

    def decide(self, args: tuple) -> Optional[tuple[str, str]]:
        """Without calling anything: (outcome, reason) this positional call would be counted with
        when no artifact serves it ("miss"/"fallback"), None when one may serve it (or when only
        the full dispatch can tell: a guard). For integrations that keep the answer per shape
        (transformers_attn) and then call the engine's own function directly; valid while
        `table_token()` is the same object."""
        table = _STATE.table
        if table is None:
            return ("off", "")
        tt = table.tasks.get(self.task)
        if tt is None:
            return ("miss", "no artifact for task")
        inputs = self._inputs(tt.layout.input_names, args, {})
        if inputs is None:
            return None
        key = tt.fast_key(inputs)
        if key is None:
            return None
        device = inputs[tt.tensor_positions[0]].device if tt.tensor_positions else None
        route = tt.route(key, hardware_name(device) if device is not None else "none", self.replaces)
        if route.__class__ is not str:
            return None
        return ("miss", "miss") if route == "miss" else ("fallback", route)

    def _fallback(self, task: str, key: Any, reason: str, msg: Callable[[], str], args: tuple, kwargs: dict,
                  tt: TaskTable):
        _STATE.counters.bump(task, "fallback", reason)
        _STATE.once(logging.INFO, task, key, reason, lambda: f"fallback to the original function: {msg()}",
                    lambda: "?" if key is None else tt.layout.text(key))
        return self.original(*args, **kwargs)


def apply(task: str, copy_inputs: bool = False, op_name: Optional[str] = None,
          replaces: str = TASK_BASELINE) -> Callable[[Callable], Applied]:
    """Decorator factory: `@avo.apply("grammar_bitmask")` over a reference implementation."""
    if not isinstance(task, str) or not task:
        raise TypeError("avo.apply(task): task must be a non-empty task name, e.g. @avo.apply('grammar_bitmask')")

    def deco(fn: Callable) -> Applied:
        if not callable(fn):
            raise TypeError(f"@avo.apply({task!r}) decorates a function, got {type(fn).__name__}")
        return Applied(task, fn, copy_inputs=copy_inputs, op_name=op_name, replaces=replaces)
    return deco
