"""Harness robustness through the real worker process (Triton interpreter): build and run errors,
hangs, a worker that dies, no secrets in the worker's environment, shape and dtype verdicts. A tiny
out-of-place task (out = 2 * x) is written to tmp_path so each candidate costs milliseconds."""
from __future__ import annotations

import json
import os
import textwrap
import time

import pytest
import torch

from avo.harness import check
from avo.harness.runner import EvalConfig, Evaluator
from avo.schema import BuildSpec, EvaluationStatus, Solution, SourceFile, Tolerance
from avo.tasks import load_task

S = EvaluationStatus

REFERENCE = '''\
import os
import torch


def run(x):
    # trusted code runs in a worker too: it must not see the orchestrator's secrets either
    leaked = sorted(k for k in os.environ if k.endswith("_API_KEY"))
    if leaked:
        raise RuntimeError(f"reference worker sees {leaked}")
    return x * 2
'''

HONEST = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _double(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


def run(x, out):
    _double[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), BLOCK=64)
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_tiny_double):
    return load_task(str(write_tiny_double(tmp_path_factory.mktemp("tiny_double"), REFERENCE)))


def sol(code: str, name: str = "cand") -> Solution:
    code = textwrap.dedent(code)
    return Solution(name=name, definition="tiny_double", author="test",
                    spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point="k.py::run"),
                    sources=[SourceFile(path="k.py", content=code)])


@pytest.fixture(scope="module")
def ev():
    with Evaluator(EvalConfig(device="interpret")) as e:
        yield e


@pytest.fixture(scope="module")
def peer_ev():
    """Static guard off (peer mode): for candidates that need os or attribute tricks to probe the
    runtime layer."""
    with Evaluator(EvalConfig(device="interpret", peer=True)) as e:
        yield e


def test_honest_tiny_passes(ev, tiny):
    rep = ev.evaluate(tiny, sol(HONEST))
    assert rep.status == S.PASSED, rep.message


def test_syntax_error_is_compile_error(ev, tiny):
    rep = ev.evaluate(tiny, sol("import torch\n\ndef run(x, out)\n    out.copy_(x * 2)\n"))
    assert rep.status == S.COMPILE_ERROR
    assert "SyntaxError" in rep.message and "line 3" in rep.message


def test_triton_compile_error(ev, tiny):
    """What a GPU compile rejects (arange of a non-power-of-2 length) is a COMPILE_ERROR in the
    interpreter too, with Triton's own words in the message."""
    rep = ev.evaluate(tiny, sol(HONEST.replace("tl.arange(0, BLOCK)", "tl.arange(0, 48)")))
    assert rep.status == S.COMPILE_ERROR, rep.message
    assert "power of 2" in rep.message


def test_missing_entry_point(ev, tiny):
    rep = ev.evaluate(tiny, sol("import torch\n\ndef forward(x, out):\n    out.copy_(x * 2)\n"))
    assert rep.status == S.COMPILE_ERROR
    assert "no callable 'run'" in rep.message


def test_raise_at_run_time(ev, tiny):
    rep = ev.evaluate(tiny, sol("def run(x, out):\n    raise ValueError('boom at run time')\n"))
    assert rep.status == S.RUNTIME_ERROR
    assert "ValueError: boom at run time" in rep.message


def test_recursion_and_huge_allocation_are_runtime_errors(ev, tiny):
    rep = ev.evaluate(tiny, sol("def run(x, out):\n    return run(x, out)\n"))
    assert rep.status == S.RUNTIME_ERROR and "RecursionError" in rep.message
    rep = ev.evaluate(tiny, sol("import torch\n\ndef run(x, out):\n    torch.empty(1 << 50, dtype=torch.float32)\n"))
    assert rep.status == S.RUNTIME_ERROR, rep.message


def test_segfault_kills_only_the_worker(ev, tiny):
    """A wild pointer in an interpreted kernel segfaults the worker process; the verdict is
    RUNTIME_ERROR, the message names the signal and the call (the first call on a workload both
    compiles and runs), and the next evaluation gets a fresh worker."""
    wild = HONEST.replace("tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)",
                          "far = offs.to(tl.int64) * 0 + 2000000000000\n"
                          "    tl.store(out_ptr + far, tl.load(x_ptr + far) * 2)")
    assert wild != HONEST
    rep = ev.evaluate(tiny, sol(wild))
    assert rep.status == S.RUNTIME_ERROR
    assert "worker died (SIGSEGV, exit -11) in the first call on workload n37, which JIT-compiles and runs it " \
        "(phase compile:n37)" in rep.message, rep.message
    assert ev.evaluate(tiny, sol(HONEST)).status == S.PASSED


def test_a_failed_candidate_worker_is_replaced_at_once(ev, tiny):
    """After a failure the next worker is already starting (its torch import and CUDA start overlap
    the report and the next proposal) and the next evaluation runs in it."""
    assert ev.evaluate(tiny, sol(HONEST)).status == S.PASSED
    before = ev.cand.proc.pid
    rep = ev.evaluate(tiny, sol("def run(x, out):\n    raise ValueError('boom')\n"))
    assert rep.status == S.RUNTIME_ERROR
    assert ev.cand.proc is not None and ev.cand.proc.poll() is None and ev.cand.proc.pid != before
    fresh = ev.cand.proc.pid
    assert ev.evaluate(tiny, sol(HONEST)).status == S.PASSED and ev.cand.proc.pid == fresh


def test_hangs_time_out_and_the_worker_restarts(tiny):
    """A host wrapper that never returns: killed at the compile limit on its first call, at the run
    limit when it hangs only once timing starts; each time the next evaluation works."""
    with Evaluator(EvalConfig(device="interpret", compile_timeout_s=4, run_timeout_s=4)) as e:
        assert e.evaluate(tiny, sol(HONEST)).status == S.PASSED  # workers warm: the limit is the hang's
        t0 = time.monotonic()
        rep = e.evaluate(tiny, sol("def run(x, out):\n    while True:\n        pass\n"))
        assert rep.status == S.TIMEOUT and "compile" in rep.message
        assert time.monotonic() - t0 < 4 + 10
        assert e.evaluate(tiny, sol(HONEST)).status == S.PASSED
        late = HONEST + "\n_n = [0]\n_run = run\n\ndef run(x, out):\n    _n[0] += 1\n    while _n[0] > 3:\n" \
                        "        pass\n    _run(x, out)\n"
        t0 = time.monotonic()
        rep = e.evaluate(tiny, sol(late))
        assert rep.status == S.TIMEOUT and "time:n37" in rep.message
        assert time.monotonic() - t0 < 4 + 10
        assert e.evaluate(tiny, sol(HONEST)).status == S.PASSED


def test_worker_environment_has_no_secrets(tiny, monkeypatch):
    """API keys in the orchestrator's environment never reach a worker: the candidate (static guard
    off so it may import os) writes its result only if it sees no key, and the reference raises if
    it sees one. The control variable proves the candidate does read the parent's environment."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret")
    monkeypatch.setenv("AVO_TEST_VISIBLE", "yes")
    probe = '''
import os
import torch

MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def run(x, out):
    leaked = [k for k in os.environ if any(m in k.upper() for m in MARKERS)]
    if not leaked and os.environ.get("AVO_TEST_VISIBLE") == "yes":
        torch.mul(x, 2, out=out)
'''
    with Evaluator(EvalConfig(device="interpret", peer=True)) as e:
        rep = e.evaluate(tiny, sol(probe))
        assert rep.status == S.PASSED, rep.message
        rep = e.evaluate(tiny, sol(probe.replace('"yes"', '"no"')))  # the control: must fail
        assert rep.status == S.INCORRECT_NUMERICAL


def test_resized_output_is_incorrect_shape(ev, tiny):
    rep = ev.evaluate(tiny, sol("import torch\n\ndef run(x, out):\n    torch.mul(x, 2, out=out)\n    out.resize_(36)\n"))
    assert rep.status == S.INCORRECT_SHAPE, rep.message
    assert "(36,) != (37,)" in rep.message


def test_reviewed_output_is_incorrect_dtype(peer_ev, tiny):
    """The same memory re-viewed as int32 (`out.data = ...`, a patch the static guard refuses;
    peer mode lets the comparison give its verdict)."""
    code = "import torch\n\ndef run(x, out):\n    torch.mul(x, 2, out=out)\n    out.data = out.data.view(torch.int32)\n"
    rep = peer_ev.evaluate(tiny, sol(code))
    assert rep.status == S.INCORRECT_DTYPE, rep.message
    assert "torch.int32 != torch.float32" in rep.message


def test_replaced_output_memory_is_a_hack(peer_ev, tiny):
    code = "import torch\n\ndef run(x, out):\n    out.data = x * 2\n"
    rep = peer_ev.evaluate(tiny, sol(code))
    assert (rep.status, rep.hack_check) == (S.REWARD_HACK, "output-replaced"), rep.message


def test_compare_verdicts():
    tol = Tolerance(atol=1e-3, rtol=1e-3)
    ref = torch.tensor([1.0, float("-inf"), 3.0])
    assert check.compare("o", ref.clone(), ref, torch.float32, tol).status == S.PASSED
    assert check.compare("o", torch.zeros(2), ref, torch.float32, tol).status == S.INCORRECT_SHAPE
    assert check.compare("o", ref.half(), ref, torch.float32, tol).status == S.INCORRECT_DTYPE
    r = check.compare("o", torch.tensor([1.0, 0.0, 3.0]), ref, torch.float32, tol)
    assert r.status == S.INCORRECT_NUMERICAL and r.matched == pytest.approx(2 / 3)
    r = check.compare("o", torch.tensor([1.0, float("-inf"), float("nan")]), ref, torch.float32, tol)
    assert r.status == S.INCORRECT_NUMERICAL and "NaN/unwritten" in r.detail

    class Sub(torch.Tensor):
        pass

    assert check.compare("o", ref.clone().as_subclass(Sub), ref, torch.float32, tol).status == S.REWARD_HACK


SLOW_LOGGING_REFERENCE = '''\
import os
import time


def run(x):
    t0 = time.monotonic()
    time.sleep(0.03)
    # the reference worker's calls and the timed baseline's, by pid, into each worker's log (the
    # baseline runs in the candidate worker, whose sandbox lets it write only its scratch folder)
    print(f"AVO-CALL {os.getpid()} {t0} {time.monotonic()}", flush=True)
    return x * 2
'''


def test_timing_waits_for_the_reference_worker(tmp_path):
    """The reference worker shares the candidate's GPU: a workload's timing must not start while it
    still computes the previous workload's outputs (on an H100 that overlap doubled a 1.7 ms
    attention kernel's synced wall time and the side-stream check called it a reward hack). The
    reference here sleeps and logs its interval; the baseline timed in the candidate worker runs
    the same code, so no interval of one process may overlap one of the other."""
    root = tmp_path / "slow_ref"
    root.mkdir()
    (root / "definition.json").write_text(json.dumps({
        "name": "tiny_double", "op_type": "elementwise", "axes": {"n": {"type": "var"}},
        "inputs": {"x": {"shape": ["n"], "dtype": "float32"}},
        "outputs": {"out": {"shape": ["n"], "dtype": "float32"}},
        "tolerance": {"atol": 1e-6, "rtol": 1e-6}}))
    (root / "reference.py").write_text(SLOW_LOGGING_REFERENCE)
    (root / "workloads.jsonl").write_text("".join(json.dumps(
        {"uuid": f"n{n}", "axes": {"n": n}, "inputs": {"x": {"type": "random"}}, "target": "cpu"}) + "\n"
        for n in (37, 64, 100)))
    with Evaluator(EvalConfig(device="interpret", warmup=1, iters=6)) as e:
        rep = e.evaluate(load_task(str(root)), sol(HONEST))
        logs = e.cand.log_path.read_text() + e.ref.log_path.read_text()
    assert rep.status == S.PASSED, rep.message
    by_pid: dict[str, list[tuple[float, float]]] = {}
    for line in logs.splitlines():
        if not line.startswith("AVO-CALL "):
            continue
        _, pid, a, b = line.split()
        if pid != str(os.getpid()):  # the orchestrator's own calls are in line with its loop
            by_pid.setdefault(pid, []).append((float(a), float(b)))
    assert len(by_pid) == 2 and all(len(v) >= 6 for v in by_pid.values())
    (p1, calls1), (p2, calls2) = by_pid.items()
    overlaps = [(x, y) for x in calls1 for y in calls2 if x[0] < y[1] and y[0] < x[1]]
    assert not overlaps, f"{len(overlaps)} overlapping calls of the two workers"


def test_references_per_workload_are_trials_and_last_and_refreshed_sets(tmp_path, write_tiny_double):
    """The reference is asked for the trials, the last timed output of POST_SETS sets and POST_SETS
    refreshed sets when it is costly (its seconds over the sets and probes beyond runner.ALL_SETS_S;
    the probed timed calls are then checked against the kernel itself); when it is cheap, for every
    set's last output and every probe as well. Kept trials are asked once per evaluator. Counted by
    the trusted reference itself (a line per call, the caller's pid), with 5 sets and 8 probes
    (before session 16 every set's last and refreshed outputs and the probes went to it always)."""
    import os
    from avo.harness.runner import ALL_SETS_S, POST_SETS
    calls = tmp_path / "calls.txt"

    def task_with(name: str, sleep_s: float):
        (tmp_path / name).mkdir()
        return load_task(str(write_tiny_double(tmp_path / name, REFERENCE.replace(
            "    return x * 2", f"    import time\n    time.sleep({sleep_s})\n"
            "    try:  # the reference worker; the sandboxed candidate worker's baseline calls cannot write\n"
            f"        open({str(calls)!r}, 'a').write(str(os.getpid()) + '\\n')\n    except OSError:\n        pass\n"
            "    return x * 2"))))
    worker_calls = lambda: len([ln for ln in calls.read_text().splitlines() if ln != str(os.getpid())])  # noqa: E731
    cheap, costly = task_with("cheap", 0.0), task_with("costly", 1.2 * ALL_SETS_S / (5 + 8))
    cfg = dict(device="interpret", trials=3, iters=12, max_sets=5)  # 5 sets, 12+ timed calls: 8 probes
    with Evaluator(EvalConfig(**cfg, kept_trials=2)) as e:
        assert e._n_sets(cheap, cheap.workloads[0]) == 5 and e.timing["probes"] == 8
        rep = e.evaluate(cheap, sol(HONEST))
        assert rep.status == S.PASSED, rep.message
        # (this process, the runner, also calls it once: sol.work counts the reference's FLOPs)
        # 3 trials, every set's last output, 2 refreshed sets, and the probes (up to 8: a probe that
        # was a set's last call is its last output, and one on the final call of a set is not kept)
        first = worker_calls()
        assert 3 + 5 + POST_SETS < first <= 3 + 8 + 5 + POST_SETS
        # The next evaluation reuses the two kept trials' references: one fresh trial and the rest.
        rep = e.evaluate(cheap, sol(HONEST.replace("64", "32"), "cand2"))
        assert rep.status == S.PASSED, rep.message
        assert 1 + 5 + POST_SETS < worker_calls() - first <= 1 + 8 + 5 + POST_SETS
        # A kept reference judges like a fresh one: a kernel off by one everywhere still fails.
        rep = e.evaluate(cheap, sol(HONEST.replace("* 2, mask", "* 2 + 1, mask"), "wrong"))
        assert rep.status == S.INCORRECT_NUMERICAL, rep.message
        before = worker_calls()
        rep = e.evaluate(costly, sol(HONEST))  # the sets and probes of this one cost more than ALL_SETS_S
        assert rep.status == S.PASSED, rep.message
        assert worker_calls() - before == 3 + POST_SETS + POST_SETS == 7
    with Evaluator(EvalConfig(**cfg, kept_trials=0)) as e:  # keeping off: every trial fresh
        before = worker_calls()
        assert e.evaluate(cheap, sol(HONEST)).status == S.PASSED and e.evaluate(cheap, sol(HONEST)).status == S.PASSED
        assert 2 * (3 + 5 + POST_SETS) < worker_calls() - before <= 2 * (3 + 8 + 5 + POST_SETS)
