"""Task loading: avo's evaluators/ folders and foreign FlashInfer-Bench problem directories
(definition.json + workload.jsonl + solution.json), with one-line errors for bad input, and a
foreign problem evaluated end to end by `avo eval DIR` in the interpreter."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import flashinfer_bench.data as fib
import pytest

from avo.tasks import (CPU_AUTO_BYTES, TaskError, find_solution_json, list_tasks, load_solution, load_task,
                       solution_from_kernel_file)

FIB_DIR = Path(__file__).parent / "data" / "fib_problem"
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["grammar_bitmask", "attention_mha_fwd"])
def test_avo_tasks_load_and_workloads_meet_constraints(name):
    task = load_task(name)
    assert task.name == name and task.root == REPO / "evaluators" / name
    assert task.select("cpu") and task.select("gpu")
    assert len(task.select("cpu")) + len(task.select("gpu")) == len(task.select("all"))
    for w in task.workloads:
        env = {**task.definition.const_axes, **w.axes, "ceil": math.ceil}
        for c in task.definition.constraints:
            assert eval(c, {"__builtins__": {}}, env), f"{w.uuid} breaks {c!r}"


def test_list_tasks_finds_both():
    names = {t.name for t in list_tasks()}
    assert {"grammar_bitmask", "attention_mha_fwd"} <= names


def test_foreign_problem_directory():
    task = load_task(str(FIB_DIR))
    assert task.name == "rmsnorm_h256" and task.root == FIB_DIR
    assert "def run(hidden_states, weight)" in task.definition.reference  # inline reference
    assert [w.axes["batch_size"] for w in task.workloads] == [7, 33, 65536]  # unwrapped workload traces
    # no workload says where it runs: all are GPU workloads, the small ones also run in the interpreter
    assert [w.axes["batch_size"] for w in task.select("gpu")] == [7, 33, 65536]
    assert [w.axes["batch_size"] for w in task.select("cpu")] == [7, 33]
    assert 65536 * 256 * 2 * 2 > CPU_AUTO_BYTES
    sol_path = find_solution_json(FIB_DIR)
    assert sol_path == FIB_DIR / "solution.json"
    sol = load_solution(task, sol_path)
    assert sol.definition == task.name and sol.entry_symbol == "run"


def test_foreign_problem_with_only_large_workloads_runs_its_smallest_on_cpu(tmp_path):
    shutil.copy(FIB_DIR / "definition.json", tmp_path / "definition.json")
    rows = [json.loads(x) for x in (FIB_DIR / "workload.jsonl").read_text().splitlines()]
    for r, b in zip(rows, (1 << 17, 1 << 16, 1 << 18)):
        r["workload"]["axes"]["batch_size"] = b
    (tmp_path / "workload.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [w.axes["batch_size"] for w in load_task(str(tmp_path)).select("cpu")] == [1 << 16]


def test_avo_eval_foreign_problem_end_to_end(tmp_path):
    """`avo eval DIR` takes the directory's solution.json, evaluates it on the interpreter-sized
    workloads and writes FlashInfer traces."""
    out = tmp_path / "traces.jsonl"
    r = subprocess.run([sys.executable, "-m", "avo.cli", "eval", str(FIB_DIR), "--device", "interpret", "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    traces = [fib.Trace.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [t.workload.axes["batch_size"] for t in traces] == [7, 33]
    assert all(t.evaluation.status == fib.EvaluationStatus.PASSED for t in traces)
    assert {t.solution for t in traces} == {"rmsnorm_h256_triton_rowwise"}


def _broken_copy(tmp_path: Path, fname: str, text: str) -> Path:
    for f in ("definition.json", "workload.jsonl", "solution.json"):
        shutil.copy(FIB_DIR / f, tmp_path / f)
    (tmp_path / fname).write_text(text)
    return tmp_path


@pytest.mark.parametrize("fname,text,fragment", [
    ("definition.json", '{"name": "x",', "malformed JSON (line 1"),
    ("definition.json", '{"name": "x", "op_type": "y"}', "definition.json: axes: Field required (+"),
    ("workload.jsonl", '{"workload": {"axes": {}, "inputs": {}, "uuid": "u1"}}\n', "gives no value for axes ['batch_size']"),
    ("workload.jsonl", '{"axes": {"batch_size": 3}, "inputs": {"nope": {"type": "random"}}, "uuid": "u1"}\n',
     "names unknown inputs ['nope']"),
    ("workload.jsonl", "{not json}\n", "workload.jsonl:1: malformed JSON"),
    ("workload.jsonl", "\n", "no workloads"),
])
def test_bad_problem_directories_give_one_line_errors(tmp_path, fname, text, fragment):
    with pytest.raises(TaskError) as e:
        load_task(str(_broken_copy(tmp_path, fname, text)))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_targets_and_candidates(tmp_path):
    with pytest.raises(TaskError, match=r"unknown task 'no_such_task' \(known: .*grammar_bitmask"):
        load_task("no_such_task")
    with pytest.raises(TaskError, match="no definition.json"):
        load_task(str(tmp_path))
    task = load_task("grammar_bitmask")
    with pytest.raises(TaskError, match="no such file"):
        load_solution(task, tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("  \n")
    with pytest.raises(TaskError, match="empty file"):
        load_solution(task, tmp_path / "empty.py")
    (tmp_path / "k.txt").write_text("x")
    with pytest.raises(TaskError, match="kernel .py or a solution .json"):
        load_solution(task, tmp_path / "k.txt")
    with pytest.raises(TaskError, match="solution is for 'rmsnorm_h256', not 'grammar_bitmask'"):
        load_solution(task, FIB_DIR / "solution.json")
    (tmp_path / "bad.json").write_text('{"name": "s"}')
    with pytest.raises(TaskError, match="bad.json: definition: Field required"):
        load_solution(task, tmp_path / "bad.json")


def test_kernel_file_language_detection(tmp_path):
    task = load_task("grammar_bitmask")
    seed = solution_from_kernel_file(task, REPO / "kernels" / "grammar" / "bitmask_seed.py")
    assert seed.spec.language == "triton" and seed.spec.entry_point == "bitmask_seed.py::run"
    (tmp_path / "torch_only.py").write_text("import torch\n\ndef run(logits, bitmask, indices):\n    pass\n")
    assert solution_from_kernel_file(task, tmp_path / "torch_only.py").spec.language == "python"
