"""avo.apply runtime and artifacts: exact / nearest / miss dispatch, guards, exception fallback
(logged once, counted), atomic reload under concurrent calls, artifact round trip and errors.

Artifacts here hold small Python kernels of a probe task (y = x * scale, plus a `tag` output the
kernel stamps with its identity, so a test sees which artifact ran). Their traces are written by
the test with chosen latencies and ranges: the dispatch policy is what is under test; real
harness traces are covered in test_export.py and test_integrations.py."""
from __future__ import annotations

import json
import logging
import random
import shutil
import threading
from pathlib import Path

import pytest
import torch

import avo
from avo.apply import ArtifactError, ArtifactMeta, load_entry, read_artifact, write_artifact
from avo.apply.keys import KeyLayout, canonical_key
from avo.schema import (AxisConst, AxisVar, BuildSpec, Correctness, Definition, Environment, Evaluation,
                        EvaluationStatus, Performance, RandomInput, ScalarInput, Solution, SourceFile,
                        TensorSpec, Trace, Workload)
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file

PROBE_REFERENCE = """import torch


def run(x, scale):
    return x * scale, torch.zeros(1, dtype=torch.int32)
"""


def probe_definition() -> Definition:
    return Definition(
        name="apply_probe", op_type="probe", reference=PROBE_REFERENCE,
        axes={"n": AxisVar(), "one": AxisConst(value=1)},
        inputs={"x": TensorSpec(shape=["n"], dtype="float32"), "scale": TensorSpec(shape=None, dtype="float32")},
        outputs={"y": TensorSpec(shape=["n"], dtype="float32"), "tag": TensorSpec(shape=["one"], dtype="int32")})


def probe_solution(tag: int, fail_n: int | None = None) -> Solution:
    src = (f"import torch\n\nTAG = {tag}\n\n\ndef run(x, scale, y, tag):\n"
           f"    if x.numel() == {fail_n!r}:\n        raise RuntimeError('probe kernel fails at n={fail_n}')\n"
           "    torch.mul(x, scale, out=y)\n    tag.fill_(TAG)\n")
    return Solution(name=f"probe_{tag}", definition="apply_probe", author="test",
                    spec=BuildSpec(language="python", target_hardware=["cpu"], entry_point="probe.py::run"),
                    sources=[SourceFile(path="probe.py", content=src)])


def passed_trace(task: str, sol: str, w: Workload, latency: float,
                 status: EvaluationStatus = EvaluationStatus.PASSED) -> Trace:
    ok = status == EvaluationStatus.PASSED
    ev = Evaluation(status=status, environment=Environment(hardware="test_cpu", device_mode="interpret"),
                    timestamp="2026-01-01T00:00:00+00:00",
                    correctness=Correctness() if ok else None,
                    performance=Performance(latency_ms=latency, reference_latency_ms=2 * latency,
                                            speedup_factor=2.0, sol_fraction=0.5) if ok else None)
    return Trace(definition=task, workload=w, solution=sol, evaluation=ev)


def probe_workload(n: int, scale: float = 2.0, dtype: str | None = None) -> Workload:
    return Workload(uuid=f"n{n}_s{scale}" + (f"_{dtype}" if dtype else ""), axes={"n": n},
                    inputs={"x": RandomInput(), "scale": ScalarInput(value=scale)},
                    dtypes={"x": dtype} if dtype else {})


def write_probe(folder: Path, tag: int, ns: list[int], lo: int, hi: int, latency: float = 1.0,
                fail_n: int | None = None, won: list[str] | None = None) -> Path:
    d, sol = probe_definition(), probe_solution(tag, fail_n)
    traces = [passed_trace(d.name, sol.name, probe_workload(n), latency) for n in ns]
    return write_artifact(folder, d, sol, traces, ArtifactMeta(name=f"probe{tag}", ranges={"n": [lo, hi]}, won=won))


@avo.apply("apply_probe")
def probe(x, scale):
    return x * scale, torch.zeros(1, dtype=torch.int32)


def enable(*dirs, **kw):
    """enable() for these CPU tests: the probe traces are interpreter timings (no speed claim)."""
    return avo.apply.enable(*dirs, **{"require_faster": False, **kw})


@pytest.fixture(autouse=True)
def clean_runtime():
    """Every apply test starts and ends disabled, with no counters and no compiled graphs (the
    other test_apply_*.py files import this fixture)."""
    avo.apply.disable()
    avo.apply.stats(reset=True)
    torch._dynamo.reset()
    yield
    avo.apply.disable()
    avo.apply.stats(reset=True)


def call(n: int, scale: float = 2.0, dtype=torch.float32) -> tuple[torch.Tensor, int]:
    x = torch.arange(n, dtype=dtype)
    y, tag = probe(x, scale)
    assert torch.equal(y, x * scale)
    return y, int(tag.item())


def test_avo_apply_is_a_callable_module_with_the_runtime_api():
    assert callable(avo.apply)
    f = avo.apply("apply_probe")(lambda x, scale: None)
    assert f.task == "apply_probe" and f.original is not None
    for name in ("enable", "disable", "reload", "stats"):
        assert callable(getattr(avo.apply, name))
    with pytest.raises(TypeError):
        avo.apply("")


def test_exact_then_nearest_within_declared_range_then_miss(tmp_path):
    # probe1 verified n=8, declared for n in [1, 32]; probe2 verified n=64, declared [16, 1024]
    write_probe(tmp_path / "a", 1, [8], 1, 32)
    write_probe(tmp_path / "b", 2, [64], 16, 1024)
    assert sorted(enable(tmp_path, nearest=True)["apply_probe"])[0].startswith("probe1")
    assert call(8)[1] == 1  # exact
    assert call(64)[1] == 2  # exact
    assert call(20)[1] == 1  # both in range; log-distance to 8 (0.92) < to 64 (1.16)
    assert call(40)[1] == 2  # outside probe1's range
    assert call(2000)[1] == 0  # outside every range: the original function
    assert call(8, scale=3.0)[1] == 0  # scalar differs from every verified key
    s = avo.apply.stats()["apply_probe"]
    assert (s["calls"], s["hits"], s["exact"], s["nearest"], s["misses"]) == (6, 4, 2, 2, 2)
    assert s["artifacts"] == {"probe1": 2, "probe2": 2}


def test_guards_fall_back_to_the_original(tmp_path, monkeypatch):
    write_probe(tmp_path / "a", 1, [8, 64], 1, 1024)
    enable(tmp_path)
    assert call(8, dtype=torch.float64)[1] == 0  # dtype no artifact covers
    x = torch.arange(16, dtype=torch.float32)[::2]  # n=8 but not contiguous
    y, tag = probe(x, 2.0)
    assert torch.equal(y, x * 2.0) and int(tag) == 0
    y, tag = probe(torch.ones(2, 4), 2.0)  # rank 2 where the definition says rank 1
    assert int(tag) == 0
    s = avo.apply.stats()["apply_probe"]
    assert s["hits"] == 0 and s["fallbacks"] == 3
    assert {"guard:contiguous", "guard:shape"} <= set(s["reasons"]) and any(r.startswith("guard:dtype") for r in s["reasons"])

    # A Triton artifact runs on CUDA tensors only (outside the interpreter): CPU inputs fall back.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    task = load_task("grammar_bitmask")
    sol = solution_from_kernel_file(task, REPO_ROOT / "kernels" / "grammar" / "bitmask_seed.py")
    cpu = task.select("cpu")
    write_artifact(tmp_path / "g", task.definition, sol, [passed_trace(task.name, sol.name, w, 1.0) for w in cpu])
    enable(tmp_path / "g")
    ns: dict = {}
    exec(task.definition.reference, ns)
    bitmask_fn = avo.apply("grammar_bitmask")(ns["run"])
    logits = torch.randn(3, 1000)
    bits = torch.randint(-2**31, 2**31 - 1, (3, 32), dtype=torch.int32)
    expect = logits.clone()
    ns["run"](expect, bits, torch.arange(3, dtype=torch.int32))
    bitmask_fn(logits, bits, torch.arange(3, dtype=torch.int32))
    assert torch.equal(logits, expect)
    assert avo.apply.stats()["grammar_bitmask"]["reasons"] == {"guard:device": 1}


def test_kernel_exception_falls_back_logged_once_and_counted(tmp_path, caplog):
    write_probe(tmp_path / "a", 1, [8, 13], 1, 64, fail_n=13)
    enable(tmp_path)
    with caplog.at_level(logging.WARNING, logger="avo.apply"):
        for _ in range(3):
            assert call(13)[1] == 0  # correct result from the original every time
        assert call(8)[1] == 1  # other keys still use the artifact
    warnings = [r for r in caplog.records if "probe kernel fails" in r.getMessage()]
    assert len(warnings) == 1 and "n=13" in warnings[0].getMessage()
    s = avo.apply.stats()["apply_probe"]
    assert (s["errors"], s["fallbacks"], s["hits"]) == (1, 2, 1)
    assert s["reasons"] == {"error: RuntimeError": 1, "disabled after error": 2}
    avo.apply.reload()  # a reload gives the key another chance (and may log again)
    assert call(13)[1] == 0
    assert avo.apply.stats()["apply_probe"]["errors"] == 2


def test_reload_is_atomic_under_concurrent_calls(tmp_path):
    def publish(generation: int) -> None:
        base = 10 * (generation % 2)  # generation A: tags 1/2, generation B: tags 11/12
        write_probe(tmp_path / "small", base + 1, [8, 32], 1, 64)
        write_probe(tmp_path / "large", base + 2, [128, 512], 65, 4096)

    publish(0)
    enable(tmp_path, nearest=True)
    stop = threading.Event()
    bad: list = []
    seen: set = set()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            n = rng.choice([8, 20, 32, 64, 100, 128, 512, 1000])
            try:
                _, tag = call(n)
            except Exception as e:  # a failed call is a failure of the test
                bad.append(repr(e))
                return
            want = {1, 11} if n <= 64 else {2, 12}
            if tag not in want:
                bad.append((n, tag))
            seen.add(tag)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 13):
            publish(gen)
            avo.apply.reload()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad, bad[:5]
    assert seen == {1, 2, 11, 12}
    s = avo.apply.stats()["apply_probe"]
    assert s["calls"] == s["hits"] > 0 and s["misses"] == s["fallbacks"] == s["errors"] == 0


def test_reload_keeps_the_old_table_when_an_artifact_is_invalid(tmp_path):
    art = write_probe(tmp_path / "a", 1, [8], 1, 64)
    enable(tmp_path)
    (art / "sources" / "probe.py").write_text("TAG = 99\n")  # edited by hand: sha mismatch
    with pytest.raises(ArtifactError, match="differs from solution.json"):
        avo.apply.reload()
    assert call(8)[1] == 1  # still served by the table loaded before


def test_disable_kwargs_and_signature_mismatch(tmp_path):
    write_probe(tmp_path / "a", 1, [8], 1, 64)
    enable(tmp_path)
    y, tag = probe(scale=2.0, x=torch.ones(8))  # keyword arguments map by name
    assert int(tag) == 1

    @avo.apply("apply_probe")
    def renamed(inp, factor):
        return inp * factor, torch.zeros(1, dtype=torch.int32)
    y, tag = renamed(torch.ones(8), 2.0)
    assert int(tag) == 0 and avo.apply.stats()["apply_probe"]["reasons"] == {"signature": 1}

    avo.apply.disable()
    avo.apply.stats(reset=True)
    assert call(8)[1] == 0 and avo.apply.stats() == {}


def test_won_keys_take_precedence_and_nearest_prefers_the_winner(tmp_path):
    # Both verified on n=8 and n=64; probe1 won n=8 though probe2 recorded a lower latency there.
    write_probe(tmp_path / "a", 1, [8, 64], 1, 1024, latency=5.0, won=["n8_s2.0"])
    write_probe(tmp_path / "b", 2, [8, 64], 1, 1024, latency=1.0, won=["n64_s2.0"])
    enable(tmp_path, nearest=True)
    assert call(8)[1] == 1 and call(64)[1] == 2
    assert call(10)[1] == 1 and call(50)[1] == 2


def test_artifact_round_trip_and_self_contained_loading(tmp_path):
    d, sol = probe_definition(), probe_solution(7)
    traces = [passed_trace(d.name, sol.name, probe_workload(n), 0.5 * n) for n in (8, 64)]
    art = write_artifact(tmp_path / "x" / "p7", d, sol, traces, ArtifactMeta(run="r1", commit="c" * 40, island="0"))
    a = read_artifact(art)
    assert a.solution == sol and a.definition == d and a.traces == traces
    m = a.manifest
    assert m.task == "apply_probe" and m.run == "r1" and m.commit == "c" * 40 and m.hardware == "test_cpu"
    assert m.device_mode == "interpret" and m.ranges == {"n": [8, 64]} and m.avo_version == avo.__version__
    assert [(k.key, k.latency_ms, k.speedup, k.sol_fraction, k.won) for k in m.keys] == [
        ("n=64,x:float32,scale=2.0", 32.0, 2.0, 0.5, True), ("n=8,x:float32,scale=2.0", 4.0, 2.0, 0.5, True)]
    assert json.loads((art / "definition.json").read_text())["reference"] == PROBE_REFERENCE
    assert (art / "sources" / "probe.py").read_text() == sol.sources[0].content
    moved = tmp_path / "elsewhere"
    shutil.move(str(art), moved)  # no path back to where it was written, nor to the repo
    fn = load_entry(read_artifact(moved))
    y, tag = torch.empty(3), torch.empty(1, dtype=torch.int32)
    fn(torch.ones(3), 3.0, y, tag)
    assert y.tolist() == [3.0, 3.0, 3.0] and int(tag) == 7


def test_writer_refuses_solutions_that_did_not_pass_everywhere(tmp_path):
    d, sol = probe_definition(), probe_solution(1)
    ok = passed_trace(d.name, sol.name, probe_workload(8), 1.0)
    for status in (EvaluationStatus.REWARD_HACK, EvaluationStatus.INCORRECT_NUMERICAL):
        bad = passed_trace(d.name, sol.name, probe_workload(64), 1.0, status=status)
        with pytest.raises(ArtifactError, match=f"is {status.value} on workload n64"):
            write_artifact(tmp_path / "a", d, sol, [ok, bad])
    assert not (tmp_path / "a").exists()


def test_reader_errors_are_one_line(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact"):
        read_artifact(tmp_path)
    art = write_probe(tmp_path / "a", 1, [8], 1, 64)
    line = (art / "traces.jsonl").read_text()
    hacked = json.loads(line)
    hacked["evaluation"]["status"] = "REWARD_HACK"
    hacked["evaluation"].pop("performance")
    hacked["evaluation"].pop("correctness")
    (art / "traces.jsonl").write_text(line + json.dumps(hacked) + "\n")
    with pytest.raises(ArtifactError, match=r"traces.jsonl:2: status REWARD_HACK \(artifacts hold PASSED traces only\)"):
        read_artifact(art)
    (art / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest.json: malformed JSON \(line 1"):
        read_artifact(art)
    (art / "manifest.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ArtifactError, match="format 'other/9' is not 'avo-artifact/1'"):
        read_artifact(art)
    for err in (ArtifactError,):
        try:
            read_artifact(art)
        except err as e:
            assert "\n" not in str(e)


def test_call_key_equals_the_workload_key():
    task = load_task("attention_mha_fwd")
    d = task.definition
    layout = KeyLayout.of(d)
    w = next(w for w in task.workloads if w.target == "cpu")
    q = torch.zeros([w.axes[a] for a in ("batch", "heads", "seq", "dim")], dtype=torch.float16)
    causal = w.inputs["causal"].value
    assert layout.call_key((q, q, q, causal)) == layout.workload_key(d, w)
    assert layout.text(layout.call_key((q, q, q, causal))) == canonical_key(d, w)
    # Workload.key() itself, for a workload that spells out every input dtype, is the same string
    full = w.model_copy(update={"dtypes": {n: w.dtypes[n] for n in ("q", "k", "v")}})
    assert full.key() == canonical_key(d, w)
