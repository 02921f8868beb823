"""FlashInfer-Bench integration: lay exported artifacts out as a FlashInfer Trace dataset
(`definitions/`, `solutions/`, `workloads/`, `traces/`), the folder `flashinfer_bench.TraceSet
.from_path` loads and FlashInfer-Bench's own apply (`enable_apply(dataset_path)`) dispatches from.

An artifact's solution.json / definition.json / traces.jsonl are already FlashInfer JSON (avo's
extra keys are ignored by flashinfer_bench.data); this only arranges them in the dataset layout.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Union

from avo.apply.artifact import ArtifactError, find_artifacts, read_artifact


def write_flashinfer_trace_set(sources: Union[Path, Iterable[Path]], root: Path) -> Path:
    """Write every artifact found under `sources` into a FlashInfer Trace dataset at `root`."""
    srcs = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    arts = [read_artifact(p) for s in srcs for p in find_artifacts(s)]
    if not arts:
        raise ArtifactError(f"no artifacts under {', '.join(map(str, srcs))}")
    root = Path(root)
    seen: dict[str, Path] = {}
    workloads: dict[str, dict[str, str]] = {}
    for a in arts:
        task, sol = a.manifest.task, a.solution.name
        if sol in seen:
            raise ArtifactError(f"solution name {sol!r} appears in {seen[sol]} and {a.path}; FlashInfer "
                                "datasets need unique solution names")
        seen[sol] = a.path
        for sub in ("definitions", f"solutions/{task}", f"traces/{task}", "workloads"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "definitions" / f"{task}.json").write_text(a.definition.model_dump_json(indent=2) + "\n")
        (root / "solutions" / task / f"{sol}.json").write_text(a.solution.model_dump_json(indent=2) + "\n")
        (root / "traces" / task / f"{sol}.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in a.traces))
        for t in a.traces:
            row = {"definition": task, "workload": t.workload.model_dump(mode="json"), "solution": None, "evaluation": None}
            workloads.setdefault(task, {})[t.workload.uuid] = json.dumps(row)
    for task, rows in workloads.items():
        (root / "workloads" / f"{task}.jsonl").write_text("".join(r + "\n" for r in rows.values()))
    return root
