"""KernelBench problem files (ScalingIntelligence/KernelBench `KernelBench/level*/N_Name.py`: class
Model, get_inputs, get_init_inputs; its eval in src/kernelbench/eval.py at 423217d) as avo tasks:
they load (parameters, buffers, integer and Python-number inputs, two outputs), the reference seed
passes in the interpreter, broken kernels get their status, malformed files one line, a short
evolve runs, and `avo export --format kernelbench` writes a ModelNew file that matches Model when
run the way KernelBench's eval runs it. Fixtures under tests/data/kernelbench are avo's own."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avo.kernelbench import ADAPTER_MARKER, problem_source
from avo.lineage import Lineage
from avo.schema import EvaluationStatus
from avo.tasks import REPO_ROOT, TaskError, kernel_solution, load_task, reference_seed

KB = Path(__file__).parent / "data" / "kernelbench"
RELU = KB / "level1" / "19_ReLU.py"
GEMM = KB / "level2" / "12_Gemm_Scale_ReLU.py"
CE = KB / "level1" / "95_Scaled_CrossEntropy.py"
BN = KB / "level2" / "30_Linear_BatchNorm_Pair.py"
RELU_TRITON = KB / "kernels" / "relu_triton.py"
S = EvaluationStatus


def cli(*args: str, cwd: Path = REPO_ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


# ---- loading ----
def test_problem_files_load_as_tasks():
    relu = load_task(str(RELU))
    d = relu.definition
    assert d.name == "kernelbench_l1_19_ReLU" and d.origin == "kernelbench:level1/19_ReLU.py"
    assert {k: (v.shape, v.dtype) for k, v in d.inputs.items()} == {"x": (["batch_size", "dim"], "float32")}
    assert d.outputs["output"].shape == ["batch_size", "dim"] and d.const_axes == {"batch_size": 16, "dim": 1024}
    assert (d.tolerance.atol, d.tolerance.rtol) == (1e-4, 1e-4)  # KernelBench's fp32 tolerance
    assert len(relu.workloads) == 1 and relu.select("cpu") == relu.workloads == relu.select("gpu")
    assert problem_source(d) == RELU.read_text().rstrip() + "\n" and ADAPTER_MARKER in d.reference

    gemm = load_task(str(GEMM)).definition  # nn.Linear's parameters are inputs after the forward arguments
    assert list(gemm.inputs) == ["x", "gemm_weight", "gemm_bias"]
    assert gemm.inputs["gemm_weight"].shape == ["out_features", "in_features"]

    ce = load_task(str(CE)).definition  # integer targets stay int64, a Python float is a scalar input
    assert [(v.shape, v.dtype) for v in ce.inputs.values()] == [
        (["batch_size", "num_classes"], "float32"), (["batch_size"], "int64"), (None, "float64")]
    assert ce.outputs["output"].shape == []  # a 0-dim loss

    bn = load_task(str(BN)).definition  # buffers (running stats, an int64 counter) and two outputs
    assert list(bn.outputs) == ["output0", "output1"] and bn.inputs["bn_num_batches_tracked"].dtype == "int64"
    assert "bn_running_var" in bn.inputs and "origin" not in load_task("grammar_bitmask").definition.model_dump_json()


@pytest.mark.parametrize("name, words", [
    ("no_model.py", "no top-level `class Model`"),
    ("no_get_inputs.py", "no top-level `def get_inputs()`"),
    ("syntax_error.py", "not valid Python (line 5"),
    ("get_inputs_raises.py", "get_inputs() failed: ValueError: no inputs today"),
    ("string_input.py", "get_inputs() value 1 is a str"),
    ("dict_output.py", "Model.forward returned a dict"),
])
def test_malformed_problem_files_say_why_in_one_line(name, words):
    path = KB / "malformed" / name
    with pytest.raises(TaskError) as e:
        load_task(str(path))
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_malformed_file_with_exit_2():
    r = cli("eval", str(KB / "malformed" / "no_model.py"), "--device", "interpret")
    assert r.returncode == 2 and "no_model.py: no top-level `class Model`" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---- evaluation ----
@pytest.mark.parametrize("problem", [RELU, GEMM, CE, BN], ids=lambda p: p.stem)
def test_the_reference_seed_passes(quick_evaluator, problem):
    task = load_task(str(problem))
    rep = quick_evaluator.evaluate(task, kernel_solution(task.name, reference_seed(task.definition), "seed"))
    assert rep.status == S.PASSED, rep.message


_GEMM_TORCH = """import torch

def run(x, gemm_weight, gemm_bias, output):
    torch.clamp_min(torch.addmm(gemm_bias, x, gemm_weight.t()) * {mult}, 0.0, out=output)
"""


@pytest.mark.parametrize("src, status, words", [
    (_GEMM_TORCH.format(mult=2.0), S.PASSED, ""),
    (_GEMM_TORCH.format(mult=2.01), S.INCORRECT_NUMERICAL, "output"),  # 0.5%: inside 1e-2, outside 1e-4
    (_GEMM_TORCH.format(mult=2.0) + "    gemm_weight.mul_(0.0)\n", S.REWARD_HACK, "gemm_weight"),
    ("def run(x, gemm_weight, gemm_bias, output):\n    raise ValueError('nope')\n", S.RUNTIME_ERROR, "nope"),
], ids=["honest", "off-by-0.5%", "writes-a-parameter", "raises"])
def test_kernels_get_their_status(quick_evaluator, src, status, words):
    task = load_task(str(GEMM))
    rep = quick_evaluator.evaluate(task, kernel_solution(task.name, src, "k"))
    assert rep.status == status and words in rep.message, rep.message


def test_cli_evaluates_a_triton_kernel_on_a_problem_file():
    r = cli("eval", str(RELU), str(RELU_TRITON), "--device", "interpret")
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr


# ---- evolve and write back ----
def _evolve(tmp_path: Path, problem: Path, attempts: int, seed: Path | None = None) -> subprocess.CompletedProcess:
    """No seed: the plain reference seed (reference_seed: plain; the Inductor seed is its own test's)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "run.yaml"
    seeds = f"seed_kernels: {{'{problem.name}': '{seed}'}}\n" if seed else "reference_seed: plain\n"
    cfg.write_text(f"run: kb\nlineage_dir: {tmp_path / 'lin'}\ntasks: ['{problem}']\n{seeds}"
                   f"budget: {{attempts: {attempts}}}\ngate: {{min_gain: 0.05, rounds: 2}}\ndevice: interpret\n")
    return cli("evolve", "-c", str(cfg), "--no-live", cwd=tmp_path)


# KernelBench's eval (src/kernelbench/eval.py, eval_kernel_against_ref + run_and_check_correctness) on
# the CPU: the problem exec'd, seed 42 before get_init_inputs and before Model(*init) / ModelNew(*init)
# (no grad), the solution imported as a module (its triton path), both models .to(device, fp32), trial
# seeds drawn from seed 42, get_inputs() per trial, torch.allclose at atol = rtol = 1e-4.
_KB_EVAL = r'''
import importlib.util, inspect, sys, torch
problem, solution = sys.argv[1], sys.argv[2]
ctx = {}
exec(open(problem).read(), ctx)
Model, get_inputs, get_init_inputs = ctx["Model"], ctx["get_inputs"], ctx["get_init_inputs"]
torch.manual_seed(42)
init = get_init_inputs()
with torch.no_grad():
    torch.manual_seed(42)
    model = Model(*init)
spec = importlib.util.spec_from_file_location("temp_module", solution)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert inspect.signature(mod.ModelNew.__init__) == inspect.signature(Model.__init__), "signature"
with torch.no_grad():
    torch.manual_seed(42)
    new = mod.ModelNew(*init)
    model, new = model.to(device="cpu", dtype=torch.float32), new.to(device="cpu", dtype=torch.float32)
torch.manual_seed(42)
seeds = [torch.randint(0, 2**32 - 1, (1,)).item() for _ in range(3)]
with torch.no_grad():
    for s in seeds:
        torch.manual_seed(s)
        inputs = [x.to(torch.float32) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                  for x in get_inputs()]
        want, got = model(*inputs), new(*inputs)
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        for a, b in zip(want, got, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a, b)
print("KB-OK")
'''


def _kb_eval(problem: Path, solution: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _KB_EVAL, str(problem), str(solution)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})


def _strip_comments(src: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in src.splitlines())


def test_evolve_and_export_a_triton_kernel_back_to_kernelbench(tmp_path):
    """A Triton seed (seed_kernels: by the file name) the offline operator tunes; exported, ModelNew
    runs it through the Triton interpreter and matches Model; nothing in the file trips KernelBench's
    strict static checks (try/except, the word pass, @triton.jit with tl.* present)."""
    r = _evolve(tmp_path, RELU, 2, seed=RELU_TRITON)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with Lineage.open(tmp_path / "lin") as lin:
        attempts = lin.attempts()
    assert len(attempts) == 2 and all(a.note.split()[0] in ("BLOCK", "num_warps") for a in attempts)
    r = cli("export", str(tmp_path / "lin"), "--format", "kernelbench", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "19_ReLU_avo.py"
    assert out.exists() and f"kernelbench -> {out}" in " ".join(r.stdout.split())
    text = out.read_text()
    assert "class ModelNew(_avo_kb_nn.Module):" in text and "@triton.jit" in text
    code = _strip_comments(text)
    assert not re.search(r"\bpass\b|\btry\s*:|\bexcept\b", code), "KernelBench's code_bypass check would fail"
    assert "torch.relu" not in code and "def get_inputs" not in code  # Model's __init__ only, not its forward
    res = _kb_eval(RELU, out)
    assert res.returncode == 0 and "KB-OK" in res.stdout, res.stdout + res.stderr


def test_evolve_from_the_reference_seed_and_export_modelnew_with_parameters(tmp_path):
    """No seed anywhere: the reference seed (Model applied through its parameters); the export's
    ModelNew builds Model inside it under KernelBench's seed and passes the weights to run."""
    r = _evolve(tmp_path, GEMM, 1)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with Lineage.open(tmp_path / "lin") as lin:
        seed = lin.best("kernelbench_l2_12_Gemm_Scale_ReLU")
    assert all(t.passed for t in seed.traces) and "def reference_run(x, gemm_weight, gemm_bias)" in seed.source
    r = cli("export", str(tmp_path / "lin"), "--format", "kernelbench", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "12_Gemm_Scale_ReLU_avo.py"
    text = out.read_text()
    assert "def __init__(self, in_features, out_features, multiplier):" in text
    assert "_avo_kb_run(x, tensors['gemm.weight'], tensors['gemm.bias'], output)" in text
    res = _kb_eval(GEMM, out)
    assert res.returncode == 0 and "KB-OK" in res.stdout, res.stdout + res.stderr


def test_export_of_a_two_output_problem_with_buffers(tmp_path):
    """solution_file on its own (no run needed): a kernel in plain PyTorch for the Linear+BatchNorm
    pair; ModelNew returns both outputs and passes the buffers."""
    from avo.kernelbench import solution_file
    d = load_task(str(BN)).definition
    kernel = ("import torch\n\n"
              "def run(x, fc_weight, fc_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,\n"
              "        bn_num_batches_tracked, output0, output1):\n"
              "    y = torch.nn.functional.batch_norm(torch.addmm(fc_bias, x, fc_weight.t()), bn_running_mean.clone(),\n"
              "                                       bn_running_var.clone(), bn_weight, bn_bias, training=True)\n"
              "    output0.copy_(y)\n"
              "    output1.copy_(y.sum(dim=1))\n")
    out = tmp_path / "30_Linear_BatchNorm_Pair_avo.py"
    out.write_text(solution_file(d, kernel, "hand-written\nnote"))
    assert "def __init__(self, in_features, out_features, momentum=0.1):" in out.read_text()
    res = _kb_eval(BN, out)
    assert res.returncode == 0 and "KB-OK" in res.stdout, res.stdout + res.stderr

