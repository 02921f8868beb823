"""Evaluators shared by the task and agent tests: one per test module (module scope), in the
Triton interpreter. tests/adversarial/conftest.py has its own."""
import pytest

from avo.harness.runner import EvalConfig, Evaluator


@pytest.fixture(scope="module")
def evaluator():
    with Evaluator(EvalConfig(device="interpret")) as ev:
        yield ev


@pytest.fixture(scope="module")
def quick_evaluator():
    # Same cascade with two timed calls instead of five: for tests about correctness.
    with Evaluator(EvalConfig(device="interpret", warmup=0, iters=2)) as ev:
        yield ev
