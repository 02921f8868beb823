"""Shape keys for apply() dispatch: the same notion as `avo.schema.Workload.key()` (var-axis values,
tensor dtypes, scalar inputs), computed from a live call's arguments.

A workload's own `key()` lists only the dtypes it overrides; dispatch needs one canonical form, so
`normalized_workload` fills in every input tensor's dtype (override or the definition's default)
and keeps only the var axes the inputs determine. Its `.key()` is the key string used in manifests,
logs and `stats()`. At call time the key is a plain tuple (cheap to build and hash):
`(var-axis values, input dtypes, scalar values)`, in an order fixed by the definition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from avo.harness.inputs import TORCH_DTYPES
from avo.schema import Definition, ScalarInput, Workload

DTYPE_NAME = {v: k for k, v in TORCH_DTYPES.items()}
ANY = object()  # a scalar the workload leaves unpinned: matches any value (nearest-key only)
CallKey = tuple  # (axes tuple, dtypes tuple, scalars tuple)


class KeyGuardError(Exception):
    """The call's arguments do not fit the definition (rank, inconsistent axis, const axis...)."""


@dataclass(frozen=True)
class KeyLayout:
    """Where each key component comes from in a call's positional arguments (definition order)."""
    input_names: tuple[str, ...]
    tensor_inputs: tuple[tuple[int, tuple[str, ...]], ...]  # (arg index, axis name per dim)
    scalar_inputs: tuple[int, ...]
    var_axes: tuple[str, ...]  # var axes some input determines, sorted
    const_axes: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, d: Definition) -> "KeyLayout":
        names = tuple(d.inputs)
        tensors = tuple((i, tuple(d.inputs[n].shape)) for i, n in enumerate(names) if d.inputs[n].shape is not None)
        scalars = tuple(i for i, n in enumerate(names) if d.inputs[n].shape is None)
        seen = {a for _, axes in tensors for a in axes}
        const = d.const_axes
        var = tuple(sorted(a for a in seen if a not in const))
        return cls(names, tensors, scalars, var, tuple(sorted((a, v) for a, v in const.items() if a in seen)))

    # ---- from a live call ----
    def call_key(self, args: tuple) -> CallKey:
        """The key of a call (positional args in definition order); KeyGuardError if shapes do not
        fit the definition."""
        vals: dict[str, int] = {}
        dtypes = []
        for i, axes in self.tensor_inputs:
            t = args[i]
            if not isinstance(t, torch.Tensor):
                raise KeyGuardError(f"input {self.input_names[i]!r} is {type(t).__name__}, not a tensor")
            shp = t.shape
            if len(shp) != len(axes):
                raise KeyGuardError(f"input {self.input_names[i]!r} has rank {len(shp)}, the definition says {len(axes)}")
            for a, v in zip(axes, shp):
                if vals.setdefault(a, v) != v:
                    raise KeyGuardError(f"axis {a!r} is {vals[a]} in one input and {v} in {self.input_names[i]!r}")
            dtypes.append(t.dtype)
        for a, v in self.const_axes:
            if vals[a] != v:
                raise KeyGuardError(f"const axis {a!r} is {vals[a]}, the definition fixes {v}")
        scalars = tuple(args[i] for i in self.scalar_inputs)
        for s in scalars:
            if isinstance(s, torch.Tensor):
                raise KeyGuardError("a scalar input was given as a tensor")
        return tuple(vals[a] for a in self.var_axes), tuple(dtypes), scalars

    def compile_fast(self) -> Callable[[tuple], Optional[CallKey]]:
        """A straight-line version of call_key generated for this layout (no loops, no dict):
        returns the key, or None when anything does not fit (then call_key says why)."""
        var = {a: f"a{i}" for i, a in enumerate(sorted({a for _, axes in self.tensor_inputs for a in axes}))}
        lines = ["def fast_key(args):"]
        seen: set = set()
        for i, axes in self.tensor_inputs:
            lines += [f"    t{i} = args[{i}]", f"    if not isinstance(t{i}, Tensor): return None",
                      f"    s{i} = t{i}.shape", f"    if len(s{i}) != {len(axes)}: return None"]
            for j, a in enumerate(axes):
                if a in seen:
                    lines.append(f"    if s{i}[{j}] != {var[a]}: return None")
                else:
                    seen.add(a)
                    lines.append(f"    {var[a]} = s{i}[{j}]")
        for a, v in self.const_axes:
            lines.append(f"    if {var[a]} != {v}: return None")
        for i in self.scalar_inputs:
            lines.append(f"    if isinstance(args[{i}], Tensor): return None")
        axes_t = "".join(f"{var[a]}, " for a in self.var_axes)
        dtypes_t = "".join(f"t{i}.dtype, " for i, _ in self.tensor_inputs)
        scalars_t = "".join(f"args[{i}], " for i in self.scalar_inputs)
        lines.append(f"    return (({axes_t}), ({dtypes_t}), ({scalars_t}))")
        ns: dict = {"Tensor": torch.Tensor}
        exec(compile("\n".join(lines), f"<avo.apply fast key {','.join(self.input_names)}>", "exec"), ns)
        return ns["fast_key"]

    def axes_of(self, key: CallKey) -> dict[str, int]:
        return dict(zip(self.var_axes, key[0]))

    def text(self, key: CallKey) -> str:
        """The Workload.key()-style string of a call key (for logs and stats)."""
        parts = [f"{a}={v}" for a, v in zip(self.var_axes, key[0])]
        names = [self.input_names[i] for i, _ in self.tensor_inputs]
        parts += [f"{n}:{DTYPE_NAME.get(dt, str(dt))}" for n, dt in sorted(zip(names, key[1]))]
        parts += [f"{self.input_names[i]}={'*' if s is ANY else s}"
                  for i, s in sorted(zip(self.scalar_inputs, key[2]), key=lambda p: self.input_names[p[0]])]
        return ",".join(parts)

    # ---- from a workload ----
    def workload_key(self, d: Definition, w: Workload) -> CallKey:
        missing = [a for a in self.var_axes if a not in w.axes]
        if missing:
            raise KeyGuardError(f"workload {w.uuid} gives no value for axes {missing}")
        dtypes = tuple(TORCH_DTYPES[w.dtypes.get(self.input_names[i], d.inputs[self.input_names[i]].dtype)]
                       for i, _ in self.tensor_inputs)
        scalars = []
        for i in self.scalar_inputs:
            spec = w.inputs.get(self.input_names[i])
            scalars.append(spec.value if isinstance(spec, ScalarInput) else ANY)
        return tuple(w.axes[a] for a in self.var_axes), dtypes, tuple(scalars)


def normalized_workload(d: Definition, w: Workload) -> Workload:
    """The workload with every input dtype spelled out and only input-determined var axes: its
    `.key()` is the canonical key string (equal for a call with the same shapes/dtypes/scalars)."""
    layout = KeyLayout.of(d)
    tensor_names = [layout.input_names[i] for i, _ in layout.tensor_inputs]
    return Workload(
        uuid=w.uuid, axes={a: w.axes[a] for a in layout.var_axes if a in w.axes},
        dtypes={n: w.dtypes.get(n, d.inputs[n].dtype) for n in tensor_names},
        inputs={n: s for n, s in w.inputs.items() if isinstance(s, ScalarInput)},
    )


def call_semantics(d: Definition) -> tuple:
    """What a call of the task means: name, axes, the inputs' and outputs' names, shapes and dtypes,
    in-place inputs. Two definitions with the same semantics take the same calls and kernels;
    descriptions, tolerances, SOL models, forbidden calls and the reference's code may differ (the
    evaluator's concerns, edited over time: an artifact keeps the definition it was checked with)."""
    def specs(xs: dict) -> tuple:
        return tuple((n, tuple(s.shape) if s.shape is not None else None, s.dtype) for n, s in xs.items())
    axes = tuple((n, a.type, getattr(a, "value", None), getattr(a, "expression", None)) for n, a in d.axes.items())
    return d.name, axes, specs(d.inputs), specs(d.outputs), tuple(d.inplace)


def canonical_key(d: Definition, w: Workload) -> str:
    return normalized_workload(d, w).key()


def log_distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Distance between two var-axis vectors in log space (0 and 1 both count as 1)."""
    return sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b))


def scalars_match(call: tuple, entry: tuple) -> bool:
    return all(e is ANY or c == e for c, e in zip(call, entry))


def ranked_candidates(call: CallKey, var_axes: tuple[str, ...],
                      candidates: Sequence[tuple[CallKey, dict[str, Sequence[int]], Any, Any]],
                      unpinned_scalars: bool = True) -> list[Any]:
    """The candidates (entry key, ranges, rank, payload) whose ranges hold the call, nearest first.
    Eligible: dtypes equal to the call's, scalars equal (an unpinned workload scalar matches any
    value only when `unpinned_scalars`), and every var-axis value of the call inside the candidate's
    [lo, hi] for that axis (an axis without a range must equal the entry's value). Order: smallest
    log-space distance over the var axes, then `rank` (lower first)."""
    found = []
    for key, ranges, rank, payload in candidates:
        if key[1] != call[1]:
            continue
        if not (scalars_match(call[2], key[2]) if unpinned_scalars else call[2] == key[2]):
            continue
        ok = True
        for a, v, e in zip(var_axes, call[0], key[0]):
            r = ranges.get(a)
            if (r is None and v != e) or (r is not None and not (r[0] <= v <= r[1])):
                ok = False
                break
        if ok:
            found.append(((log_distance(call[0], key[0]), rank), len(found), payload))
    found.sort(key=lambda x: x[:2])
    return [p for _, _, p in found]


def nearest_candidate(call: CallKey, var_axes: tuple[str, ...],
                      candidates: Sequence[tuple[CallKey, dict[str, Sequence[int]], float, Any]]) -> Optional[Any]:
    """The nearest-key policy's single choice (ranked_candidates' first), None when nothing is eligible."""
    found = ranked_candidates(call, var_axes, candidates)
    return found[0] if found else None
