"""The dispatch table: every loaded artifact's kernel, indexed by shape key, per task. Built whole
by `build_table` and never mutated afterwards except for its route cache and its disabled keys
(so `reload()` can swap one reference and a call never sees a half-loaded table).

Policy for a call key on a device (see docs/apply.md):
1. exact: artifacts verified on exactly this key;
2. range: artifacts whose `checked_ranges` hold the call (other axes, dtypes and scalars equal to a
   verified key's);
3. nearest (only with `Policy.nearest`): same dtypes, same scalars, every var axis inside the
   artifact's declared `ranges`; the smallest log-space distance over the var axes first;
4. otherwise a miss: the caller runs the original function.
Within the first tier that has candidates: with `Policy.require_faster`, the candidate with the
highest measured speed-up over the replaced call on this GPU model, if above `min_speedup`
(else a fallback "not measured on <gpu>" / "slower than the replaced call on <gpu>"); without it,
the winner of the key, then the lowest recorded latency.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from avo.apply.artifact import Artifact, ArtifactError, find_artifacts, load_entry, read_artifact
from avo.apply.faults import DEFAULT_CHECKS
from avo.apply.keys import ANY, CallKey, KeyLayout, call_semantics, ranked_candidates
from avo.apply.speed import TASK_BASELINE, SpeedBook, export_records, read_speed_files
from avo.harness.inputs import TORCH_DTYPES
from avo.schema import Definition

ROUTE_CACHE_MAX = 4096  # distinct (call key, GPU) routes remembered per task (a bound, not a tuning knob)
_TABLE_IDS = itertools.count(1)


@dataclass(frozen=True)
class Policy:
    """How keys are served (enable()'s keywords)."""
    nearest: bool = False  # opt-in: the nearest-key rule inside declared (unchecked) ranges
    require_faster: bool = True  # serve only where measured faster than the replaced call on this GPU
    min_speedup: float = 1.0  # "faster": replaced latency / kernel latency above this
    fault_checks: Optional[int] = DEFAULT_CHECKS  # launches per (key, GPU) fenced for device faults; None: every one


@dataclass(frozen=True)
class Entry:
    """One (artifact, verified key): where a key routes to."""
    fn: Callable
    artifact: str
    digest: str  # the kernel (Artifact.digest): speed records and quarantine name it
    key_text: str  # the verified key (canonical string)
    axes: dict  # the workload's axes (covers output-only axes)
    out_dtypes: tuple  # torch dtype per definition output
    device_type: Optional[str]  # "cuda" / "cpu" for Triton, None for python (any device)
    won: bool
    latency_ms: float


class Route:
    """A resolved call key on a GPU model: the kernel and its output buffers' shapes and dtypes.
    `probation`: launches still to be fenced for device faults (faults.py; -1: every launch)."""
    __slots__ = ("fn", "outputs", "artifact", "kind", "device_type", "key_text", "digest", "probation")

    def __init__(self, fn: Callable, outputs: tuple, artifact: str, kind: str, device_type: Optional[str],
                 key_text: str, digest: str = "", probation: int = 0):
        self.fn, self.outputs, self.artifact, self.kind = fn, outputs, artifact, kind  # outputs: ((shape, dtype), ...)
        self.device_type, self.key_text, self.digest, self.probation = device_type, key_text, digest, probation


@dataclass
class TaskTable:
    task: str
    definition: Definition
    layout: KeyLayout
    exact: dict  # CallKey -> [Entry], won first then lowest latency
    checked: list  # (CallKey, checked ranges, rank, Entry)
    candidates: list  # (CallKey, declared ranges, rank, Entry): the nearest rule
    known_dtypes: tuple  # per tensor input: the dtypes some artifact covers
    artifacts: list[str]
    policy: Policy = field(default_factory=Policy)
    speed: SpeedBook = field(default_factory=SpeedBook)
    id: int = field(default_factory=lambda: next(_TABLE_IDS))
    cache: dict = field(default_factory=dict)  # (hardware, replaced call) -> {CallKey: Route | reason str}
    disabled: dict = field(default_factory=dict)  # CallKey -> reason, until the next reload

    def __post_init__(self) -> None:
        self.fast_key = self.layout.compile_fast()
        self.tensor_positions = tuple(i for i, _ in self.layout.tensor_inputs)
        self.inplace_positions = frozenset(i for i, n in enumerate(self.layout.input_names)
                                           if n in self.definition.inplace)

    @property
    def n_inputs(self) -> int:
        return len(self.layout.input_names)

    def route(self, key: CallKey, hardware: str, against: str = TASK_BASELINE) -> Union[Route, str]:
        """Where `key` goes on this GPU model for a caller replacing `against` (Applied.replaces):
        with require_faster, only speed records measured against that same call count."""
        if self.disabled:
            why = self.disabled.get(key)
            if why is not None:
                return why
        cache = self.cache.get((hardware, against))
        if cache is None:
            cache = self.cache.setdefault((hardware, against), {})
        r = cache.get(key)
        if r is None:
            r = self._resolve(key, hardware, against)
            if len(cache) >= ROUTE_CACHE_MAX:  # e.g. a KV length that grows for ever: start over
                cache.clear()               # rather than resolve every new key on every call
            cache[key] = r
        return r

    def disable(self, key: CallKey, reason: str) -> None:
        self.disabled[key] = reason  # until the next reload

    def tiers(self, key: CallKey) -> tuple[str, list]:
        """(kind, candidate entries in policy order) of the first tier that has any."""
        entries = self.exact.get(key)
        if entries:
            return "exact", entries
        var = self.layout.var_axes
        if self.checked:
            found = ranked_candidates(key, var, self.checked, unpinned_scalars=False)
            if found:
                return "range", found
        if self.policy.nearest:
            found = ranked_candidates(key, var, self.candidates)
            if found:
                return "nearest", found
        return "miss", []

    def _resolve(self, key: CallKey, hardware: str, against: str = TASK_BASELINE) -> Union[Route, str]:
        kind, entries = self.tiers(key)
        if not entries:
            bad = [dt for dt, ok in zip(key[1], self.known_dtypes) if dt not in ok]
            return f"guard:dtype {bad[0]}" if bad else "miss"
        entry = entries[0]
        if self.policy.require_faster:
            picked = self.fastest(entries, hardware, against)
            if isinstance(picked, str):
                return picked
            entry = picked
        axes = {**entry.axes, **self.definition.const_axes, **self.layout.axes_of(key)}
        outs = tuple((tuple(int(a) if a.isdigit() else axes[a] for a in spec.shape or []), dt)
                     for spec, dt in zip(self.definition.outputs.values(), entry.out_dtypes))
        checks = self.policy.fault_checks
        return Route(entry.fn, outs, entry.artifact, kind, entry.device_type, self.layout.text(key), entry.digest,
                     -1 if checks is None else max(0, int(checks)))

    def fastest(self, entries: list, hardware: str, against: str = TASK_BASELINE) -> Union[Entry, str]:
        """The entry measured fastest against the replaced call `against` on this GPU model, if
        faster than policy.min_speedup; else the reason it is not served (a record against another
        call, e.g. the task's torch reference where xgrammar's kernel is replaced, does not count)."""
        best, measured, other = None, False, False
        for e in entries:
            rec = self.speed.get(e.digest, e.key_text, hardware, against)
            if rec is None:
                other = other or bool(self.speed.measured_against(e.digest, e.key_text, hardware) - {against})
                continue
            measured = True
            if rec.ratio > self.policy.min_speedup and (best is None or rec.ratio > best[0]):
                best = (rec.ratio, e)
        if best is not None:
            return best[1]
        if measured:
            return f"slower than the replaced call on {hardware}" if against == TASK_BASELINE else \
                f"slower than {against} on {hardware}"
        if other:
            return f"no speed record against {against} on {hardware}"
        return f"not measured on {hardware}"


@dataclass(frozen=True)
class DispatchTable:
    dirs: tuple
    tasks: dict  # task -> TaskTable
    interpret: bool
    policy: Policy = field(default_factory=Policy)
    quarantine: Optional[Path] = None

    def summary(self) -> dict[str, list[str]]:
        return {t: list(tt.artifacts) for t, tt in self.tasks.items()}


def _device_type(art: Artifact, interpret: bool) -> Optional[str]:
    if art.solution.spec.language == "python":
        return None
    return "cpu" if interpret else "cuda"


def read_quarantine(path: Optional[Path]) -> set:
    """(kernel digest, key) pairs a device fault disabled (avo/apply/faults.py writes them)."""
    if path is None or not Path(path).exists():
        return set()
    out = set()
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
            out.add((row["digest"], row["key"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def build_table(dirs: tuple, interpret: bool, policy: Optional[Policy] = None,
                quarantine: Optional[Path] = None) -> DispatchTable:
    """Read, validate and import every artifact under dirs; ArtifactError on the first bad one."""
    policy = policy or Policy()
    arts: list[Artifact] = []
    for d in dirs:
        arts += [read_artifact(p) for p in find_artifacts(Path(d))]
    by_task: dict[str, list[Artifact]] = {}
    for a in arts:
        by_task.setdefault(a.manifest.task, []).append(a)
    speed = SpeedBook([r for a in arts for r in export_records(a)] + read_speed_files(Path(d) for d in dirs))
    skip = read_quarantine(quarantine)
    tasks = {}
    for task, group in by_task.items():
        d = group[0].definition
        for a in group[1:]:
            if call_semantics(a.definition) != call_semantics(d):
                raise ArtifactError(f"{a.path}: definition of {task!r} (axes, inputs or outputs) differs from "
                                    f"{group[0].path}'s")
        tasks[task] = _task_table(task, d, group, interpret, policy, speed, skip)
    return DispatchTable(tuple(Path(d) for d in dirs), tasks, interpret, policy,
                         Path(quarantine) if quarantine is not None else None)


def _task_table(task: str, d: Definition, group: list[Artifact], interpret: bool, policy: Policy,
                speed: SpeedBook, skip: set) -> TaskTable:
    layout = KeyLayout.of(d)
    exact: dict = {}
    checked, candidates = [], []
    known = [set() for _ in layout.tensor_inputs]
    names = []
    for art in group:
        fn = load_entry(art)
        names.append(f"{art.manifest.name} ({art.path})")
        dev = _device_type(art, interpret)
        for k in art.manifest.keys:
            if (art.digest, k.key) in skip:
                continue
            w = next(t.workload for t in art.traces if t.workload.uuid == k.workload)
            ck = layout.workload_key(d, w)
            e = Entry(fn, art.manifest.name, art.digest, k.key, dict(k.axes),
                      tuple(TORCH_DTYPES[k.dtypes.get(n, s.dtype)] for n, s in d.outputs.items()),
                      dev, k.won, k.latency_ms)
            for slot, dt in zip(known, ck[1]):
                slot.add(dt)
            # rank among equally near keys: the artifact that won the key, then the faster one
            rank = (not k.won, k.latency_ms)
            candidates.append((ck, art.manifest.ranges, rank, e))
            if art.manifest.checked_ranges:
                checked.append((ck, art.manifest.checked_ranges, rank, e))
            if any(s is ANY for s in ck[2]):
                continue  # an unpinned scalar matches by the nearest policy only
            exact.setdefault(ck, []).append((rank, e))
    exact = {ck: [e for _, e in sorted(v, key=lambda x: x[0])] for ck, v in exact.items()}
    return TaskTable(task, d, layout, exact, checked, candidates, tuple(frozenset(s) for s in known), names,
                     policy, speed)
