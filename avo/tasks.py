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
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "float4_e2m1": 1,
             "int64": 8, "int32": 4, "int16": 2, "int8": 1, "bool": 1}


def _io_bytes(d: Definition, w: Workload) -> int:
    axes = {**d.const_axes, **w.axes}
    total = 0
    for name, spec in {**d.inputs, **d.outputs}.items():
        n = 1
        for a in spec.shape or []:
            n *= axes.get(a, 1)
        total += n * _ITEMSIZE[w.dtypes.get(name, spec.dtype)]
    return total


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
    ins, outs = list(d.inputs), list(d.outputs)
    call = f"reference_run({', '.join(ins)})"
    if not outs:  # in-place task: the reference mutates its inputs, as the kernel must
        tail = f"    {call}\n"
    elif len(outs) == 1:
        tail = f"    {outs[0]}.copy_({call})\n"
    else:
        tail = f"    results = {call}\n" + "".join(f"    {o}.copy_(results[{i}])\n" for i, o in enumerate(outs))
    return (f'"""Seed of {d.name}, made by avo from the task\'s reference (the problem came with no solution):\n'
            f'the reference itself, writing into the harness\'s output buffers. A correct start, not a kernel."""\n'
            f"{body}\n\n\ndef run({', '.join(ins + outs)}):\n{tail}")


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


def load_task_dir(folder: Path) -> Task:
    """One folder: definition.json, workloads.jsonl or workload.jsonl, reference.py/baseline.py."""
    folder = Path(folder)
    dpath = folder / "definition.json"
    if not dpath.exists():
        raise TaskError(f"{folder}: no definition.json (not a task folder)")
    raw = _read_json(dpath)
    if (folder / "reference.py").exists():
        raw["reference"] = (folder / "reference.py").read_text()
    try:
        definition = Definition.model_validate(raw)
    except ValidationError as e:
        raise TaskError(f"{dpath}: {_one_line(e)}") from None
    wpath = next((p for p in (folder / "workloads.jsonl", folder / "workload.jsonl") if p.exists()), None)
    if wpath is None:
        raise TaskError(f"{folder}: no workloads.jsonl / workload.jsonl")
    workloads = []
    for i, row in enumerate(_read_jsonl(wpath), 1):
        row = row.get("workload", row)  # FlashInfer workload traces wrap the workload
        try:
            workloads.append(Workload.model_validate(row))
        except ValidationError as e:
            raise TaskError(f"{wpath}:{i}: {_one_line(e)}") from None
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


def load_task(target: str) -> Task:
    """A task name under evaluators/, or a path to a problem directory."""
    p = Path(target)
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
        try:
            sol = Solution.model_validate(_read_json(path))
        except ValidationError as e:
            raise TaskError(f"{path}: {_one_line(e)}") from None
        if sol.definition != task.name:
            raise TaskError(f"{path}: solution is for {sol.definition!r}, not {task.name!r}")
        return sol
    if path.suffix != ".py":
        raise TaskError(f"{path}: a candidate is a kernel .py or a solution .json")
    return solution_from_kernel_file(task, path)


def find_solution_json(folder: Path) -> Optional[Path]:
    """A foreign problem directory may carry its solution: solution.json or solutions/*.json."""
    for cand in [folder / "solution.json", *sorted((folder / "solutions").glob("*.json"))]:
        if cand.exists():
            return cand
    return None
