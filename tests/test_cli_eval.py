"""`avo eval` and `avo tasks` as real subprocesses: exit 0 on PASSED, 1 on a failed or hacked
candidate, 2 on bad usage; user errors are one line on stderr without a traceback; --json writes
the traces."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avo.schema import EvaluationStatus, Trace

REPO = Path(__file__).resolve().parents[1]
AVO = Path(sys.executable).parent / "avo"
CMD = [str(AVO)] if AVO.exists() else [sys.executable, "-m", "avo.cli"]
SEED = "kernels/grammar/bitmask_seed.py"
SMALL = "--workloads=cpu_b3_v1000_float32"


def avo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich tables fit without truncating names
    return subprocess.run([*CMD, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


def assert_user_error(r: subprocess.CompletedProcess, fragment: str, code: int = 2) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_tasks_lists_both():
    r = avo("tasks")
    assert r.returncode == 0, r.stderr
    assert "grammar_bitmask" in r.stdout and "attention_mha_fwd" in r.stdout


def test_eval_pass_writes_traces(tmp_path):
    out = tmp_path / "sub" / "traces.jsonl"
    r = avo("eval", "grammar_bitmask", SEED, "--device", "interpret", SMALL, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and "not GPU performance" in r.stdout
    assert "sandbox: " in r.stdout  # which layers the candidate worker got on this kernel
    traces = [Trace.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [t.workload.uuid for t in traces] == ["cpu_b3_v1000_float32"]
    assert traces[0].evaluation.status == EvaluationStatus.PASSED and traces[0].solution == "bitmask_seed"


def test_eval_hack_and_failure_exit_1(tmp_path):
    out = tmp_path / "hack.jsonl"
    r = avo("eval", "grammar_bitmask", "tests/adversarial/grammar/thread_worker.py", "--device", "interpret",
            SMALL, "--json", str(out))
    # `import threading` is a static warning (printed); the thread it starts is caught at run time
    assert r.returncode == 1 and "REWARD_HACK" in r.stdout and "(thread)" in r.stdout, r.stdout
    assert "static warning" in r.stdout and "imports 'threading'" in r.stdout, r.stdout
    assert Trace.model_validate_json(out.read_text().splitlines()[0]).evaluation.hack_check == "thread"
    r = avo("eval", "grammar_bitmask", "tests/adversarial/grammar/timer_patch.py", "--device", "interpret", SMALL)
    assert r.returncode == 1 and "REWARD_HACK" in r.stdout and "static:monkey-patch" in r.stdout, r.stdout
    r = avo("eval", "grammar_bitmask", "tests/adversarial/grammar/noop.py", "--device", "interpret", SMALL)
    assert r.returncode == 1 and "INCORRECT_NUMERICAL" in r.stdout
    assert "Traceback" not in r.stderr


def test_eval_syntax_error_is_a_compile_error_verdict(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\ndef run(logits, bitmask, indices)\n    pass\n")
    r = avo("eval", "grammar_bitmask", str(bad), "--device", "interpret", SMALL)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "COMPILE_ERROR" in r.stdout and "SyntaxError" in r.stdout
    assert "Traceback" not in r.stderr


def test_eval_compile_timeout_stops_a_hang_at_the_limit(tmp_path):
    """--compile-timeout bounds the first call: a kernel that never returns is TIMEOUT in seconds,
    not after the 300 s GPU default."""
    hang = tmp_path / "hang.py"
    hang.write_text("def run(logits, bitmask, indices):\n    while True:\n        pass\n")
    t0 = time.monotonic()
    r = avo("eval", "grammar_bitmask", str(hang), "--device", "interpret", SMALL, "--compile-timeout", "3", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "TIMEOUT" in r.stdout and "timed out after 3s in the first call on workload" in r.stdout
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("args,fragment", [
    (["eval", "grammar_bitmask", SEED, "--run-timeout", "0"], "above 0"),
    (["eval", "no_such_task", SEED], "unknown task 'no_such_task'"),
    (["eval", "grammar_bitmask", "kernels/grammar/nope.py"], "no such file"),
    (["eval", "grammar_bitmask", SEED, "--device", "gpu"], "--device must be auto, cuda or interpret"),
    (["eval", "grammar_bitmask", SEED, "--device", "interpret", "--workloads", "nope"], "unknown workloads: nope"),
    (["eval", "grammar_bitmask"], "no CANDIDATE given"),
])
def test_eval_user_errors(args, fragment):
    assert_user_error(avo(*args), fragment)


def test_eval_malformed_json(tmp_path):
    bad = tmp_path / "solution.json"
    bad.write_text('{"name": "x", "definition": ')
    assert_user_error(avo("eval", "grammar_bitmask", str(bad)), "malformed JSON (line 1")
    (tmp_path / "definition.json").write_text("{oops")
    assert_user_error(avo("eval", str(tmp_path)), "definition.json: malformed JSON")


@pytest.mark.parametrize("args", [[], ["eval"], ["eval", "--bogus"]])
def test_bad_usage_exit_2(args):
    r = avo(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
