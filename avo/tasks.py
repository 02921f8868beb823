"""Load tasks: avo's `evaluators/<task>/` folders and foreign FlashInfer-Bench / SOL-ExecBench
problem directories (definition.json, workload.jsonl, optional solution JSON); their seed kernels;
a kernel file as the Solution the harness evaluates, and the source hash that names it."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ValidationError

from avo.schema import BuildSpec, Definition, Solution, SourceFile, Workload

REPO_ROOT = Path(__file__).resolve().parents[1]
KERNEL_ENTRY = "kernel.py::run"  # a lineage's kernel file and its entry point

# Seed kernel x0 per known task, relative to kernels/. A task not listed here falls back to the
# convention kernels/<family>/<rest>_seed.py (task = <family>_<rest>), then to a problem
# directory's own solution.json; `seed_kernels:` in the config overrides all of them.
SEED_KERNELS: dict[str, str] = {
    "grammar_bitmask": "grammar/bitmask_seed.py",
    "attention_mha_fwd": "attention/mha_fwd_seed.py",
    "attention_gqa_decode": "attention/gqa_decode_seed.py",
}


class TaskError(Exception):
    """A task or candidate file that cannot be loaded; the message is one line for the user."""


class Task(BaseModel):
    definition: Definition
    workloads: list[Workload]
    root: Optional[Path] = None  # folder the task came from (safetensors inputs are relative to it)
    baseline: Optional[str] = None  # code with `run` timed as T_b; default: the reference

    @property
    def name(self) -> str:
        return self.definition.name

    def select(self, target: Literal["gpu", "cpu", "all"]) -> list[Workload]:
        """The workloads evaluated on a device: `cpu` = small interpreter shapes. A foreign problem
        (FlashInfer-Bench workloads carry no target, so all count as gpu) gets its small workloads
        on cpu: those of at most CPU_AUTO_BYTES of inputs and outputs, else the smallest one."""
        if target == "all":
            return list(self.workloads)
        chosen = [w for w in self.workloads if w.target == target]
        if target == "cpu" and not chosen and self.workloads:
            sizes = [(_io_bytes(self.definition, w), i) for i, w in enumerate(self.workloads)]
            small = [i for b, i in sizes if b <= CPU_AUTO_BYTES] or [min(sizes)[1]]
            chosen = [self.workloads[i] for i in small]
        return chosen


CPU_AUTO_BYTES = 8 << 20


def _io_bytes(d: Definition, w: Workload) -> int:
    try:
        return d.io_bytes(w)
    except (ValueError, KeyError):
        return 1 << 62  # unresolvable here: never picked as a small interpreter workload


def evaluators_dir() -> Path:
    return Path(os.environ.get("AVO_EVALUATORS", REPO_ROOT / "evaluators"))


def kernels_dir() -> Path:
    return Path(os.environ.get("AVO_KERNELS", REPO_ROOT / "kernels"))


def task_family(task: str) -> str:
    """grammar_bitmask -> grammar, attention_mha_fwd -> attention (recipes and seeds use it)."""
    return task.split("_", 1)[0]


def default_seed_path(task: str) -> Path:
    if task in SEED_KERNELS:
        return kernels_dir() / SEED_KERNELS[task]
    fam, _, rest = task.partition("_")
    return kernels_dir() / fam / f"{rest or fam}_seed.py"


def source_hash(source: str) -> str:
    """The name of a kernel source: duplicates are refused by it, versions and attempts record it."""
    return hashlib.sha256(source.encode()).hexdigest()


def _language(src: str) -> str:
    return "triton" if ("import triton" in src or "from triton" in src) else "python"


def kernel_solution(task: str, source: str, name: str, author: str = "avo") -> Solution:
    """A single-file kernel (Triton kernel + host `run`) as the Solution the harness evaluates."""
    return Solution(name=name, definition=task, author=author,
                    spec=BuildSpec(language=_language(source), target_hardware=["cuda"], entry_point=KERNEL_ENTRY),
                    sources=[SourceFile(path="kernel.py", content=source)])


REFERENCE_SEED = "<reference>"  # TaskSetup.seed_path of a seed made from the task's reference


def reference_seed(d: Definition) -> str:
    """A seed kernel made from the reference, for a problem that comes with no solution: the
    reference's `run` (renamed `reference_run`) called by a destination-passing `run(*inputs,
    *outputs)` that copies its results into the harness's output buffers. Plain PyTorch: it has
    no knobs for the offline operator; it gives agents a correct start and the gate a baseline."""
    import ast
    mod = ast.parse(d.reference)

    class Rename(ast.NodeTransformer):
        def visit_FunctionDef(self, node):
            self.generic_visit(node)
            if node.name == "run":
                node.name = "reference_run"
            return node

        def visit_Name(self, node):
            if node.id == "run":
                node.id = "reference_run"
            return node

    body = ast.unparse(Rename().visit(mod))
    return (f'"""Seed of {d.name}, made by avo from the task\'s reference (the problem came with no solution):\n'
            f'the reference itself, writing into the harness\'s output buffers. A correct start, not a kernel."""\n'
            f"{body}\n\n\n{dps_run(d, 'reference_run', returns=True)}")


def dps_run(d: Definition, callee: str, returns: bool) -> str:
    """A `run(*inputs, *outputs)` that calls `callee`: with its inputs, copying what it returns
    into the outputs (returns=True: a tensor, a tuple in output order or a dict by name), or with
    inputs and outputs (a destination-passing entry under another name)."""
    ins = [_ident(n, f"in{i}") for i, n in enumerate(d.inputs)]
    outs = [_ident(n, f"out{i}") for i, n in enumerate(d.outputs)]
    if not returns:
        return f"def run({', '.join(ins + outs)}):\n    {callee}({', '.join(ins + outs)})\n"
    call = f"{callee}({', '.join(ins)})"
    if not outs:  # in-place task: the callee mutates its inputs, as the kernel must
        return f"def run({', '.join(ins)}):\n    {call}\n"
    if len(outs) == 1:
        return (f"def run({', '.join(ins + outs)}):\n    result = {call}\n"
                f"    {outs[0]}.copy_(result[{list(d.outputs)[0]!r}] if isinstance(result, dict) else result)\n")
    keys = list(d.outputs)
    return (f"def run({', '.join(ins + outs)}):\n    results = {call}\n"
            f"    if isinstance(results, dict):\n        results = [results[k] for k in {keys!r}]\n"
            + "".join(f"    {o}.copy_(results[{i}])\n" for i, o in enumerate(outs)))


def _ident(name: str, fallback: str) -> str:
    import keyword
    ok = name.isidentifier() and not keyword.iskeyword(name) and name not in ("run", "result", "results")
    return name if ok else fallback


def seed_from_solution(d: Definition, sol: Solution) -> str:
    """A problem's own single-file Python solution as a seed kernel file: its source as written,
    plus a destination-passing `run` when its entry has another name or returns its outputs."""
    src = sol.sources[0].content
    if sol.entry_symbol == "run" and sol.spec.destination_passing_style:
        return src
    import ast
    if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == "run" for n in ast.parse(src).body):
        raise TaskError(f"solution {sol.name!r}: its entry is {sol.spec.entry_point!r} but it also defines "
                        f"`run`; avo's seed needs `run` for the destination-passing entry")
    return (src.rstrip("\n") + "\n\n\n# avo: the problem's entry point "
            f"{sol.spec.entry_point} as the destination-passing `run` avo evolves\n"
            + dps_run(d, sol.entry_symbol, returns=not sol.spec.destination_passing_style))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: malformed JSON (line {e.lineno}: {e.msg})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{i}: malformed JSON ({e.msg})") from None
    return rows


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {err['msg']}{more}"


def is_dataset_root(folder: Path) -> bool:
    """A FlashInfer-Trace dataset: definitions/ and workloads/ folders (solutions/, traces/, blob/)."""
    return (Path(folder) / "definitions").is_dir() and (Path(folder) / "workloads").is_dir()


def dataset_definitions(root: Path) -> dict[str, Path]:
    """Definition name -> file, for a FlashInfer-Trace dataset root (definitions/<op_type>/<name>.json;
    any depth, as flashinfer-bench's TraceSet reads it)."""
    out = {}
    for p in sorted((Path(root) / "definitions").rglob("*.json")):
        name = _read_json(p).get("name")
        if isinstance(name, str):
            out.setdefault(name, p)
    return out


def load_dataset_task(root: Path, name: Optional[str]) -> Task:
    """One definition of a FlashInfer-Trace dataset with its workloads (workloads/**/<name>.jsonl,
    or any workload trace naming it); safetensors paths are relative to the root."""
    root = Path(root)
    defs = dataset_definitions(root)
    if name is None or name not in defs:
        some = ", ".join(list(defs)[:8]) + (f", ... ({len(defs)} in all)" if len(defs) > 8 else "")
        what = "pick a definition with --definition NAME (or ROOT::NAME)" if name is None else f"no definition {name!r}"
        raise TaskError(f"{root} is a FlashInfer-Trace dataset: {what}; definitions: {some or 'none'}")
    dpath = defs[name]
    definition = _definition(_read_json(dpath), dpath)
    wpaths = sorted((root / "workloads").rglob(f"{name}.jsonl")) or sorted((root / "workloads").rglob("*.jsonl"))
    workloads = []
    for wpath in wpaths:
        for i, row in enumerate(_read_jsonl(wpath), 1):
            if row.get("definition", name) != name:
                continue
            workloads.append(_workload(row, wpath, i))
    if not workloads:
        raise TaskError(f"{root}: no workloads for {name!r} under workloads/")
    _check_workloads(definition, workloads, root / "workloads")
    return Task(definition=definition, workloads=workloads, root=root)


def _definition(raw: dict, dpath: Path) -> Definition:
    try:
        return Definition.model_validate(raw)
    except ValidationError as e:
        raise TaskError(f"{dpath}: {_one_line(e)}") from None


def _workload(row: dict, wpath: Path, line: int) -> Workload:
    row = row.get("workload", row)  # FlashInfer workload traces wrap the workload
    try:
        return Workload.model_validate(row)
    except ValidationError as e:
        raise TaskError(f"{wpath}:{line}: {_one_line(e)}") from None


def load_task_dir(folder: Path) -> Task:
    """One folder: definition.json, workloads.jsonl or workload.jsonl, reference.py/baseline.py."""
    folder = Path(folder)
    dpath = folder / "definition.json"
    if not dpath.exists():
        if is_dataset_root(folder):
            return load_dataset_task(folder, None)
        raise TaskError(f"{folder}: no definition.json (not a task folder)")
    raw = _read_json(dpath)
    if (folder / "reference.py").exists():
        raw["reference"] = (folder / "reference.py").read_text()
    definition = _definition(raw, dpath)
    wpath = next((p for p in (folder / "workloads.jsonl", folder / "workload.jsonl") if p.exists()), None)
    if wpath is None:
        raise TaskError(f"{folder}: no workloads.jsonl / workload.jsonl")
    workloads = []
    for i, row in enumerate(_read_jsonl(wpath), 1):
        workloads.append(_workload(row, wpath, i))
    _check_workloads(definition, workloads, wpath)
    baseline = (folder / "baseline.py").read_text() if (folder / "baseline.py").exists() else None
    return Task(definition=definition, workloads=workloads, root=folder, baseline=baseline)


def _check_workloads(d: Definition, workloads: list[Workload], where: Path) -> None:
    var_axes = {k for k, a in d.axes.items() if a.type == "var"}
    for w in workloads:
        missing = var_axes - set(w.axes)
        if missing:
            raise TaskError(f"{where}: workload {w.uuid} gives no value for axes {sorted(missing)}")
        unknown = set(w.inputs) - set(d.inputs)
        if unknown:
            raise TaskError(f"{where}: workload {w.uuid} names unknown inputs {sorted(unknown)}")
    if not workloads:
        raise TaskError(f"{where}: no workloads")


def list_tasks() -> list[Task]:
    root = evaluators_dir()
    return [load_task_dir(p) for p in sorted(root.iterdir()) if (p / "definition.json").exists()]


def split_target(target: str, definition: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(task name or folder, definition name in a dataset root): `ROOT::NAME`, or `ROOT` with `definition`."""
    if definition is None and "::" in target:
        target, definition = target.rsplit("::", 1)
    return target, definition


def own_solution(target: str, definition: Optional[str] = None) -> Optional[Path]:
    """The solution a problem came with (find_solution_json), for a target as load_task takes it."""
    folder, name = split_target(target, definition)
    return find_solution_json(Path(folder), name) if Path(folder).is_dir() else None


def load_task(target: str, definition: Optional[str] = None) -> Task:
    """A task name under evaluators/, a path to a problem directory, or a FlashInfer-Trace dataset
    root with a definition name (`definition`, or `ROOT::NAME`), or a KernelBench problem .py file."""
    target, definition = split_target(target, definition)
    p = Path(target)
    if p.suffix == ".py" and definition is None:  # KernelBench: class Model + get_inputs (avo/kernelbench.py)
        from avo.kernelbench import KernelBenchError, load_problem
        try:
            d, wls = load_problem(p)
        except KernelBenchError as e:
            raise TaskError(str(e)) from None
        return Task(definition=d, workloads=wls, root=p.parent)
    if definition is not None:
        if not p.is_dir() or not is_dataset_root(p):
            raise TaskError(f"{target}: not a FlashInfer-Trace dataset root (definitions/, workloads/), "
                            f"so a definition name ({definition!r}) does not apply")
        return load_dataset_task(p, definition)
    if p.is_dir():
        return load_task_dir(p)
    folder = evaluators_dir() / target
    if folder.is_dir():
        return load_task_dir(folder)
    known = ", ".join(sorted(q.name for q in evaluators_dir().iterdir() if (q / "definition.json").exists()))
    raise TaskError(f"unknown task {target!r} (known: {known}; or give a problem directory)")


def solution_from_kernel_file(task: Task, path: Path, name: Optional[str] = None,
                              entry: str = "run") -> Solution:
    """Wrap a kernel .py (Triton kernel + host wrapper `run`) as a Solution."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"{path}: no such file")
    src = path.read_text()
    if not src.strip():
        raise TaskError(f"{path}: empty file")
    return Solution(
        name=name or path.stem, definition=task.name, author="avo",
        spec=BuildSpec(language=_language(src), target_hardware=["cuda"], entry_point=f"{path.name}::{entry}"),
        sources=[SourceFile(path=path.name, content=src)],
    )


def load_solution(task: Task, path: Path) -> Solution:
    """A kernel .py or a Solution JSON (FlashInfer Trace format)."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"{path}: no such file")
    if path.suffix == ".json":
        raw = _read_json(path)
        # SOL-ExecBench's CLI reads a source whose content is empty or absent from its path,
        # relative to the solution JSON
        for src in raw.get("sources", []) if isinstance(raw, dict) else []:
            if isinstance(src, dict) and not src.get("content") and isinstance(src.get("path"), str):
                f = path.parent / src["path"]
                if not f.is_file() or ".." in Path(src["path"]).parts:
                    raise TaskError(f"{path}: sources: {src['path']!r} has no content and no such file beside it")
                src["content"] = f.read_text()
        try:
            sol = Solution.model_validate(raw)
        except ValidationError as e:
            raise TaskError(f"{path}: {_one_line(e)}") from None
        if sol.definition != task.name:
            raise TaskError(f"{path}: solution is for {sol.definition!r}, not {task.name!r}")
        return sol
    if path.suffix != ".py":
        raise TaskError(f"{path}: a candidate is a kernel .py or a solution .json")
    return solution_from_kernel_file(task, path)


def find_solution_json(folder: Path, definition: Optional[str] = None) -> Optional[Path]:
    """A foreign problem's own solution: solution.json, solution_*.json or solutions/*.json in a
    problem directory (SOL-ExecBench, FlashInfer-Bench); in a dataset root, the first solution under
    solutions/ (any depth) that names `definition`."""
    folder = Path(folder)
    if definition is not None:
        for cand in sorted((folder / "solutions").rglob("*.json")):
            try:
                if json.loads(cand.read_text()).get("definition") == definition:
                    return cand
            except (json.JSONDecodeError, OSError, AttributeError):
                continue
        return None
    for cand in [folder / "solution.json", *sorted(folder.glob("solution_*.json")),
                 *sorted((folder / "solutions").glob("*.json"))]:
        if cand.exists():
            return cand
    return None
