"""`avo.apply.record(out_dir)`: the shapes an engine really serves, written as workloads.

    with avo.apply.record("recorded"):
        model.generate(...)              # any code that reaches @avo.apply functions

While recording, every call of an `@avo.apply` function (enabled or not, served or not, eager or
inside a compiled graph's op) adds its shape key: the var-axis values read off the inputs, every
tensor's dtype, the scalar inputs. On exit, per task, `out_dir/<task>/` is written as a problem
folder `avo eval` and `avo evolve` take (tasks: [out_dir/<task>]):

    definition.json   the task's definition, reference embedded (from the enabled artifacts, else
                      evaluators/<task>/)
    workloads.jsonl   one workload per distinct key (FlashInfer workload JSON: axes, inputs random
                      or the scalar's value, uuid; avo's dtypes of every tensor, target gpu for CUDA
                      tensors else cpu, label with the call count); lines already there are kept
    baseline.py       the task's baseline, when evaluators/<task>/ has one (so T_b stays the same)

and `out_dir/record.json` sums it up per task: calls, keys, workloads added, and the calls the
integrations kept on the engine's own path (by reason: those are not the task's semantics and
are not recorded). The definition name stays the task's, so the seed kernels and
`avo export` work as for evaluators/<task>/.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from avo.apply.keys import ANY, DTYPE_NAME, KeyGuardError, KeyLayout, call_semantics, canonical_key
from avo.schema import Definition, RandomInput, ScalarInput, Workload


class RecordError(Exception):
    """A recording that cannot be written; one line."""


class _TaskRecord:
    def __init__(self, definition: Definition, baseline: Optional[str]):
        self.definition = definition
        self.baseline = baseline
        self.layout = KeyLayout.of(definition)
        self.var_missing = [a for a, ax in definition.axes.items()
                            if ax.type == "var" and a not in self.layout.var_axes]
        tensor_names = {n for n, s in definition.inputs.items() if s.shape is not None}
        self.follow = {o: next((n for n, s in definition.inputs.items() if n in tensor_names and s.dtype == spec.dtype),
                               None) for o, spec in definition.outputs.items() if spec.shape is not None}
        self.keys: dict = {}  # CallKey -> [count, target, output dtypes]
        self.calls = 0


class Recorder:
    """The active recording (one at a time). `resolve(task)` gives (Definition, baseline) or raises."""

    def __init__(self, out_dir: Path, resolve: Callable[[str], tuple], on_close: Callable[["Recorder"], None]):
        self.out_dir = Path(out_dir)
        self.resolve = resolve
        self.on_close = on_close
        self.tasks: dict[str, Optional[_TaskRecord]] = {}
        self.skipped: dict[str, dict[str, int]] = {}  # task -> reason -> calls
        self.lock = threading.Lock()
        self.written: dict[str, Path] = {}
        self.summary: dict[str, Any] = {}

    # ---- on the call path ----
    def _task(self, task: str) -> Optional[_TaskRecord]:
        tr = self.tasks.get(task, False)
        if tr is False:
            try:
                d, baseline = self.resolve(task)
                tr = _TaskRecord(d, baseline)
            except Exception as e:  # noqa: BLE001: recorded as the reason, never raised into the engine
                tr = None
                self.skip(task, f"no definition ({type(e).__name__}: {e})")
            with self.lock:
                self.tasks[task] = tr
        return tr

    def note(self, task: str, map_inputs: Callable[[tuple], Optional[tuple]]) -> None:
        """A call of `task`; `map_inputs(input names)` gives its inputs in definition order (None:
        they do not map)."""
        tr = self._task(task)
        if tr is None:
            return
        inputs = map_inputs(tr.layout.input_names)
        if inputs is None:
            self.skip(task, "arguments do not map onto the definition's inputs")
            return
        try:
            key = tr.layout.call_key(inputs)
        except KeyGuardError as e:
            self.skip(task, f"shape does not fit the definition ({e})")
            return
        with self.lock:
            tr.calls += 1
            slot = tr.keys.get(key)
            if slot is None:
                dev = next((inputs[i].device for i, _ in tr.layout.tensor_inputs), None)
                dts = {o: inputs[tr.layout.input_names.index(src)].dtype if src else None for o, src in tr.follow.items()}
                tr.keys[key] = [1, "gpu" if dev is not None and dev.type == "cuda" else "cpu", dts]
            else:
                slot[0] += 1

    def skip(self, task: str, reason: str) -> None:
        with self.lock:
            d = self.skipped.setdefault(task, {})
            d[reason] = d.get(reason, 0) + 1

    # ---- context manager ----
    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> dict[str, Path]:
        """Stop recording and write the problem folders; returns {task: folder}."""
        self.on_close(self)
        with self.lock:
            tasks = dict(self.tasks)
            skipped = {t: dict(r) for t, r in self.skipped.items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        summary: dict[str, Any] = {}
        for task, tr in tasks.items():
            s = summary.setdefault(task, {})
            if tr is None:
                continue
            s.update(calls=tr.calls, keys=len(tr.keys))
            if tr.var_missing:
                s["error"] = f"var axes {tr.var_missing} are not determined by the inputs: not recordable"
                continue
            if not tr.keys:
                continue
            folder, added = self._write(task, tr)
            self.written[task] = folder
            s.update(folder=str(folder), workloads_added=added)
        for task, reasons in skipped.items():
            summary.setdefault(task, {})["not_recorded"] = reasons
        self.summary = summary
        (self.out_dir / "record.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return dict(self.written)

    def _write(self, task: str, tr: _TaskRecord) -> tuple[Path, int]:
        d = tr.definition
        folder = self.out_dir / task
        folder.mkdir(parents=True, exist_ok=True)
        dpath, wpath = folder / "definition.json", folder / "workloads.jsonl"
        if dpath.exists():
            try:
                old = Definition.model_validate_json(dpath.read_text())
            except ValueError as e:
                raise RecordError(f"{dpath}: not a definition ({str(e).splitlines()[0]})") from None
            if call_semantics(old) != call_semantics(d):
                raise RecordError(f"{dpath}: another definition of {task!r} (axes, inputs or outputs) is recorded "
                                  "there; record into a new folder")
        dpath.write_text(d.model_dump_json(indent=2) + "\n")
        if tr.baseline:
            (folder / "baseline.py").write_text(tr.baseline)
        lines = wpath.read_text().splitlines() if wpath.exists() else []
        have = set()
        for line in lines:
            if line.strip():
                row = json.loads(line)
                have.add(canonical_key(d, Workload.model_validate(row.get("workload", row))))
        added = 0
        with open(wpath, "a") as f:
            for key, (count, target, out_dtypes) in sorted(tr.keys.items(), key=lambda kv: _sort_key(kv[0])):
                w = workload_of(d, tr.layout, key, target, out_dtypes, count)
                if canonical_key(d, w) in have:
                    continue
                f.write(w.model_dump_json(exclude_none=True) + "\n")
                added += 1
        return folder, added


def _sort_key(key: tuple) -> tuple:
    return key[0], tuple(map(str, key[1])), tuple(map(str, key[2]))


def workload_of(d: Definition, layout: KeyLayout, key: tuple, target: str, out_dtypes: dict, count: int) -> Workload:
    axes = layout.axes_of(key)
    dtypes = {}
    for (i, _), dt in zip(layout.tensor_inputs, key[1]):
        dtypes[layout.input_names[i]] = DTYPE_NAME[dt]
    for o, dt in out_dtypes.items():
        dtypes[o] = DTYPE_NAME[dt] if dt is not None else d.outputs[o].dtype
    inputs: dict[str, Any] = {}
    for n, s in d.inputs.items():
        inputs[n] = RandomInput() if s.shape is not None else None
    for i, v in zip(layout.scalar_inputs, key[2]):
        inputs[layout.input_names[i]] = ScalarInput(value=v) if v is not ANY else RandomInput()
    text = layout.text(key)
    short = "_".join(f"{a}{v}" for a, v in axes.items())
    first = DTYPE_NAME[key[1][0]] if key[1] else "none"
    uuid = f"rec_{short}_{first}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"
    return Workload(uuid=uuid, axes=axes, inputs=inputs, dtypes=dtypes, target=target,
                    label=f"recorded: {count} call{'s' if count != 1 else ''}")
