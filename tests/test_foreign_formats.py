"""Problems a user brings, in their projects' own formats (fixtures written from the upstream docs
and pydantic models: NVIDIA/SOL-ExecBench core/data at 8d2237d, flashinfer-bench's data models and
TraceSet layout at 40e6ca7): they load, evaluate honestly in the interpreter, refuse broken
solutions with the right status and malformed files with one line, and evolve from their own
solution (or, with none, from their reference)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avo.lineage import Lineage
from avo.schema import EvaluationStatus, Solution, Workload
from avo.tasks import REPO_ROOT, TaskError, find_solution_json, load_solution, load_task, solution_from_kernel_file

DATA = Path(__file__).parent / "data"
SOL = DATA / "sol_execbench"
DATASET = DATA / "fib_dataset"
S = EvaluationStatus


def cli(*args: str, cwd: Path = REPO_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- loading ----
def test_sol_execbench_problems_load_as_written():
    rms = load_task(str(SOL / "rmsnorm_h256"))
    d = rms.definition
    assert d.op_type is None and d.name == "025_rmsnorm_h256" and d.hf_id == "meta-llama/Llama-3.1-8B"
    assert d.inputs["eps"].shape is None and [w.tolerance for w in rms.workloads][0] is None
    tight = d.tolerance_for(rms.workloads[1])
    assert (tight.atol, tight.rtol, tight.matched_ratio) == (1e-3, 1e-3, 0.99)
    sol = load_solution(rms, find_solution_json(SOL / "rmsnorm_h256"))
    assert sol.spec.language == "triton" and sol.spec.languages == ["triton"]  # kept as given
    assert "_rmsnorm_fwd_kernel" in sol.sources[0].content  # content read from `path`, beside the JSON
    lin = load_task(str(SOL / "linear_backward"))
    assert lin.definition.custom_inputs_entrypoint == "generate_inputs"
    assert not load_solution(lin, SOL / "linear_backward" / "solution_python.json").spec.destination_passing_style
    sw = load_task(str(SOL / "swiglu_act"))
    assert sw.definition.axis_values({"tokens": 5}) == {"intermediate": 96, "tokens": 5, "gate_up_width": 192}
    assert sw.definition.dims("scale", {}) == (1,) and sw.definition.dims("gate_up", {"tokens": 5, "gate_up_width": 192}) == (5, 192)


def test_a_flashinfer_trace_dataset_root_needs_a_definition_name():
    with pytest.raises(TaskError, match="FlashInfer-Trace dataset: pick a definition with --definition NAME.*gemm_n64_k32, rmsnorm_h128"):
        load_task(str(DATASET))
    t = load_task(str(DATASET), "gemm_n64_k32")
    assert t.root == DATASET and [w.axes["M"] for w in t.workloads] == [16, 33] and t.definition.op_type == "gemm"
    assert load_task(f"{DATASET}::rmsnorm_h128").name == "rmsnorm_h128"
    with pytest.raises(TaskError, match="no definition 'nope'"):
        load_task(str(DATASET), "nope")
    found = find_solution_json(DATASET, "gemm_n64_k32")
    assert found.name == "gemm_triton_tile16.json" and find_solution_json(DATASET, "rmsnorm_h128") is None


# ---- evaluation ----
@pytest.mark.parametrize("problem, solution", [
    (SOL / "rmsnorm_h256", "solution_triton.json"),  # destination-passing Triton, entry rmsnorm_fwd, scalar eps
    (SOL / "linear_backward", "solution_python.json"),  # custom inputs, value-returning PyTorch, two outputs
], ids=["rmsnorm-triton-dps", "linear-backward-returning"])
def test_honest_solutions_pass(quick_evaluator, problem, solution):
    task = load_task(str(problem))
    rep = quick_evaluator.evaluate(task, load_solution(task, problem / solution))
    assert rep.status == S.PASSED and len(rep.traces) == 2, rep.message


def test_dataset_solution_passes(quick_evaluator):
    task = load_task(str(DATASET), "gemm_n64_k32")
    rep = quick_evaluator.evaluate(task, load_solution(task, find_solution_json(DATASET, "gemm_n64_k32")))
    assert rep.status == S.PASSED, rep.message


def _returning(task, body: str) -> Solution:
    raw = json.loads((SOL / "linear_backward" / "solution_python.json").read_text())
    raw["sources"][0]["content"] = "import torch\n\ndef run(grad_output, x, weight):\n" + body
    return Solution.model_validate(raw)


@pytest.mark.parametrize("body, status, words", [
    ("    return grad_output @ weight, (grad_output.mT @ x) * 1.5\n", S.INCORRECT_NUMERICAL, "grad_weight"),
    ("    return grad_output @ weight\n", S.INCORRECT_SHAPE, "returned 1 values for 2 outputs"),
    ("    return grad_output @ weight, (grad_output.mT @ x).T\n", S.INCORRECT_SHAPE, "grad_weight: returned shape"),
    ("    return grad_output @ weight, (grad_output.mT @ x).half()\n", S.INCORRECT_DTYPE, "grad_weight: returned dtype"),
    ("    return {'grad_input': grad_output @ weight}\n", S.INCORRECT_SHAPE, "no output 'grad_weight'"),
], ids=["wrong-values", "too-few", "wrong-shape", "wrong-dtype", "dict-missing"])
def test_broken_value_returning_solutions_get_the_right_status(quick_evaluator, body, status, words):
    task = load_task(str(SOL / "linear_backward"))
    rep = quick_evaluator.evaluate(task, _returning(task, body))
    assert rep.status == status and words in rep.message, rep.message


def test_a_returned_dict_by_output_name_passes(quick_evaluator):
    task = load_task(str(SOL / "linear_backward"))
    body = "    return {'grad_weight': grad_output.mT @ x, 'grad_input': grad_output @ weight}\n"
    assert quick_evaluator.evaluate(task, _returning(task, body)).status == S.PASSED


def test_the_workload_tolerance_and_error_cap_apply(quick_evaluator, tmp_path):
    """The second rmsnorm workload asks for atol/rtol 1e-3: an error of 3e-3 passes the first
    (definition default 1e-2) and fails the second; a max_error_cap fails a workload by itself."""
    problem = tmp_path / "rms"
    shutil.copytree(SOL / "rmsnorm_h256", problem)
    src = (problem / "kernel.py").read_text().replace("x * inv_rms * w, mask=mask)", "x * inv_rms * w + 0.003, mask=mask)")
    (problem / "kernel.py").write_text(src)
    task = load_task(str(problem))
    sol = load_solution(task, problem / "solution_triton.json")
    assert quick_evaluator.evaluate(task, sol, task.workloads[:1]).status == S.PASSED
    rep = quick_evaluator.evaluate(task, sol, task.workloads[1:])
    assert rep.status == S.INCORRECT_NUMERICAL and "atol=0.001 rtol=0.001" in rep.message, rep.message
    lines = (problem / "workload.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["tolerance"] = {"max_error_cap": 1e-3}
    (problem / "workload.jsonl").write_text(json.dumps(first) + "\n" + lines[1] + "\n")
    task = load_task(str(problem))
    rep = quick_evaluator.evaluate(task, load_solution(task, problem / "solution_triton.json"), task.workloads[:1])
    assert rep.status == S.INCORRECT_NUMERICAL and "over the cap 0.001" in rep.message


# ---- malformed files: one line, the file and the field ----
def _problem(tmp_path: Path, src: Path, edit) -> Path:
    p = tmp_path / src.name
    shutil.copytree(src, p)
    edit(p)
    return p


def _edit_json(path: Path, fn) -> None:
    raw = json.loads(path.read_text())
    fn(raw)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("case, edit, words", [
    ("mixed-custom", lambda p: (p / "workload.jsonl").write_text(json.dumps(
        {"uuid": "m", "axes": {"M": 4, "N": 4, "K": 4}, "inputs": {"grad_output": {"type": "custom"},
         "x": {"type": "random"}, "weight": {"type": "custom"}}}) + "\n"),
     "workload.jsonl:1: (root): Value error, custom inputs cannot be mixed"),
    ("unknown-input-kind", lambda p: (p / "workload.jsonl").write_text(json.dumps(
        {"uuid": "m", "axes": {"M": 4, "N": 4, "K": 4}, "inputs": {"grad_output": {"type": "zeros"}}}) + "\n"),
     "workload.jsonl:1: inputs.grad_output: Input tag 'zeros' found using 'type' does not match"),
    ("missing-entrypoint", lambda p: _edit_json(p / "definition.json", lambda d: d.update(custom_inputs_entrypoint="make")),
     "definition.json: (root): Value error, custom_inputs_entrypoint 'make' is not a top-level function"),
    ("bad-expr-axis", lambda p: _edit_json(p / "definition.json", lambda d: d["axes"].update(
        Z={"type": "expr"})), "definition.json: axes.Z.expr.expression: Field required"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_malformed_problem_files_say_where_in_one_line(tmp_path, case, edit, words):
    p = _problem(tmp_path, SOL / "linear_backward", edit)
    r = cli("eval", str(p), "--device", "interpret")
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("spec, words", [
    ({"languages": ["cuda_cpp", "triton"]}, "C++ and Python languages cannot be mixed"),
    ({"languages": ["fortran"]}, "languages: unknown 'fortran'"),
    ({"languages": []}, "languages must be a non-empty list"),
])
def test_malformed_solution_specs_say_why(tmp_path, spec, words):
    p = _problem(tmp_path, SOL / "linear_backward",
                 lambda p: _edit_json(p / "solution_python.json", lambda s: s["spec"].update(spec)))
    r = cli("eval", str(p), str(p / "solution_python.json"), "--device", "interpret")
    assert r.returncode == 2 and "solution_python.json: spec" in r.stderr and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- the CLI and evolve ----
def test_cli_evaluates_a_dataset_definition_and_refuses_without_one():
    r = cli("eval", str(DATASET), "--definition", "gemm_n64_k32", "--device", "interpret")
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    r = cli("eval", str(DATASET), "--device", "interpret")
    assert r.returncode == 2 and "pick a definition with --definition NAME" in r.stderr


def _evolve(tmp_path: Path, entry: str, attempts: int) -> subprocess.CompletedProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run: foreign\nlineage_dir: {tmp_path / 'lin'}\ntasks: ['{entry}']\n"
                   f"budget: {{attempts: {attempts}}}\ngate: {{min_gain: 0.05, rounds: 2}}\ndevice: interpret\n")
    return cli("evolve", "-c", str(cfg), "--no-live", cwd=tmp_path)


def test_evolve_a_sol_execbench_problem_from_its_own_solution(tmp_path):
    """The seed is the problem's Triton solution with a `run` adapter for its entry (rmsnorm_fwd); it
    declares no TUNABLES, so the offline operator turns the knobs it finds in the launch."""
    r = _evolve(tmp_path, str(SOL / "rmsnorm_h256"), 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "solution_triton.json (the problem's own solution)" in r.stdout
    with Lineage.open(tmp_path / "lin") as lin:
        seed = [v for v in lin.versions() if v.meta.kind == "seed"][0]
        attempts = lin.attempts()
    assert "def run(hidden_states, weight, eps, output):\n    rmsnorm_fwd(hidden_states, weight, eps, output)" in seed.source
    assert len(attempts) == 2 and all(a.note.split()[0] in ("BLOCK", "num_warps", "num_stages") for a in attempts)
    assert any(a.status in ("PASSED", "REJECTED", "INCORRECT_NUMERICAL") for a in attempts), [a.status for a in attempts]


def test_evolve_a_dataset_definition_and_a_reference_only_problem(tmp_path):
    r = _evolve(tmp_path / "a", f"{DATASET}::gemm_n64_k32", 1)
    assert r.returncode == 0 and "gemm_triton_tile16.json (the problem's own solution)" in r.stdout, r.stderr[-2000:]
    r = _evolve(tmp_path / "b", str(SOL / "swiglu_act"), 1)  # expr axis, digit shape, no solution
    assert r.returncode == 0 and "seed made from the task's reference" in r.stdout, r.stderr[-2000:]
    with Lineage.open(tmp_path / "b" / "lin") as lin:
        seed = lin.best("swiglu_act_i96")
    assert all(t.passed for t in seed.traces) and len(seed.traces) == 2


def test_a_plain_kernel_file_still_wraps_as_before():
    task = load_task(str(SOL / "rmsnorm_h256"))
    sol = solution_from_kernel_file(task, SOL / "rmsnorm_h256" / "kernel.py", entry="rmsnorm_fwd")
    assert sol.spec.language == "triton" and sol.spec.entry_point == "kernel.py::rmsnorm_fwd"
    assert Workload.model_validate({"uuid": "u", "axes": {}, "inputs": {}}).tolerance is None


# ---- packed FP4 (float4_e2m1fn_x2) ----
def test_packed_fp4_inputs_are_built_as_sol_execbench_packs_them(quick_evaluator, tmp_path):
    """A float4_e2m1fn_x2 input of shape [m, 64] is a tensor [m, 32] of packed pairs: an honest
    dequantiser PASSES; one that reads the nibbles in the wrong order is INCORRECT."""
    task = load_task(str(SOL / "fp4_dequant"))
    from avo.harness.inputs import make_inputs
    x = make_inputs(task.definition, task.workloads[0], 0, "cpu")["x"]
    assert str(x.dtype) == "torch.float4_e2m1fn_x2" and tuple(x.shape) == (3, 32)
    assert task.definition.io_bytes(task.workloads[0]) == 3 * 32 + 3 * 64 * 2
    good = quick_evaluator.evaluate(task, solution_from_kernel_file(task, SOL / "fp4_dequant" / "kernel.py"))
    assert good.status == S.PASSED, good.message
    swapped = tmp_path / "kernel_swapped.py"  # the same dequantiser, nibbles read high first
    honest = (SOL / "fp4_dequant" / "kernel.py").read_text()
    assert "(_value(b & 15), _value(b >> 4))" in honest
    swapped.write_text(honest.replace("(_value(b & 15), _value(b >> 4))", "(_value(b >> 4), _value(b & 15))"))
    bad = quick_evaluator.evaluate(task, solution_from_kernel_file(task, swapped))
    assert bad.status == S.INCORRECT_NUMERICAL, bad.message


def test_packed_fp4_outputs_are_compared_as_values():
    import torch
    from avo.harness.check import compare
    from avo.harness.inputs import FP4X2, poison_
    from avo.schema import Tolerance
    ref = torch.tensor([[0x21, 0x7F]], dtype=torch.uint8).view(FP4X2)  # (0.5, 1.0), (-6.0, 6.0)
    same = ref.clone()
    swapped = torch.tensor([[0x12, 0xF7]], dtype=torch.uint8).view(FP4X2)
    tol = Tolerance(atol=0.0, rtol=0.0)
    assert compare("y", same, ref, FP4X2, tol).status == S.PASSED
    assert compare("y", swapped, ref, FP4X2, tol).status == S.INCORRECT_NUMERICAL
    poisoned = torch.empty(1, 2, dtype=FP4X2)
    poison_(poisoned)
    assert compare("y", poisoned, ref, FP4X2, tol).status == S.INCORRECT_NUMERICAL
