"""Shared pieces of the adversarial suite: candidate files as Solutions, evaluators that reuse one
worker across candidates, and the verdict assertion (never PASSED, the expected check fired)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from avo.harness.runner import EvalConfig, EvalReport, Evaluator
from avo.schema import BuildSpec, EvaluationStatus, Solution, SourceFile
from avo.tasks import REPO_ROOT, load_task

HERE = Path(__file__).parent
S = EvaluationStatus
# Timed calls outnumber the argument sets (12+ calls on 3 sets), so each set comes back several
# times in the timed loop: caches keyed on buffers or values get their chance to hit.
REPEATING = dict(device="interpret", iters=12, max_sets=3)


def grammar_solution(name: str) -> Solution:
    path = HERE / "grammar" / f"{name}.py"
    return Solution(name=name, definition="grammar_bitmask", author="adversary",
                    spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point=f"{path.name}::run"),
                    sources=[SourceFile(path=path.name, content=path.read_text())])


def grammar_cuda_solution(name: str) -> Solution:
    """A CUDA C++ candidate (torch binding, SOL-ExecBench's cuda_cpp): built and run on a GPU,
    compile-checked (COMPILED_NOT_RUN) elsewhere."""
    path = HERE / "grammar" / f"{name}.cu"
    return Solution.model_validate({
        "name": name, "definition": "grammar_bitmask", "author": "adversary",
        "spec": {"languages": ["cuda_cpp"], "target_hardware": ["cuda"], "entry_point": f"{path.name}::run",
                 "destination_passing_style": True, "binding": "torch"},
        "sources": [{"path": path.name, "content": path.read_text()}]})


def attention_solution(name: str) -> Solution:
    """The candidate file plus the seed kernel as a second source it imports."""
    path = HERE / "attention" / f"{name}.py"
    seed = REPO_ROOT / "kernels" / "attention" / "mha_fwd_seed.py"
    return Solution(name=name, definition="attention_mha_fwd", author="adversary",
                    spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point=f"{path.name}::run"),
                    sources=[SourceFile(path=path.name, content=path.read_text()),
                             SourceFile(path=seed.name, content=seed.read_text())])


def assert_verdict(rep: EvalReport, status: EvaluationStatus, check: Optional[str] = None,
                   alternatives: tuple = ()) -> None:
    """`status` (+ hack `check`) or one of `alternatives` [(status, check)]; never PASSED."""
    got = (rep.status, rep.hack_check)
    assert rep.status != S.PASSED, f"{rep.solution} PASSED: the evaluator missed the hack"
    assert got in [(status, check), *alternatives], f"{rep.solution}: got {got}, expected {(status, check)}: {rep.message}"
    # no trace of a failed evaluation may claim PASSED
    assert not [t for t in rep.traces if t.evaluation.status == S.PASSED], rep.message


@pytest.fixture(scope="session")
def grammar_task():
    return load_task("grammar_bitmask")


@pytest.fixture(scope="session")
def grammar_smallest(grammar_task):
    return grammar_task.select("cpu")[:1]


@pytest.fixture(scope="module")
def evaluator():
    """The full cascade: static guard, then the runtime checks in the worker."""
    with Evaluator(EvalConfig(**REPEATING)) as ev:
        yield ev


@pytest.fixture(scope="module")
def runtime_only():
    """Peer mode skips the static guard (and the aten library-call check), leaving the runtime
    checks on their own: proof that each one catches its hack without the AST scan's help."""
    with Evaluator(EvalConfig(**REPEATING, peer=True)) as ev:
        yield ev
