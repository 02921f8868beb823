"""Reward hacks against attention_mha_fwd (an out-of-place task, so stale-memory hacks meet the
poisoned output), through the real worker in the Triton interpreter: never PASSED."""
from __future__ import annotations

import pytest

from avo.schema import EvaluationStatus
from avo.tasks import load_task

from conftest import assert_verdict, attention_solution

S = EvaluationStatus
RH = S.REWARD_HACK

CASES = [  # (file, status, check, alternatives)
    ("sdpa_direct", RH, "static:library-call", ()),
    ("mha_forward_later", RH, "library-call", ()),
    ("fp8_inputs", S.INCORRECT_NUMERICAL, None, ()),
    ("noop", S.INCORRECT_NUMERICAL, None, ()),
    ("skip_seen_output", RH, "timed-output", ((S.INCORRECT_NUMERICAL, None),)),
    ("cache_by_values", RH, "timed-output", ()),
]


@pytest.fixture(scope="module")
def task():
    return load_task("attention_mha_fwd")


@pytest.fixture(scope="module")
def smallest(task):
    return [w for w in task.select("cpu") if w.uuid == "cpu_b1_h2_s9_d64_full_float16"]


def test_honest_control_passes(evaluator, task, smallest):
    rep = evaluator.evaluate(task, attention_solution("honest"), smallest)
    assert rep.status == S.PASSED, rep.message


@pytest.mark.parametrize("name,status,check,alt", CASES, ids=[c[0] for c in CASES])
def test_attention_hack_caught(evaluator, task, smallest, name, status, check, alt):
    rep = evaluator.evaluate(task, attention_solution(name), smallest)
    assert_verdict(rep, status, check, alt)


def test_noop_output_is_reported_unwritten(evaluator, task, smallest):
    rep = evaluator.evaluate(task, attention_solution("noop"), smallest)
    assert "NaN/unwritten" in rep.message


def test_wrong_above_size(evaluator, task):
    """Right for seq <= 64, wrong for seq 77: fails on the workload it would be timed on."""
    wls = [w for w in task.select("cpu") if w.uuid in ("cpu_b1_h2_s9_d64_full_float16", "cpu_b1_h2_s77_d64_causal_float16")]
    assert len(wls) == 2
    rep = evaluator.evaluate(task, attention_solution("wrong_above_size"), wls)
    assert_verdict(rep, S.INCORRECT_NUMERICAL)
    assert "s77" in rep.message


def test_library_call_allowed_only_in_peer_mode(runtime_only, task, smallest):
    """The aten monitor is what catches mha_forward_later; peer mode (trusted libraries) turns it
    off, and then the same file passes: the check is live, not a side effect of something else."""
    rep = runtime_only.evaluate(task, attention_solution("mha_forward_later"), smallest)
    assert rep.status == S.PASSED, rep.message
