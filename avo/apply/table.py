"""The dispatch table: every loaded artifact's kernel, indexed by shape key, per task. Built whole
by `build_table` and never mutated afterwards except for its route cache (so `reload()` can swap
one reference and a call never sees a half-loaded table).

Policy for a call key (see docs/apply.md):
1. exact: an artifact verified on exactly this key (won keys first, then the lowest latency);
2. nearest: same dtypes, same scalars, const axes equal (checked with the key), every var axis
   inside the artifact's declared range; the smallest log-space distance over the var axes wins;
3. otherwise a miss: the caller runs the original function.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from avo.apply.artifact import Artifact, ArtifactError, find_artifacts, load_entry, read_artifact
from avo.apply.keys import ANY, CallKey, KeyLayout, nearest_candidate
from avo.harness.inputs import TORCH_DTYPES
from avo.schema import Definition

ROUTE_CACHE_MAX = 4096  # distinct call keys remembered per task (a bound, not a tuning knob)
_TABLE_IDS = itertools.count(1)


@dataclass(frozen=True)
class Entry:
    """One (artifact, verified key): where a key routes to."""
    fn: Callable
    artifact: str
    axes: dict  # the workload's axes (covers output-only axes)
    out_dtypes: tuple  # torch dtype per definition output
    device_type: Optional[str]  # "cuda" / "cpu" for Triton, None for python (any device)
    won: bool
    latency_ms: float


@dataclass(frozen=True)
class Route:
    """A resolved call key: the kernel and its output buffers' shapes and dtypes."""
    fn: Callable
    outputs: tuple  # ((shape, dtype), ...) in definition order
    artifact: str
    kind: str  # "exact" | "nearest"
    device_type: Optional[str]
    key_text: str


@dataclass
class TaskTable:
    task: str
    definition: Definition
    layout: KeyLayout
    exact: dict
    candidates: list
    known_dtypes: tuple  # per tensor input: the dtypes some artifact covers
    artifacts: list[str]
    id: int = field(default_factory=lambda: next(_TABLE_IDS))
    cache: dict = field(default_factory=dict)  # CallKey -> Route | reason str

    def __post_init__(self) -> None:
        self.fast_key = self.layout.compile_fast()
        self.tensor_positions = tuple(i for i, _ in self.layout.tensor_inputs)

    @property
    def n_inputs(self) -> int:
        return len(self.layout.input_names)

    def route(self, key: CallKey) -> Union[Route, str]:
        r = self.cache.get(key)
        if r is None:
            r = self._resolve(key)
            if len(self.cache) < ROUTE_CACHE_MAX:
                self.cache[key] = r
        return r

    def disable(self, key: CallKey, reason: str) -> None:
        self.cache[key] = reason  # until the next reload

    def _resolve(self, key: CallKey) -> Union[Route, str]:
        entry, kind = self.exact.get(key), "exact"
        if entry is None:
            entry, kind = nearest_candidate(key, self.layout.var_axes, self.candidates), "nearest"
        if entry is None:
            bad = [dt for dt, ok in zip(key[1], self.known_dtypes) if dt not in ok]
            return f"guard:dtype {bad[0]}" if bad else "miss"
        axes = {**entry.axes, **self.definition.const_axes, **self.layout.axes_of(key)}
        outs = tuple((tuple(axes[a] for a in spec.shape or []), dt)
                     for spec, dt in zip(self.definition.outputs.values(), entry.out_dtypes))
        return Route(entry.fn, outs, entry.artifact, kind, entry.device_type, self.layout.text(key))


@dataclass(frozen=True)
class DispatchTable:
    dirs: tuple
    tasks: dict  # task -> TaskTable
    interpret: bool

    def summary(self) -> dict[str, list[str]]:
        return {t: list(tt.artifacts) for t, tt in self.tasks.items()}


def _device_type(art: Artifact, interpret: bool) -> Optional[str]:
    if art.solution.spec.language == "python":
        return None
    return "cpu" if interpret else "cuda"


def build_table(dirs: tuple, interpret: bool) -> DispatchTable:
    """Read, validate and import every artifact under dirs; ArtifactError on the first bad one."""
    arts: list[Artifact] = []
    for d in dirs:
        arts += [read_artifact(p) for p in find_artifacts(Path(d))]
    by_task: dict[str, list[Artifact]] = {}
    for a in arts:
        by_task.setdefault(a.manifest.task, []).append(a)
    tasks = {}
    for task, group in by_task.items():
        d = group[0].definition
        for a in group[1:]:
            if a.definition.model_dump(exclude={"description", "tags"}) != d.model_dump(exclude={"description", "tags"}):
                raise ArtifactError(f"{a.path}: definition of {task!r} differs from {group[0].path}'s")
        tasks[task] = _task_table(task, d, group, interpret)
    return DispatchTable(tuple(Path(d) for d in dirs), tasks, interpret)


def _task_table(task: str, d: Definition, group: list[Artifact], interpret: bool) -> TaskTable:
    layout = KeyLayout.of(d)
    exact: dict = {}
    candidates = []
    known = [set() for _ in layout.tensor_inputs]
    names = []
    for art in group:
        fn = load_entry(art)
        names.append(f"{art.manifest.name} ({art.path})")
        dev = _device_type(art, interpret)
        for k in art.manifest.keys:
            w = next(t.workload for t in art.traces if t.workload.uuid == k.workload)
            ck = layout.workload_key(d, w)
            e = Entry(fn, art.manifest.name, dict(k.axes),
                      tuple(TORCH_DTYPES[k.dtypes.get(n, s.dtype)] for n, s in d.outputs.items()),
                      dev, k.won, k.latency_ms)
            for slot, dt in zip(known, ck[1]):
                slot.add(dt)
            # rank among equally near keys: the artifact that won the key, then the faster one
            candidates.append((ck, art.manifest.ranges, (not k.won, k.latency_ms), e))
            if any(s is ANY for s in ck[2]):
                continue  # an unpinned scalar matches by the nearest policy only
            old = exact.get(ck)
            if old is None or (e.won, -e.latency_ms) > (old.won, -old.latency_ms):
                exact[ck] = e
    return TaskTable(task, d, layout, exact, candidates, tuple(frozenset(s) for s in known), names)
