"""What a run is made of, resolved from its config before anything is evaluated: tasks with
their workloads and seed kernels, the islands in round-robin order, and the run's identity (what
must not change when a run is resumed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from avo.config import ConfigError, RunConfig
from avo.evolve.inductor_seed import INDUCTOR_SEED, make_inductor_seed
from avo.schema import Workload
from avo.tasks import (REFERENCE_SEED, Task, TaskError, default_seed_path, load_solution, load_task, own_solution,
                       reference_seed, seed_from_solution, source_hash)


class TaskSetup(BaseModel):
    entry: str  # as written in the config's `tasks`
    task: Task
    workloads: list[Workload]
    seed_source: str
    seed_path: str  # the seed's file, or REFERENCE_SEED for one made from the reference
    seed_kind: str = "file"  # file (configured or kernels/) | problem solution | inductor | reference
    seed_note: str = ""  # why a problem with only a reference got the plain reference seed

    def seed_text(self, show_path=str) -> str:
        """The seed as `avo evolve` names it: its path (as `show_path` writes it) and where it came from."""
        if self.seed_kind == "inductor":
            return "made from the task's reference by TorchInductor (Triton kernels, no solution came with the problem)"
        if self.seed_kind == "reference":
            return ("the task's reference in plain PyTorch (the problem has no solution"
                    + (f"; Inductor's seed: {self.seed_note}" if self.seed_note else "") + ")")
        return show_path(self.seed_path) + (" (the problem's own solution)" if self.seed_kind == "problem solution" else "")

    @property
    def name(self) -> str:
        return self.task.name

    def plain_seed(self, why: str) -> None:
        """Fall back from Inductor's seed to the plain reference seed."""
        self.seed_source, self.seed_path, self.seed_kind = reference_seed(self.task.definition), REFERENCE_SEED, "reference"
        self.seed_note = why


class IslandRef(BaseModel):
    task: str
    island: int  # index among the task's islands
    operator: str

    @property
    def label(self) -> str:
        return f"{self.task}/island-{self.island}"


def _seed(cfg: RunConfig, entry: str, task: Task, workloads: list[Workload], device: str) -> tuple[str, str, str, str]:
    """(source, path, kind, note): the configured seed, else kernels/<family>/<name>_seed.py, else
    the problem directory's own solution, else Inductor's Triton for the reference, else the
    reference itself (note: why Inductor's was not used)."""
    path, kind = cfg.seed_path(entry, task.name), "file"
    if path is None:
        cand = default_seed_path(task.name)
        if cand.exists():
            path = cand
        else:
            path = own_solution(entry)
            kind = "problem solution" if path is not None else kind
    if path is None:
        why = "off in the config (reference_seed: plain)"
        if cfg.reference_seed == "inductor":
            src, why = make_inductor_seed(task, workloads, device)
            if src is not None:
                return src, INDUCTOR_SEED, "inductor", ""
        return reference_seed(task.definition), REFERENCE_SEED, "reference", why
    if not Path(path).exists():
        raise ConfigError(f"seed kernel for {task.name!r} not found: {path}")
    try:
        sol = load_solution(task, Path(path))
    except TaskError as e:
        raise ConfigError(str(e)) from None
    if kind == "problem solution" and len(sol.sources) == 1 and sol.spec.language in ("python", "triton"):
        try:
            return seed_from_solution(task.definition, sol), str(path), kind, ""
        except TaskError as e:
            raise ConfigError(str(e)) from None
    if len(sol.sources) != 1 or sol.entry_symbol != "run":
        raise ConfigError(f"seed {path}: avo evolves single-file kernels whose entry point is run() "
                          f"(got {len(sol.sources)} files, entry {sol.spec.entry_point})")
    return sol.sources[0].content, str(path), kind, ""


def resolve_tasks(cfg: RunConfig, device: str) -> dict[str, TaskSetup]:
    """Task name -> setup, in config order. Workloads: the config's list or all for the device."""
    out: dict[str, TaskSetup] = {}
    for entry in cfg.tasks:
        try:
            task = load_task(entry)
        except TaskError as e:
            raise ConfigError(str(e)) from None
        if task.name in out:
            raise ConfigError(f"task {task.name!r} is listed twice in tasks")
        wanted = cfg.workloads.get(task.name) or cfg.workloads.get(entry)
        if wanted:
            by_uuid = {w.uuid: w for w in task.workloads}
            missing = [u for u in wanted if u not in by_uuid]
            if missing:
                raise ConfigError(f"workloads.{task.name}: unknown workload {missing[0]!r} "
                                  f"(known: {', '.join(by_uuid)})")
            wls = [by_uuid[u] for u in wanted]
        else:
            wls = task.select("gpu" if device == "cuda" else "cpu")
        if not wls:
            raise ConfigError(f"task {task.name!r} has no workloads for device {device}")
        src, path, kind, note = _seed(cfg, entry, task, wls, device)
        out[task.name] = TaskSetup(entry=entry, task=task, workloads=wls, seed_source=src, seed_path=path,
                                   seed_kind=kind, seed_note=note)
    for key in cfg.workloads:
        if key not in out and key not in [s.entry for s in out.values()]:
            raise ConfigError(f"workloads names {key!r}, which is not among tasks")
    return out


def resolve_islands(cfg: RunConfig, tasks: dict[str, TaskSetup]) -> list[IslandRef]:
    by_entry = {s.entry: name for name, s in tasks.items()} | {Path(s.entry).name: name for name, s in tasks.items()}
    counts: dict[str, int] = {}
    out = []
    for spec in cfg.island_specs():
        name = spec.task if spec.task in tasks else by_entry.get(spec.task)
        if name is None:
            raise ConfigError(f"island task {spec.task!r} is not among the loaded tasks ({', '.join(tasks)})")
        i = counts.get(name, 0)
        counts[name] = i + 1
        out.append(IslandRef(task=name, island=i, operator=spec.operator))
    return out


def run_identity(device: str, tasks: dict[str, TaskSetup], islands: list[IslandRef]) -> dict:
    """What a resumed run must share with the run that created the lineage."""
    return {"device": device,
            "tasks": list(tasks),
            "islands": [f"{i.label}:{i.operator}" for i in islands],
            "seeds": {n: source_hash(s.seed_source) for n, s in tasks.items()},
            "workloads": {n: [w.uuid for w in s.workloads] for n, s in tasks.items()}}


def identity_mismatch(stored: dict, new: dict) -> Optional[str]:
    for key in ("device", "tasks", "islands", "seeds", "workloads"):
        if stored.get(key) != new.get(key):
            a, b = json.dumps(stored.get(key)), json.dumps(new.get(key))
            return f"{key} differ (lineage: {a[:120]}; config: {b[:120]})"
    return None
