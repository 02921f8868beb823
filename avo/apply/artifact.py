"""Kernel artifacts: one self-contained folder per exported winner, loadable without the lineage or
the repo's kernels/ folder.

    <artifact>/
      manifest.json     task, the shape keys it covers (won or verified) with latency / speedup /
                        % SOL, declared var-axis ranges, device, lineage run + commit, avo version
      solution.json     the avo Solution = FlashInfer Solution JSON (sources embedded)
      definition.json   the Definition, reference code embedded
      traces.jsonl      FlashInfer Trace JSON, PASSED traces only (REWARD_HACK is avo-only)
      sources/<path>    the kernel source file(s), imported by path at run time
      lineage/          the lineage commit it was exported from, as git stored it: `commit` (the raw
                        commit object), meta.json, traces.jsonl (kernel.py is sources/kernel.py)

`write_artifact` builds it from (definition, solution, traces, meta); `read_artifact` validates it
with one-line errors; `load_entry` imports the kernel's DPS entry point from the folder;
`verify_provenance` checks it against its lineage commit by hashing those files as git does.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avo.apply.keys import KeyLayout, normalized_workload
from avo.schema import DType, Definition, EvaluationStatus, Solution, Trace
from avo.tasks import source_hash

ARTIFACT_FORMAT = "avo-artifact/1"
LOADABLE_LANGUAGES = ("triton", "python")  # what the runtime can import; cuda/cpp go through FlashInfer


PROVENANCE_DIR = "lineage"  # the lineage commit an artifact was exported from (verify_provenance)
PROVENANCE_FILES = ("commit", "meta.json", "traces.jsonl")


class ArtifactError(Exception):
    """An artifact that cannot be written, read or loaded; the message is one line."""


class KeyStat(BaseModel):
    """One shape key the artifact was verified on, with its measured numbers."""
    model_config = ConfigDict(extra="forbid")
    key: str  # canonical Workload.key() (every input dtype spelled out)
    workload: str  # uuid of the workload the numbers come from
    axes: dict[str, int]  # the workload's axis values (all of them: outputs may need axes inputs lack)
    dtypes: dict[str, DType]  # every input and output tensor, resolved
    scalars: dict[str, Union[bool, int, float]] = Field(default_factory=dict)
    won: bool = True  # False: verified here but another artifact of the export is faster on it
    latency_ms: float
    reference_latency_ms: float
    speedup: float
    sol_fraction: Optional[float] = None
    sol_score: Optional[float] = None


class ArtifactManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["avo-artifact/1"] = ARTIFACT_FORMAT
    task: str = Field(min_length=1)
    name: str = Field(min_length=1)
    solution: str
    entry_point: str
    language: str
    keys: list[KeyStat] = Field(min_length=1)
    # Nearest-key dispatch (opt-in: enable(nearest=True)) stays inside these [lo, hi] per var axis
    # (default: the verified keys' span).
    ranges: dict[str, list[int]]
    # Verified-only dispatch also serves a key inside these [lo, hi] (other axes, dtypes and scalars
    # equal to a verified key's): ranges the artifact was checked on, both ends among its verified
    # keys (the writer refuses one that is not). Absent: exact verified keys only.
    checked_ranges: Optional[dict[str, list[int]]] = None
    device_mode: str
    hardware: str
    run: Optional[str] = None
    lineage: Optional[str] = None
    commit: Optional[str] = None
    island: Optional[str] = None
    avo_version: str
    created: str
    sources_sha256: dict[str, str]


class ArtifactMeta(BaseModel):
    """What the writer cannot read off the traces."""
    model_config = ConfigDict(extra="forbid")
    name: Optional[str] = None
    run: Optional[str] = None
    lineage: Optional[str] = None
    commit: Optional[str] = None
    island: Optional[str] = None
    won: Optional[list[str]] = None  # workload uuids this artifact won; None = all of them
    ranges: Optional[dict[str, list[int]]] = None  # widen/narrow the declared range by hand
    checked_ranges: Optional[dict[str, list[int]]] = None  # axes checked over [lo, hi] (see the manifest)


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: ArtifactManifest
    solution: Solution
    definition: Definition
    traces: list[Trace]

    @property
    def sources_dir(self) -> Path:
        return self.path / "sources"

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.manifest.sources_sha256.items())).encode()
                              + self.solution.spec.entry_point.encode()).hexdigest()[:16]


def avo_version() -> str:
    try:
        from avo import __version__
        return __version__
    except ImportError:  # a namespace-package import of avo (stale editable install)
        from importlib.metadata import version
        return version("avo")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "artifact"


def key_stats(definition: Definition, traces: list[Trace], won: Optional[list[str]]) -> list[KeyStat]:
    """One KeyStat per canonical key (the fastest trace when several workloads share a key)."""
    by_key: dict[str, KeyStat] = {}
    for t in traces:
        w, p = t.workload, t.evaluation.performance
        nw = normalized_workload(definition, w)
        dtypes = {n: w.dtypes.get(n, s.dtype) for n, s in {**definition.inputs, **definition.outputs}.items()
                  if s.shape is not None}
        ks = KeyStat(key=nw.key(), workload=w.uuid, axes=dict(w.axes), dtypes=dtypes,
                     scalars={n: s.value for n, s in nw.inputs.items()},
                     won=won is None or w.uuid in won, latency_ms=p.latency_ms,
                     reference_latency_ms=p.reference_latency_ms, speedup=p.speedup_factor,
                     sol_fraction=p.sol_fraction, sol_score=p.sol_score)
        old = by_key.get(ks.key)
        if old is None or (ks.won, -ks.latency_ms) > (old.won, -old.latency_ms):
            by_key[ks.key] = ks
    return sorted(by_key.values(), key=lambda k: k.key)


def declared_ranges(definition: Definition, keys: list[KeyStat]) -> dict[str, list[int]]:
    layout = KeyLayout.of(definition)
    return {a: [min(k.axes[a] for k in keys), max(k.axes[a] for k in keys)] for a in layout.var_axes}


def write_artifact(folder: Path, definition: Definition, solution: Solution, traces: list[Trace],
                   meta: Optional[ArtifactMeta] = None, provenance: Optional[dict[str, bytes]] = None) -> Path:
    """Write an artifact folder (replacing one already there as a whole, so a reader sees the old or
    the new artifact, never a mix). Every trace must be PASSED: a solution that failed or was caught
    reward hacking on any workload is not exportable. `provenance`: the lineage commit the artifact
    comes from (Lineage.commit_record), kept under lineage/ for verify_provenance."""
    meta = meta or ArtifactMeta()
    folder = Path(folder)
    if solution.definition != definition.name:
        raise ArtifactError(f"solution {solution.name!r} is for {solution.definition!r}, not {definition.name!r}")
    mine = [t for t in traces if t.definition == definition.name]
    if not mine:
        raise ArtifactError(f"no traces of {definition.name!r} for solution {solution.name!r}: nothing to export")
    for t in mine:
        if not t.passed:
            st = t.evaluation.status.value if t.evaluation else "no evaluation"
            raise ArtifactError(f"solution {solution.name!r} is {st} on workload {t.workload.uuid}: "
                                "only solutions that passed every workload are exported")
        if t.evaluation.performance is None:
            raise ArtifactError(f"trace of workload {t.workload.uuid} has no performance numbers")
    keys = key_stats(definition, mine, meta.won)
    ranges = declared_ranges(definition, keys)
    if meta.ranges:
        for k in keys:
            for a, (lo, hi) in meta.ranges.items():
                if a in k.axes and not lo <= k.axes[a] <= hi:
                    raise ArtifactError(f"declared range {a}=[{lo}, {hi}] excludes verified key {k.key}")
        ranges.update(meta.ranges)
    checked = _checked_ranges(definition, keys, meta.checked_ranges) if meta.checked_ranges else None
    env = mine[0].evaluation.environment
    name = safe_name(meta.name or solution.name)
    manifest = ArtifactManifest(
        task=definition.name, name=name, solution=solution.name, entry_point=solution.spec.entry_point,
        language=solution.spec.language, keys=keys, ranges=ranges, checked_ranges=checked,
        device_mode=getattr(env, "device_mode", "cuda"), hardware=env.hardware,
        run=meta.run, lineage=meta.lineage, commit=meta.commit, island=meta.island,
        avo_version=avo_version(), created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        sources_sha256={s.path: source_hash(s.content) for s in solution.sources},
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for s in solution.sources:
            p = tmp / "sources" / s.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(s.content)
        (tmp / "solution.json").write_text(solution.model_dump_json(indent=2) + "\n")
        (tmp / "definition.json").write_text(definition.model_dump_json(indent=2) + "\n")
        (tmp / "traces.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in mine))
        (tmp / "manifest.json").write_text(manifest_json(manifest))
        if provenance:
            if "kernel.py" in provenance and [provenance["kernel.py"]] != [s.content.encode() for s in solution.sources]:
                raise ArtifactError(f"solution {solution.name!r}: its source is not the lineage commit's kernel.py")
            (tmp / PROVENANCE_DIR).mkdir()
            for name in PROVENANCE_FILES:  # kernel.py is sources/kernel.py
                (tmp / PROVENANCE_DIR / name).write_bytes(provenance[name])
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def manifest_json(m: ArtifactManifest) -> str:
    """The manifest as written: `checked_ranges` only when set (older manifests lack the key)."""
    return m.model_dump_json(indent=2, exclude={"checked_ranges"} if m.checked_ranges is None else None) + "\n"


def _checked_ranges(definition: Definition, keys: list[KeyStat], checked: dict[str, list[int]]) -> dict[str, list[int]]:
    """Validate ranges declared as checked: var axes only, [lo, hi] with both ends verified keys."""
    layout = KeyLayout.of(definition)
    out = {}
    for a, r in checked.items():
        if a not in layout.var_axes:
            raise ArtifactError(f"checked range of {a!r}: not a var axis the inputs determine ({', '.join(layout.var_axes)})")
        if len(r) != 2 or r[0] > r[1]:
            raise ArtifactError(f"checked range of {a!r} must be [lo, hi], got {r}")
        seen = {k.axes[a] for k in keys}
        missing = [v for v in r if v not in seen]
        if missing:
            raise ArtifactError(f"checked range {a}=[{r[0]}, {r[1]}]: {missing[0]} is not a verified key's value "
                                "(both ends of a checked range must be verified workloads)")
        out[a] = [int(r[0]), int(r[1])]
    return out


def _swap_in(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(tmp, folder)
        return
    if not (folder / "manifest.json").exists():
        raise ArtifactError(f"{folder} exists and is not an artifact: not overwriting it")
    old = folder.parent / f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {err['msg']}{more}"


def _load_json(path: Path):
    if not path.exists():
        raise ArtifactError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None


def _model(cls, raw, path: Path):
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ArtifactError(f"{path}: {_one_line(e)}") from None


def read_artifact(folder: Path) -> Artifact:
    """Read and validate an artifact folder; ArtifactError (one line) on anything inconsistent."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise ArtifactError(f"{folder}: not an artifact (no manifest.json)")
    raw = _load_json(folder / "manifest.json")
    if isinstance(raw, dict) and raw.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{folder}/manifest.json: format {raw.get('format')!r} is not {ARTIFACT_FORMAT!r}")
    manifest = _model(ArtifactManifest, raw, folder / "manifest.json")
    solution = _model(Solution, _load_json(folder / "solution.json"), folder / "solution.json")
    definition = _model(Definition, _load_json(folder / "definition.json"), folder / "definition.json")
    if not (definition.name == solution.definition == manifest.task):
        raise ArtifactError(f"{folder}: task mismatch (manifest {manifest.task!r}, solution "
                            f"{solution.definition!r}, definition {definition.name!r})")
    if solution.spec.entry_point != manifest.entry_point:
        raise ArtifactError(f"{folder}: manifest entry point {manifest.entry_point!r} != solution's {solution.spec.entry_point!r}")
    for s in solution.sources:
        p = folder / "sources" / s.path
        if not p.exists():
            raise ArtifactError(f"{p}: missing (listed in solution.json)")
        want = source_hash(s.content)
        if source_hash(p.read_text()) != want or manifest.sources_sha256.get(s.path) != want:
            raise ArtifactError(f"{p}: differs from solution.json / manifest sha256 (edited by hand? re-export)")
    tpath = folder / "traces.jsonl"
    if not tpath.exists():
        raise ArtifactError(f"{tpath}: missing")
    traces = []
    for i, line in enumerate(tpath.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = Trace.model_validate_json(line)
        except ValidationError as e:
            raise ArtifactError(f"{tpath}:{i}: {_one_line(e)}") from None
        if t.evaluation is None or t.evaluation.status != EvaluationStatus.PASSED:
            st = t.evaluation.status.value if t.evaluation else "no evaluation"
            raise ArtifactError(f"{tpath}:{i}: status {st} (artifacts hold PASSED traces only)")
        traces.append(t)
    uuids = {t.workload.uuid for t in traces}
    layout = KeyLayout.of(definition)
    for k in manifest.keys:
        if k.workload not in uuids:
            raise ArtifactError(f"{folder}/manifest.json: key {k.key} cites workload {k.workload}, which has no trace")
        missing = [a for a in layout.var_axes if a not in k.axes]
        if missing:
            raise ArtifactError(f"{folder}/manifest.json: key {k.key} lacks axes {missing}")
    for a, r in {**manifest.ranges, **(manifest.checked_ranges or {})}.items():
        if len(r) != 2 or r[0] > r[1]:
            raise ArtifactError(f"{folder}/manifest.json: range of {a!r} must be [lo, hi], got {r}")
    return Artifact(folder, manifest, solution, definition, traces)


def _git_sha(kind: str, data: bytes) -> bytes:
    return hashlib.sha1(f"{kind} {len(data)}\0".encode() + data).digest()


def verify_provenance(art: Artifact) -> None:
    """Check an artifact against the lineage commit it names: lineage/ holds that commit's object
    and files as git stored them, so hashing them the way git does must give back the commit sha in
    the manifest, and the artifact's kernel must be that commit's kernel.py. ArtifactError (one
    line) when anything differs or the artifact carries no lineage record."""
    where = art.path / PROVENANCE_DIR
    if not where.is_dir():
        raise ArtifactError(f"{art.path}: no {PROVENANCE_DIR}/ (exported before artifacts kept their lineage commit)")
    files = {}
    for name in PROVENANCE_FILES:
        if not (where / name).exists():
            raise ArtifactError(f"{where / name}: missing")
        files[name] = (where / name).read_bytes()
    if len(art.solution.sources) != 1:
        raise ArtifactError(f"{art.path}: a lineage version is one kernel.py, the solution has "
                            f"{len(art.solution.sources)} files")
    src = art.solution.sources[0]
    files["kernel.py"] = (art.sources_dir / src.path).read_bytes()
    tree = b"".join(b"100644 " + n.encode() + b"\0" + _git_sha("blob", files[n])
                    for n in sorted(("kernel.py", "meta.json", "traces.jsonl")))
    first = files["commit"].split(b"\n", 1)[0].decode(errors="replace")
    if first != f"tree {_git_sha('tree', tree).hex()}":
        raise ArtifactError(f"{where}: the kernel, meta.json or traces.jsonl are not those of the commit ({first})")
    sha = _git_sha("commit", files["commit"]).hex()
    if sha != art.manifest.commit:
        raise ArtifactError(f"{where}/commit is commit {sha[:10]}, the manifest names {str(art.manifest.commit)[:10]}")
    meta = json.loads(files["meta.json"])
    if meta.get("task") != art.manifest.task or meta.get("source_hash") != source_hash(src.content):
        raise ArtifactError(f"{where}/meta.json: task or source hash differ from the artifact's")


def find_artifacts(root: Path) -> list[Path]:
    """Artifact folders at or under root (hidden folders, e.g. half-written temporaries, skipped)."""
    root = Path(root)
    if not root.exists():
        raise ArtifactError(f"{root}: no such directory")
    if (root / "manifest.json").exists():
        return [root]
    found = []
    for p in sorted(root.rglob("manifest.json")):
        rel = p.parent.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(p.parent)
    return found


def load_entry(art: Artifact) -> Callable:
    """Import the artifact's kernel module from its folder (by path, unique module name) and return
    its DPS entry point."""
    lang = art.solution.spec.language
    if lang not in LOADABLE_LANGUAGES:
        raise ArtifactError(f"{art.path}: language {lang!r} is not loadable by avo.apply "
                            f"({', '.join(LOADABLE_LANGUAGES)}); use FlashInfer-Bench's apply for it")
    entry = art.sources_dir / art.solution.entry_file
    modname = f"avo_artifact_{safe_name(art.manifest.task).replace('-', '_').replace('.', '_')}_{art.digest}"
    if modname in sys.modules:
        mod = sys.modules[modname]
    else:
        src_dir = str(art.sources_dir)
        sys.path.insert(0, src_dir)  # multi-file sources import each other
        try:
            spec = importlib.util.spec_from_file_location(modname, entry)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            spec.loader.exec_module(mod)
        except Exception as e:
            sys.modules.pop(modname, None)
            raise ArtifactError(f"{entry}: import failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(src_dir)
    fn = getattr(mod, art.solution.entry_symbol, None)
    if not callable(fn):
        raise ArtifactError(f"{entry}: no callable {art.solution.entry_symbol!r}")
    return fn
