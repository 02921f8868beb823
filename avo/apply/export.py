"""`avo export RUN --out DIR [--task T]`: a run's winners as apply() artifacts.

Per task: the lineage's best version (highest speedup over the seed) is exported, and so is every
other version that is the fastest on some shape key by more than `KEY_MARGIN` over the best (one
version may be tuned for small batches, another for large ones). Each artifact's manifest marks
the keys it won; `enable()` routes each key to its winner. `DIR/<task>/` is replaced as a whole,
so an engine that reloads while an export runs sees the old set or the new one.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from avo.apply.artifact import ArtifactError, ArtifactMeta, safe_name, write_artifact
from avo.apply.keys import KeyGuardError, KeyLayout, canonical_key
from avo.schema import Definition, Solution

# A non-best version takes a key only when it is this much faster there than the best: recorded
# latencies of different versions come from different measurements, so small gaps are noise.
KEY_MARGIN = 0.03


class ExportError(Exception):
    """An export that cannot be done; the message is one line for the user."""


def _definition_for(lin, task: str) -> Definition:
    """The task's definition: evaluators/<task>, else the run config's task entries (problem dirs)."""
    from avo.tasks import TaskError, load_task
    try:
        return load_task(task).definition
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
            return t.definition
    raise ExportError(f"cannot find the definition of task {task!r} (not under evaluators/, nor among "
                      "the run config's task entries)")


def _solution(task: str, version) -> Solution:
    from avo.tasks import kernel_solution
    return kernel_solution(task, version.source, name=f"{task}_{version.sha[:10]}")


def _latencies(d: Definition, version) -> Optional[dict[str, tuple[float, str]]]:
    """key -> (latency ms, workload uuid) of a version, or None if some trace is not PASSED."""
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
        lat = t.evaluation.performance.latency_ms
        if k not in out or lat < out[k][0]:
            out[k] = (lat, t.workload.uuid)
    return out or None


def winners(d: Definition, best, versions: list) -> dict[str, list[str]]:
    """commit sha -> workload uuids it won. The best keeps a key unless another version is faster
    by more than KEY_MARGIN; between two other versions the faster one wins."""
    lat = {}
    for v in versions:
        l_v = _latencies(d, v)
        if l_v is not None:
            lat[v.sha] = l_v
    if best.sha not in lat:
        raise ExportError(f"the best version {best.sha[:10]} of {d.name!r} has a trace that is not PASSED "
                          "(or no traces): not exportable")
    keys = sorted({k for l_v in lat.values() for k in l_v})
    won: dict[str, list[str]] = {best.sha: []}
    for k in keys:
        cur = best.sha if k in lat[best.sha] else None
        for sha, l_v in lat.items():
            if sha == best.sha or k not in l_v:
                continue
            if cur is None:
                cur = sha
                continue
            bar = lat[cur][k][0] * ((1 - KEY_MARGIN) if cur == best.sha else 1.0)
            if l_v[k][0] < bar:
                cur = sha
        won.setdefault(cur, []).append(lat[cur][k][1])
    return won


def export_task(lin, task: str, out_dir: Path, run_name: str) -> list[Path]:
    from avo.lineage import LineageError
    d = _definition_for(lin, task)
    try:
        best = lin.best(task)
        versions = lin.versions(task)
    except LineageError as e:
        raise ExportError(str(e)) from None
    won = winners(d, best, versions)
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
                                island=str(v.meta.island), won=uuids)
            try:
                write_artifact(stage / name, d, _solution(task, v), v.traces, meta)
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


def export_run(run: str, out_dir: Path, task: Optional[str] = None) -> list[Path]:
    """Export the best version per task (and per-key winners) of a run; returns artifact folders."""
    from avo.lineage import Lineage, LineageError, resolve_run
    try:
        path = resolve_run(str(run))
        lin = Lineage.open(path)
    except LineageError as e:
        raise ExportError(str(e)) from None
    try:
        tasks = lin.tasks()
        if task is not None:
            if task not in tasks:
                raise ExportError(f"run {run!r} has no task {task!r} (tasks: {', '.join(tasks) or 'none'})")
            tasks = [task]
        if not tasks:
            raise ExportError(f"run {run!r} has no versions yet: nothing to export")
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ExportError(f"--out {out_dir} is a file, not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for t in tasks:
            paths += export_task(lin, t, out_dir, path.name)
        return paths
    finally:
        lin.close()
