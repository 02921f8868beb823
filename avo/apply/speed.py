"""Never slower: an artifact serves a shape key on a GPU only where it measured faster there than
the call it replaces (the task's baseline T_b, which for the attention tasks is torch SDPA: what
transformers calls), on that GPU model.

Speed records come from two places:
* export: every trace an artifact holds was timed by the evaluator, kernel and T_b interleaved,
  on the GPU named in the trace (`environment.hardware`); `export_records` reads them (traces
  measured in the interpreter, or while the GPU was throttled, make no claim);
* re-measurement: `python -m avo.apply.measure DIR` (avo/apply/measure.py) times every artifact under
  DIR on this machine's GPU and writes `DIR/speed-<gpu>.jsonl`; `enable(DIR)` reads every
  `speed-*.jsonl` directly in DIR. A row names the artifact by its digest (sources + entry), so a
  re-export of the same kernel keeps its rows and an edited kernel has none.

A re-measurement overrides the export record of the same (kernel, key, GPU). GPU names are
normalized as the evaluator writes them: spaces become underscores (`NVIDIA_H100_80GB_HBM3`).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from avo.apply.artifact import Artifact, ArtifactError
from avo.apply.keys import canonical_key

SPEED_GLOB = "speed-*.jsonl"
TASK_BASELINE = "task"  # SpeedRecord.against / Applied.replaces: the task's own T_b


class SpeedRecord(BaseModel):
    """One measurement of one kernel on one key on one GPU model, against the call it replaces."""
    model_config = ConfigDict(extra="forbid")
    task: str
    artifact: str  # manifest name, for people
    digest: str  # Artifact.digest: which kernel (its sources and entry point)
    key: str  # canonical key string
    hardware: str  # normalized device name (`hardware_name`)
    device_mode: str  # "cuda": a GPU timing; "interpret": CPU interpreter, no speed claim
    latency_ms: float
    replaced_latency_ms: float
    ratio: float  # replaced_latency_ms / latency_ms: > 1 is faster than the replaced call
    replaced: str  # what was timed as the replaced call ("T_b" = the task's baseline, else its reference)
    # which call that was, as integrations name what they replace (Applied.replaces): "task" = the
    # task's own T_b (evaluators/<task>/baseline.py, e.g. SDPA for attention, else its reference);
    # "xgrammar" = xgrammar.apply_token_bitmask_inplace (`avo apply measure --baseline xgrammar`).
    # Rows written before this field count as "task".
    against: str = TASK_BASELINE
    source: Literal["export", "measure"]
    timing_method: Optional[str] = None
    throttled: bool = False
    measured: str = ""  # ISO timestamp

    @property
    def claim(self) -> bool:
        """Whether this record can back a speed claim (a GPU timing, clocks not pulled down)."""
        return self.device_mode == "cuda" and not self.throttled and self.latency_ms > 0


def normalize_hardware(name: str) -> str:
    return name.strip().replace(" ", "_")


_NAMES: dict = {}


def hardware_name(device) -> str:
    """The normalized model name of a torch device ("NVIDIA_H100_80GB_HBM3"; "cpu" for CPU tensors)."""
    name = _NAMES.get(device)
    if name is None:
        if device.type == "cuda":
            import torch
            idx = device.index if device.index is not None else torch.cuda.current_device()
            name = normalize_hardware(torch.cuda.get_device_name(idx))
        else:
            name = device.type
        _NAMES[device] = name
    return name


def export_records(art: Artifact) -> list[SpeedRecord]:
    """The speed records an artifact carries from its export: one per trace (kernel and T_b were
    timed interleaved by the evaluator on the trace's GPU)."""
    out = []
    for t in art.traces:
        p, env = t.evaluation.performance, t.evaluation.environment
        if p is None or p.latency_ms <= 0:
            continue
        out.append(SpeedRecord(
            task=art.manifest.task, artifact=art.manifest.name, digest=art.digest,
            key=canonical_key(art.definition, t.workload), hardware=normalize_hardware(env.hardware),
            device_mode=env.device_mode, latency_ms=p.latency_ms, replaced_latency_ms=p.reference_latency_ms,
            ratio=p.reference_latency_ms / p.latency_ms, replaced="T_b", source="export",
            timing_method=env.timing_method, throttled=env.throttled, measured=t.evaluation.timestamp))
    return out


def read_speed_files(dirs: Iterable[Path]) -> list[SpeedRecord]:
    """Every row of every `speed-*.jsonl` directly in the given folders; ArtifactError (one line)
    on a malformed row."""
    rows = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for p in sorted(d.glob(SPEED_GLOB)):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(SpeedRecord.model_validate_json(line))
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ArtifactError(f"{p}:{i}: {'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}") from None
    return rows


def write_speed_file(path: Path, records: list[SpeedRecord]) -> Path:
    """Merge records into a speed file: a new row replaces the old one of the same (kernel, key, GPU)."""
    path = Path(path)
    old = []
    if path.exists():
        old = [SpeedRecord.model_validate_json(x) for x in path.read_text().splitlines() if x.strip()]
    new = {(r.digest, r.key, r.hardware, r.against): r for r in records}
    keep = [r for r in old if (r.digest, r.key, r.hardware, r.against) not in new]
    rows = keep + list(new.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    tmp.replace(path)
    return path


class SpeedBook:
    """Speed records by (kernel digest, key, GPU, what it was measured against); a re-measurement
    beats the export's record, a newer measurement an older one."""

    def __init__(self, records: Iterable[SpeedRecord] = ()):
        self._by: dict = {}
        self._against: dict = {}  # (digest, key, hardware) -> the calls it was measured against
        for r in records:
            self.add(r)

    def add(self, r: SpeedRecord) -> None:
        k = (r.digest, r.key, r.hardware, r.against)
        self._against.setdefault((r.digest, r.key, r.hardware), set()).add(r.against)
        old = self._by.get(k)
        if old is None or (r.source == "measure", r.measured) >= (old.source == "measure", old.measured):
            self._by[k] = r

    def get(self, digest: str, key: str, hardware: str, against: str = TASK_BASELINE) -> Optional[SpeedRecord]:
        r = self._by.get((digest, key, hardware, against))
        return r if r is not None and r.claim else None

    def measured_against(self, digest: str, key: str, hardware: str) -> set:
        """What this kernel was measured against on this key and GPU (any record, claim or not)."""
        return self._against.get((digest, key, hardware), set())

    def __len__(self) -> int:
        return len(self._by)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def speed_file_name(hardware: str) -> str:
    return f"speed-{json.dumps(hardware)[1:-1].replace('/', '_')}.jsonl"
