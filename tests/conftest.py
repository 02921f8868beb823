"""Evaluators shared by the task and agent tests: one per test module (module scope), in the
Triton interpreter (tests/adversarial/conftest.py has its own), and the tiny task of the harness
tests."""
import json
from pathlib import Path

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


@pytest.fixture(scope="session")
def write_tiny_double():
    """Writes the tiny out-of-place task (out = 2 * x, one CPU workload of 37 elements) into a
    folder, with the given reference code, so each candidate costs milliseconds; returns the folder."""
    def write(root: Path, reference: str) -> Path:
        (root / "definition.json").write_text(json.dumps({
            "name": "tiny_double", "op_type": "elementwise", "axes": {"n": {"type": "var"}},
            "inputs": {"x": {"shape": ["n"], "dtype": "float32"}},
            "outputs": {"out": {"shape": ["n"], "dtype": "float32"}},
            "tolerance": {"atol": 1e-6, "rtol": 1e-6}}))
        (root / "reference.py").write_text(reference)
        (root / "workloads.jsonl").write_text(json.dumps(
            {"uuid": "n37", "axes": {"n": 37}, "inputs": {"x": {"type": "random"}}, "target": "cpu"}) + "\n")
        return root
    return write
