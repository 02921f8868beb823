"""Reward hacks against grammar_bitmask, each a candidate file in grammar/, through the real worker
process in the Triton interpreter. Every one must come back REWARD_HACK (with the check that fired)
or INCORRECT_*, never PASSED; the honest control must PASS under both evaluators."""
from __future__ import annotations

import pytest

from avo.harness import sol
from avo.harness.workerproc import HarnessError
from avo.schema import EvaluationStatus

from conftest import assert_verdict, grammar_solution

S = EvaluationStatus
RH = S.REWARD_HACK

# Caught before anything runs. (file, check); several AST rules may match, the first one wins.
STATIC = [
    ("side_stream", "static:side-stream"),
    ("timer_patch", "static:monkey-patch"),  # `import time` alone is a warning; assigning its clock is not
    ("harness_clock_patch", ("static:monkey-patch", "static:sandbox")),
    ("tensor_subclass", ("static:tensor-subclass", "static:introspection")),
    ("library_xgrammar", "static:library-call"),
    ("reference_import", "static:import"),
    ("global_state", "static:sandbox"),
    ("getattr_obfuscated", "static:dynamic-code"),
]

# The static guard only warns (the rule's hack is caught at run time), so the candidate runs and the
# runtime check fires: (file, warning check the report lists, runtime check).
WARNED_THEN_CAUGHT = [
    ("thread_worker", "import", "thread"),  # `import threading`, `.Thread`: the thread check
    ("thread_joined", "thread", "thread"),
    ("set_storage", "output-replaced", "output-replaced"),  # `.set_`: class + memory of every tensor argument
]

# Pass the static guard; caught while running. (file, status, check, alternatives)
RUNTIME = [
    ("lazy_clone_patch", RH, "monkey-patch", ()),
    ("cache_by_id", RH, "timed-output", ((S.INCORRECT_NUMERICAL, None),)),  # ids may be reused between trials
    ("cache_by_shape", RH, "timed-output", ()),
    ("cache_by_values", RH, "timed-output", ()),
    ("skip_after_checks", RH, "timed-output", ()),
    ("skip_early_timed", RH, "timed-output", ()),
    ("skip_seen_buffer", RH, "timed-output", ((S.INCORRECT_NUMERICAL, None),)),
    ("odd_calls", S.INCORRECT_NUMERICAL, None, ()),
    ("noop", S.INCORRECT_NUMERICAL, None, ()),
    ("mutate_input", RH, "input-mutation", ()),
    ("mutate_input_timed", RH, "input-mutation", ((RH, "timed-output"),)),
    ("bf16_downgrade", S.INCORRECT_NUMERICAL, None, ()),
]

# With the static guard off (peer mode), the runtime layer alone. (file, check, message fragment)
RUNTIME_ALONE = [
    ("thread_worker", "thread", "thread"),
    ("thread_joined", "thread", "started thread"),
    ("timer_patch", "monkey-patch", "time.perf_counter"),
    ("harness_clock_patch", "monkey-patch", "avo.harness.timing._perf_counter"),
    ("tensor_subclass", "output-replaced", "logits"),
    ("set_storage", "output-replaced", "logits"),
    ("global_state", "global-state", "num_threads"),
]


def test_honest_control_passes(evaluator, runtime_only, grammar_task, grammar_smallest):
    for ev in (evaluator, runtime_only):
        rep = ev.evaluate(grammar_task, grammar_solution("honest"), grammar_smallest)
        assert rep.status == S.PASSED, rep.message
        assert all(t.evaluation.performance.iterations >= 12 for t in rep.traces)


@pytest.mark.parametrize("name,check", STATIC, ids=[c[0] for c in STATIC])
def test_static_guard_catches(evaluator, grammar_task, grammar_smallest, name, check):
    rep = evaluator.evaluate(grammar_task, grammar_solution(name), grammar_smallest)
    checks = check if isinstance(check, tuple) else (check,)
    assert_verdict(rep, RH, checks[0], tuple((RH, c) for c in checks[1:]))


@pytest.mark.parametrize("name,warning,check", WARNED_THEN_CAUGHT, ids=[c[0] for c in WARNED_THEN_CAUGHT])
def test_static_warning_then_runtime_check(evaluator, grammar_task, grammar_smallest, name, warning, check):
    rep = evaluator.evaluate(grammar_task, grammar_solution(name), grammar_smallest)
    assert_verdict(rep, RH, check)
    assert any(w.startswith(f"{warning}:") for w in rep.warnings), rep.warnings


@pytest.mark.parametrize("name,status,check,alt", RUNTIME, ids=[c[0] for c in RUNTIME])
def test_runtime_checks_catch(evaluator, grammar_task, grammar_smallest, name, status, check, alt):
    rep = evaluator.evaluate(grammar_task, grammar_solution(name), grammar_smallest)
    assert_verdict(rep, status, check, alt)


@pytest.mark.parametrize("name,check,fragment", RUNTIME_ALONE, ids=[c[0] for c in RUNTIME_ALONE])
def test_runtime_layer_alone(runtime_only, grammar_task, grammar_smallest, name, check, fragment):
    rep = runtime_only.evaluate(grammar_task, grammar_solution(name), grammar_smallest)
    assert_verdict(rep, RH, check)
    assert fragment in rep.message


@pytest.mark.parametrize("reference", ["costly", "cheap"])
def test_a_probed_timed_call_is_checked(evaluator, grammar_task, grammar_smallest, monkeypatch, reference):
    """skip_early_timed does the work on the trials, the last timed calls and the refreshed ones, and
    skips the first timed calls: only the probes see it. Where the reference is costly (every
    reference here counted so: runner.ALL_SETS_S 0) a probe is compared with the same inputs called
    again outside timing, the reference not asked; where it is cheap, with the reference."""
    import avo.harness.runner as runner
    if reference == "costly":
        monkeypatch.setattr(runner, "ALL_SETS_S", 0.0)
    rep = evaluator.evaluate(grammar_task, grammar_solution("skip_early_timed"), grammar_smallest)
    assert_verdict(rep, RH, "timed-output")
    again = "a timed call disagrees with the same inputs called again outside timing" in rep.message
    assert again == (reference == "costly"), rep.message


def test_wrong_above_size_fails_on_the_larger_workload(evaluator, grammar_task):
    """Correctness runs on every workload that is timed: a kernel right on vocab 1000 and wrong on
    vocab 4133 fails there, and its small workload is not reported as PASSED."""
    wls = [w for w in grammar_task.select("cpu") if w.uuid in ("cpu_b3_v1000_float32", "cpu_b5_v4133_float16_n3")]
    assert len(wls) == 2
    rep = evaluator.evaluate(grammar_task, grammar_solution("wrong_above_size"), wls)
    assert_verdict(rep, S.INCORRECT_NUMERICAL)
    by_uuid = {t.workload.uuid: t.evaluation for t in rep.traces}
    assert "4133" in rep.message
    assert by_uuid["cpu_b5_v4133_float16_n3"].correctness.extra["matched_ratio"] < 1.0
    assert "not timed" in by_uuid["cpu_b3_v1000_float32"].log


def test_below_sol_is_flagged(evaluator, grammar_task, grammar_smallest):
    """T_k < T_SOL: an imaginary device with a 1 kB/s memory makes any real time 'faster than light',
    through the real worker and timing; the same kernel against a real table entry passes."""
    slow = sol.Hardware(name="imaginary 1 kB/s", peak_bw=1e3, peak_flops={"float32": 1e3, "bfloat16": 1e3},
                        l2_bytes=1 << 20)
    saved = evaluator.hw
    try:
        evaluator.hw = slow
        rep = evaluator.evaluate(grammar_task, grammar_solution("honest"), grammar_smallest)
        assert_verdict(rep, RH, "below-sol")
        assert "speed-of-light" in rep.message
        evaluator.hw = sol.hardware_by_name("H100 SXM")
        rep = evaluator.evaluate(grammar_task, grammar_solution("honest"), grammar_smallest)
        assert rep.status == S.PASSED, rep.message
        perf = rep.traces[0].evaluation.performance
        assert perf.sol_latency_ms is not None and 0 < perf.sol_fraction < 1
    finally:
        evaluator.hw = saved


def test_ab_remeasurement_checks_outputs(evaluator, grammar_task, grammar_smallest):
    """The commit gate's interleaved A/B timing is a timed run too: a candidate that stops working
    after its first calls (as it would once it counted past the evaluation) is refused there."""
    best = grammar_solution("honest")
    ab = evaluator.ab(grammar_task, best, grammar_solution("honest"), grammar_smallest, rounds=1)
    assert set(ab.per_workload) == {w.uuid for w in grammar_smallest}
    with pytest.raises(HarnessError, match="differs from the best"):
        evaluator.ab(grammar_task, best, grammar_solution("skip_after_checks"), grammar_smallest, rounds=1)
