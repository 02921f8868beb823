"""avo's nouns are FlashInfer Trace JSON: avo's Definition / Workload / Solution / Trace load with
flashinfer-bench's own models (`flashinfer_bench.data`) and theirs load with avo's. Traces from real
evaluations obey FlashInfer's Evaluation rules (PASSED has correctness and performance,
INCORRECT_NUMERICAL correctness only, other statuses neither); REWARD_HACK is avo's own status,
which flashinfer-bench rejects, so such traces are never exported (avo.apply writes PASSED only)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import flashinfer_bench.data as fib
import pytest
from pydantic import ValidationError

from avo.harness.runner import EvalConfig, Evaluator
from avo.schema import Definition, EvaluationStatus, Solution, Trace, Workload
from avo.tasks import REPO_ROOT, load_solution, load_task, solution_from_kernel_file

S = EvaluationStatus
FIB_DIR = Path(__file__).parent / "data" / "fib_problem"
SEEDS = {"grammar_bitmask": "kernels/grammar/bitmask_seed.py", "attention_mha_fwd": "kernels/attention/mha_fwd_seed.py"}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_avo_task_json_loads_in_flashinfer_bench(name):
    task = load_task(name)
    d = fib.Definition.model_validate_json(task.definition.model_dump_json())
    assert (d.name, d.op_type, d.reference) == (task.definition.name, task.definition.op_type, task.definition.reference)
    assert list(d.inputs) == list(task.definition.inputs) and list(d.outputs) == list(task.definition.outputs)
    assert d.const_axes == task.definition.const_axes
    for w in task.workloads:
        fw = fib.Workload.model_validate_json(w.model_dump_json())
        assert (fw.uuid, fw.axes) == (w.uuid, w.axes)
    sol = solution_from_kernel_file(task, REPO_ROOT / SEEDS[name])
    fs = fib.Solution.model_validate_json(sol.model_dump_json())
    assert fs.spec.entry_point == sol.spec.entry_point and fs.sources[0].content == sol.sources[0].content


def test_flashinfer_bench_json_loads_in_avo():
    raw = json.loads((FIB_DIR / "definition.json").read_text())
    fd = fib.Definition.model_validate(raw)  # the test data is valid flashinfer-bench first
    d = Definition.model_validate(fd.model_dump(mode="json"))
    assert d.const_axes == {"hidden_size": 256} and d.result_names == ["output"]
    for line in (FIB_DIR / "workload.jsonl").read_text().splitlines():
        ft = fib.Trace.model_validate_json(line)
        assert ft.is_workload_trace()
        w = Workload.model_validate(ft.workload.model_dump(mode="json"))
        assert w.axes == ft.workload.axes and w.target == "gpu"
    fs = fib.Solution.model_validate_json((FIB_DIR / "solution.json").read_text())
    s = Solution.model_validate(fs.model_dump(mode="json"))
    assert s.entry_file == "main.py" and s.spec.model_extra.get("binding", "kept") is None  # unknown keys kept
    # a FlashInfer trace with a full evaluation
    ft = fib.Trace(definition=d.name, workload=fib.Workload.model_validate(json.loads(line)["workload"]),
                   solution=s.name, evaluation=fib.Evaluation(
        status="PASSED", environment=fib.Environment(hardware="NVIDIA_H100", libs={"torch": "2.11"}),
        timestamp="2026-11-24T00:00:00Z", correctness=fib.Correctness(max_absolute_error=1e-3, max_relative_error=2e-3),
        performance=fib.Performance(latency_ms=0.01, reference_latency_ms=0.03, speedup_factor=3.0)))
    t = Trace.model_validate_json(ft.model_dump_json())
    assert t.passed and t.evaluation.performance.speedup_factor == 3.0


def _sol(code: str, name: str) -> Solution:
    base = load_solution(load_task(str(FIB_DIR)), FIB_DIR / "solution.json")
    src = base.sources[0].model_copy(update={"content": textwrap.dedent(code)})
    return base.model_copy(update={"name": name, "sources": [src]})


@pytest.fixture(scope="module")
def reports():
    """One real evaluation per status family on the foreign rmsnorm problem (interpreter)."""
    task = load_task(str(FIB_DIR))
    good = load_solution(task, FIB_DIR / "solution.json")
    src = good.sources[0].content
    wrong_big = src.replace("    batch, hidden = hidden_states.shape\n",
                            "    batch, hidden = hidden_states.shape\n    if batch > 10:\n"
                            "        weight = weight * 2\n")
    assert wrong_big != src
    cases = {"passed": good, "incorrect": _sol(wrong_big, "wrong_above_10_rows"),
             "compile": _sol("def run(hidden_states, weight, output)\n    pass\n", "syntax"),
             "runtime": _sol("def run(hidden_states, weight, output):\n    raise RuntimeError('boom')\n", "raises"),
             "hack": _sol("import ctypes\n\ndef run(hidden_states, weight, output):\n    pass\n", "imports_ctypes")}
    with Evaluator(EvalConfig(device="interpret")) as ev:
        return {k: ev.evaluate(task, s) for k, s in cases.items()}


@pytest.mark.parametrize("case,status", [("passed", S.PASSED), ("incorrect", S.INCORRECT_NUMERICAL),
                                         ("compile", S.COMPILE_ERROR), ("runtime", S.RUNTIME_ERROR)])
def test_real_traces_obey_flashinfer_evaluation_rules(reports, case, status):
    rep = reports[case]
    assert rep.status == status, rep.message
    assert len(rep.traces) == 2  # the two interpreter-sized workloads
    for t in rep.traces:
        ft = fib.Trace.model_validate_json(t.model_dump_json())  # FlashInfer's validator runs here
        assert ft.evaluation.status.value == t.evaluation.status.value
        again = Trace.model_validate_json(t.model_dump_json())
        assert again.model_dump() == t.model_dump()


def test_incorrect_trace_shapes(reports):
    """The 7-row workload is right, the 33-row one wrong: the wrong one carries its error, the right
    one (never timed) carries the cascade's verdict and says so; neither carries a performance."""
    by_rows = {t.workload.axes["batch_size"]: t.evaluation for t in reports["incorrect"].traces}
    assert by_rows[33].status == S.INCORRECT_NUMERICAL and by_rows[33].correctness.max_absolute_error > 0.1
    assert by_rows[7].correctness.max_absolute_error < 0.01 and "not timed" in by_rows[7].log
    assert by_rows[7].performance is None and by_rows[33].performance is None
    passed = reports["passed"].traces[0].evaluation
    assert passed.correctness is not None and passed.performance.latency_ms > 0 and passed.performance.iterations > 0


def test_reward_hack_traces_are_avo_only(reports):
    rep = reports["hack"]
    assert rep.status == S.REWARD_HACK and rep.hack_check == "static:import"
    for t in rep.traces:
        assert Trace.model_validate_json(t.model_dump_json()).evaluation.hack_check == "static:import"
        with pytest.raises(ValidationError):
            fib.Trace.model_validate_json(t.model_dump_json())
