"""`avo export RUN --out DIR [--task T]`: a run's winners as apply() artifacts; `avo export RUN
--task T --ship DIR`: the task's best version as the one artifact at DIR (how the winners under
kernels/<family>/evolved/ are made: never by hand; tests/test_shipped_artifacts.py re-checks each
with `reexport_diff`).

Per task: the lineage's best version (highest speedup over the seed) is exported, and so is every
other version that is the fastest on some shape key by more than `KEY_MARGIN` over the best (one
version may be tuned for small batches, another for large ones). Each artifact's manifest marks
the keys it won; `enable()` routes each key to its winner. `DIR/<task>/` is replaced as a whole,
so an engine that reloads while an export runs sees the old set or the new one.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from avo.apply.artifact import ArtifactError, ArtifactMeta, safe_name, write_artifact
from avo.apply.keys import KeyGuardError, KeyLayout, canonical_key
from avo.schema import Definition, Solution

# A non-best version takes a key only when it is this much faster there than the best: even one
# session's medians carry noise, and recorded latencies of different versions come from different
# evaluations.
KEY_MARGIN = 0.03


FORMATS = ("artifact", "sol-execbench", "flashinfer-trace", "kernelbench")


class ExportError(Exception):
    """An export that cannot be done; the message is one line for the user."""


def _definition_for(lin, task: str) -> Definition:
    return _task_for(lin, task).definition


def _task_for(lin, task: str):
    """The task: evaluators/<task>, else the run config's task entries (problem dirs, dataset
    ROOT::NAME)."""
    from avo.tasks import TaskError, load_task
    try:
        return load_task(task)
    except TaskError:
        pass
    try:
        import yaml
        cfg = yaml.safe_load(lin.root_file("config.yaml")) or {}
    except Exception:
        cfg = {}
    for entry in cfg.get("tasks", []) if isinstance(cfg, dict) else []:
        try:
            t = load_task(str(entry))
        except TaskError:
            continue
        if t.name == task:
            return t
    raise ExportError(f"cannot find the definition of task {task!r} (not under evaluators/, nor among "
                      "the run config's task entries)")


def _solution(task: str, source: str, sha: str) -> Solution:
    from avo.tasks import kernel_solution
    return kernel_solution(task, source, name=f"{task}_{sha[:10]}")


def _latencies(d: Definition, version, key_of: Optional[dict[str, str]] = None) -> Optional[dict[str, tuple[float, str]]]:
    """key -> (latency ms, workload uuid) of a version, or None if some trace is not PASSED;
    `key_of` (workload uuid -> key) is filled on the way."""
    out: dict[str, tuple[float, str]] = {}
    layout = KeyLayout.of(d)
    try:
        traces = version.traces
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise ExportError(f"commit {version.sha[:10]}: unreadable traces.jsonl ({str(e).splitlines()[0]})") from None
    for t in traces:
        if not t.passed or t.evaluation.performance is None:
            return None
        try:
            layout.workload_key(d, t.workload)
        except KeyGuardError as e:
            raise ExportError(f"commit {version.sha[:10]}: {e} (does the definition of {d.name!r} still match the run?)")
        k = canonical_key(d, t.workload)
        if key_of is not None:
            key_of[t.workload.uuid] = k
        lat = t.evaluation.performance.latency_ms
        if k not in out or lat < out[k][0]:
            out[k] = (lat, t.workload.uuid)
    return out or None


def _measured(key_of: dict[str, str], m) -> dict[str, dict[str, float]]:
    """sha -> key -> the median latency the run's final measurement took (one session, so versions
    compare without the noise between their separate evaluations); {} without a measurement."""
    if m is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for c in m.contenders:
        for uuid, ms in c.median_ms.items():
            k = key_of.get(uuid)
            if k is not None:
                per = out.setdefault(c.commit, {})
                per[k] = min(ms, per.get(k, ms))
    return out


def winners(d: Definition, best, versions: list, measurement=None) -> dict[str, list[str]]:
    """commit sha -> workload uuids it won. The best keeps a key unless another version is faster
    by more than KEY_MARGIN; between two other versions the faster one wins. Two versions the
    final `measurement` timed together compare by its medians, others by their recorded traces."""
    lat, key_of = {}, {}
    for v in versions:
        l_v = _latencies(d, v, key_of)
        if l_v is not None:
            lat[v.sha] = l_v
    if best.sha not in lat:
        raise ExportError(f"the best version {best.sha[:10]} of {d.name!r} has a trace that is not PASSED "
                          "(or no traces): not exportable")
    meas = _measured(key_of, measurement)

    def beats(sha: str, cur: str, k: str) -> bool:
        a, b = meas.get(cur, {}).get(k), meas.get(sha, {}).get(k)
        if a is None or b is None:
            a, b = lat[cur][k][0], lat[sha][k][0]
        return b < a * ((1 - KEY_MARGIN) if cur == best.sha else 1.0)

    keys = sorted({k for l_v in lat.values() for k in l_v})
    won: dict[str, list[str]] = {best.sha: []}
    for k in keys:
        cur = best.sha if k in lat[best.sha] else None
        for sha, l_v in lat.items():
            if sha == best.sha or k not in l_v:
                continue
            if cur is None or beats(sha, cur, k):
                cur = sha
        won.setdefault(cur, []).append(lat[cur][k][1])
    return won


def export_task(lin, task: str, out_dir: Path, run_name: str,
                checked_ranges: Optional[dict[str, list[int]]] = None) -> list[Path]:
    from avo.lineage import LineageError
    d = _definition_for(lin, task)
    try:
        best = lin.best(task)
        versions = lin.versions(task)
    except LineageError as e:
        raise ExportError(str(e)) from None
    m = lin.measurement(task)
    won = winners(d, best, versions, m if m is not None and m.versions_count == len(versions) else None)
    by_sha = {v.sha: v for v in versions}
    task_dir = out_dir / safe_name(task)
    if task_dir.exists() and any(not (p / "manifest.json").exists() for p in task_dir.iterdir() if not p.name.startswith(".")):
        raise ExportError(f"{task_dir} holds files that are not artifacts: not replacing it")
    stage = out_dir / f".{safe_name(task)}.export-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    names = []
    try:
        for sha, uuids in won.items():
            v = by_sha[sha]
            name = ("best-" if sha == best.sha else "keys-") + sha[:10]
            meta = ArtifactMeta(name=name, run=v.meta.run or run_name, lineage=str(lin.path), commit=sha,
                                island=str(v.meta.island), won=uuids,
                                checked_ranges=checked_ranges if sha == best.sha else None)
            try:
                write_artifact(stage / name, d, _solution(task, v.source, v.sha), v.traces, meta, lin.commit_record(sha))
            except ArtifactError as e:
                raise ExportError(str(e)) from None
            names.append(name)
        if task_dir.exists():
            old = out_dir / f".{safe_name(task)}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(task_dir, old)
            os.replace(stage, task_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, task_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [task_dir / n for n in names]


def _open_run(run: str):
    """(Lineage, its path) of a run name or lineage path, read-only."""
    from avo.lineage import Lineage, LineageError, resolve_run
    try:
        path = resolve_run(str(run))
        return Lineage.open(path), path
    except LineageError as e:
        raise ExportError(str(e)) from None


def _check_task(lin, run: str, task: str) -> None:
    if task not in lin.tasks():
        raise ExportError(f"run {run!r} has no task {task!r} (tasks: {', '.join(lin.tasks()) or 'none'})")


def _tasks_of(lin, run: str, task: Optional[str]) -> list[str]:
    """The tasks to export: `task`, else every task of the run (at least one)."""
    if task is not None:
        _check_task(lin, run, task)
        return [task]
    if not lin.tasks():
        raise ExportError(f"run {run!r} has no versions yet: nothing to export")
    return lin.tasks()


def _exportable_best(lin, d: Definition, task: str):
    """The task's best version, refused when any of its traces is not PASSED."""
    v = lin.best(task)
    if _latencies(d, v) is None:
        raise ExportError(f"the best version {v.sha[:10]} of {task!r} has a trace that is not PASSED: not exportable")
    return v


def definition_json(d: Definition) -> dict:
    """The definition as the problem formats write it: the model's own serializer, which leaves
    out avo's unset extension fields (`_OMIT_IF_NONE`) but keeps a scalar's `shape: null`, a key
    upstream's tensor spec requires (exclude_none would drop it)."""
    return d.model_dump(mode="json")


def ship_best(run: str, task: str, dest: Path, checked_ranges: Optional[dict[str, list[int]]] = None) -> Path:
    """The task's best version of a run, written as the single artifact `dest` (every key its own)."""
    from avo.lineage import LineageError
    lin, path = _open_run(run)
    try:
        _check_task(lin, run, task)
        d = _definition_for(lin, task)
        v = _exportable_best(lin, d, task)
        dest = Path(dest)
        if dest.exists() and not (dest / "manifest.json").exists():
            raise ExportError(f"--ship {dest} exists and is not an artifact: not replacing it")
        meta = ArtifactMeta(name=f"best-{v.sha[:10]}", run=v.meta.run or path.name, lineage=str(lin.path), commit=v.sha,
                            island=str(v.meta.island), checked_ranges=checked_ranges)
        try:
            return write_artifact(dest, d, _solution(task, v.source, v.sha), v.traces, meta, lin.commit_record(v.sha))
        except (ArtifactError, LineageError) as e:
            raise ExportError(str(e)) from None
    finally:
        lin.close()


def reexport_diff(folder: Path) -> list[str]:
    """What differs between an artifact and what `avo export` writes from the version it came from:
    its lineage commit (lineage/, checked by hash first), or, for an artifact exported before
    artifacts kept one, its own kernel and traces. Empty when the artifact is untouched; a hand edit
    of the kernel, a trace, a manifest number or the declared ranges shows up here."""
    import tempfile
    from avo.apply.artifact import PROVENANCE_DIR, PROVENANCE_FILES, read_artifact, verify_provenance
    from avo.schema import Trace
    art = read_artifact(folder)
    m = art.manifest
    provenance = None
    traces = art.traces
    if (art.path / PROVENANCE_DIR).is_dir():
        verify_provenance(art)
        provenance = {n: (art.path / PROVENANCE_DIR / n).read_bytes() for n in PROVENANCE_FILES}
        traces = [Trace.model_validate_json(x) for x in provenance["traces.jsonl"].decode().splitlines() if x.strip()]
    all_won = all(k.won for k in m.keys)
    meta = ArtifactMeta(name=m.name, run=m.run, lineage=m.lineage, commit=m.commit, island=m.island,
                        won=None if all_won else [k.workload for k in m.keys if k.won],
                        checked_ranges=m.checked_ranges)
    sol = _solution(m.task, art.solution.sources[0].content, m.commit) \
        if m.commit and len(art.solution.sources) == 1 else art.solution
    with tempfile.TemporaryDirectory() as tmp:
        out = write_artifact(Path(tmp) / "a", art.definition, sol, traces, meta, provenance)
        diffs = []
        for p in sorted(x for x in out.rglob("*") if x.is_file()):
            rel = p.relative_to(out)
            mine = art.path / rel
            if rel.name == "manifest.json":
                a, b = json.loads(p.read_text()), json.loads(mine.read_text())
                for k in ("created", "avo_version"):
                    a.pop(k, None), b.pop(k, None)
                diffs += [f"manifest.json: {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            elif not mine.exists() or mine.read_bytes() != p.read_bytes():
                diffs.append(str(rel))
        extra = {x.relative_to(art.path) for x in art.path.rglob("*") if x.is_file()} - \
                {x.relative_to(out) for x in out.rglob("*") if x.is_file()}
        return diffs + [f"{x}: not written by avo export" for x in sorted(extra)]


def solution_json(d: Definition, source: str, sha: str, note: str) -> dict:
    """A version as a solution both harnesses read: flashinfer-bench's `language` and SOL-ExecBench's
    `languages` side by side (each ignores the other's key), entry `kernel.py::run`, destination-
    passing, `target_hardware: ["LOCAL"]` (a SOL-ExecBench enum value; free text for flashinfer-bench)."""
    sol = _solution(d.name, source, sha).model_dump(mode="json", exclude_none=True)
    sol["spec"].update(target_hardware=["LOCAL"], languages=["triton" if sol["spec"]["language"] == "triton" else "pytorch"],
                       dependencies=["torch", "triton"] if sol["spec"]["language"] == "triton" else ["torch"])
    sol["description"] = f"avo lineage commit {sha}: {note}"[:500]
    return sol


def export_foreign(run: str, out_dir: Path, fmt: str, task: Optional[str] = None) -> list[Path]:
    """The best version per task written back in a problem format, so the problem's own harness
    takes it: `sol-execbench` (OUT/<task>/: definition.json, workload.jsonl, solution.json,
    kernel.py, traces.jsonl: a problem directory `sol-execbench OUT/<task>` runs) or
    `flashinfer-trace` (OUT as a dataset root: definitions/, workloads/, solutions/avo/, traces/avo/,
    each under <op_type>/ as flashinfer-bench's TraceSet lays them out) or `kernelbench` (for a task
    loaded from a KernelBench problem file: OUT/<problem stem>_avo.py, the kernel and a `ModelNew`
    KernelBench's eval takes, avo/kernelbench.py)."""
    if fmt not in FORMATS[1:]:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    lin, path = _open_run(run)
    out_dir, written = Path(out_dir), []
    try:
        tasks = _tasks_of(lin, run, task)
        for t in tasks:
            problem = _task_for(lin, t)
            d = problem.definition
            best = _exportable_best(lin, d, t)
            if fmt == "kernelbench":
                written.append(_write_kernelbench(out_dir, d, best))
                continue
            sol = solution_json(d, best.source, best.sha, best.meta.note)
            traces = "".join(tr.model_copy(update={"solution": sol["name"]}).model_dump_json(exclude_none=True) + "\n"
                             for tr in best.traces if tr.passed)
            workloads = problem.workloads
            ddump = definition_json(d)
            if fmt == "sol-execbench":
                folder = out_dir / safe_name(t)
                folder.mkdir(parents=True, exist_ok=True)
                _write(folder / "definition.json", json.dumps(ddump, indent=2) + "\n")
                _write(folder / "workload.jsonl", "".join(w.model_dump_json(exclude_none=True) + "\n" for w in workloads))
                _write(folder / "solution.json", json.dumps(sol, indent=2) + "\n")
                _write(folder / "kernel.py", best.source)
                _write(folder / "traces.jsonl", traces)
                written.append(folder)
            else:
                op = safe_name(d.op_type or "unknown")
                _write(out_dir / "definitions" / op / f"{t}.json", json.dumps({**ddump, "op_type": d.op_type or "unknown"}, indent=2) + "\n")
                rows = [{"definition": t, "solution": None, "workload": w.model_dump(mode="json", exclude_none=True),
                         "evaluation": None} for w in workloads]
                _write(out_dir / "workloads" / op / f"{t}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
                spath = out_dir / "solutions" / "avo" / op / t / f"{sol['name']}.json"
                _write(spath, json.dumps(sol, indent=2) + "\n")
                _write(out_dir / "traces" / "avo" / op / f"{t}.jsonl", traces)
                written.append(spath)
        return written
    finally:
        lin.close()


def _write_kernelbench(out_dir: Path, d: Definition, best) -> Path:
    from avo.kernelbench import KernelBenchError, is_problem_origin, solution_file, solution_filename
    if not is_problem_origin(d):
        raise ExportError(f"task {d.name!r} did not come from a KernelBench problem file: --format kernelbench "
                          "writes only those (pick one with --task)")
    try:
        text = solution_file(d, best.source, f"avo lineage commit {best.sha}: {best.meta.note}"[:300])
    except KernelBenchError as e:
        raise ExportError(str(e)) from None
    out = out_dir / solution_filename(d)
    _write(out, text)
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def export_run(run: str, out_dir: Path, task: Optional[str] = None,
               checked_ranges: Optional[dict[str, list[int]]] = None) -> list[Path]:
    """Export the best version per task (and per-key winners) of a run; returns artifact folders."""
    lin, path = _open_run(run)
    try:
        tasks = _tasks_of(lin, run, task)
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ExportError(f"--out {out_dir} is a file, not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for t in tasks:
            paths += export_task(lin, t, out_dir, path.name, checked_ranges)
        return paths
    finally:
        lin.close()
