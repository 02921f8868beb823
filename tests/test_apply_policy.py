"""avo.apply's serving policy (issue 25 parts 3 and 4), on CPU with the probe task of test_apply.py:

* verified-only: a key is served only if an artifact was verified on it, or on a range it was
  checked on (`checked_ranges`, both ends verified); the nearest-key rule is enable(nearest=True);
* never slower: a key is served on a GPU model only where the artifact measured faster than the
  replaced call on that model (traces of the export, or `speed-*.jsonl` of a re-measurement);
  the GPU is simulated by naming the CPU device as one (`hardware_name` patched);
* device faults reported after the call (simulated fences) disable the keys in flight, raise
  DeviceFault, and go to the quarantine file a restarted engine skips;
* layout copies: a strided input is copied for the kernel when the function allows it."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from test_apply import call, clean_runtime, probe, probe_definition, probe_solution, probe_workload, write_probe  # noqa: F401 (clean_runtime: autouse)

import avo
import avo.apply.runtime as rt
from avo.apply import ArtifactError, ArtifactMeta, DeviceFault, write_artifact
from avo.apply.speed import SpeedRecord, read_speed_files, write_speed_file
from avo.schema import Correctness, Environment, Evaluation, EvaluationStatus, Performance, Trace

H100, H200 = "NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"




def gpu_trace(n: int, latency: float, replaced: float, hardware: str = H100, sol: str = "probe_1") -> Trace:
    ev = Evaluation(status=EvaluationStatus.PASSED,
                    environment=Environment(hardware=hardware, device_mode="cuda"),
                    timestamp="2026-01-01T00:00:00+00:00", correctness=Correctness(),
                    performance=Performance(latency_ms=latency, reference_latency_ms=replaced,
                                            speedup_factor=replaced / latency))
    return Trace(definition="apply_probe", workload=probe_workload(n), solution=sol, evaluation=ev)


def write_gpu_probe(folder, tag: int, speeds: dict, hardware: str = H100):
    """A probe artifact whose traces say: on `hardware`, key n ran `ratio` x faster than T_b."""
    d, sol = probe_definition(), probe_solution(tag)
    traces = [gpu_trace(n, 1.0, ratio, hardware, sol.name) for n, ratio in speeds.items()]
    return write_artifact(folder, d, sol, traces, ArtifactMeta(name=f"probe{tag}"))


def on_gpu(monkeypatch, name: str) -> None:
    """CPU tensors named as a GPU model, for the speed policy."""
    monkeypatch.setattr(rt, "hardware_name", lambda device: name)


def reasons() -> dict:
    return avo.apply.stats()["apply_probe"]["reasons"]


def test_verified_keys_only_by_default_nearest_and_checked_ranges_opt_in(tmp_path):
    write_probe(tmp_path / "a", 1, [8, 64], 1, 1024)  # declared range [1, 1024], verified 8 and 64
    avo.apply.enable(tmp_path, require_faster=False)
    assert call(8)[1] == 1 and call(64)[1] == 1  # exact
    assert call(20)[1] == 0  # in the declared range, never verified: the original
    s = avo.apply.stats(reset=True)["apply_probe"]
    assert (s["exact"], s["misses"], s["nearest"]) == (2, 1, 0)
    avo.apply.enable(tmp_path, require_faster=False, nearest=True)  # the opt-in
    assert call(20)[1] == 1 and avo.apply.stats(reset=True)["apply_probe"]["nearest"] == 1

    # checked_ranges: both ends verified, then served in between without nearest=True
    d, sol = probe_definition(), probe_solution(3)
    from test_apply import passed_trace
    traces = [passed_trace(d.name, sol.name, probe_workload(n), 1.0) for n in (8, 16, 32)]
    write_artifact(tmp_path / "c", d, sol, traces, ArtifactMeta(name="probe3", checked_ranges={"n": [8, 32]}))
    with pytest.raises(ArtifactError, match="40 is not a verified key's value"):
        write_artifact(tmp_path / "x", d, sol, traces, ArtifactMeta(checked_ranges={"n": [8, 40]}))
    avo.apply.enable(tmp_path / "c", require_faster=False)
    assert call(20)[1] == 3 and call(32)[1] == 3 and call(33)[1] == 0 and call(20, scale=3.0)[1] == 0
    s = avo.apply.stats()["apply_probe"]
    assert (s["range"], s["exact"], s["misses"]) == (1, 1, 2)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["checked_ranges"] == {"n": [8, 32]}
    assert "checked_ranges" not in json.loads((tmp_path / "a" / "manifest.json").read_text())


def test_served_only_where_measured_faster_on_this_gpu(tmp_path, monkeypatch, caplog):
    # tuned on the H100: faster at n=8 (1.2x), slower at n=64 (0.77x)
    write_gpu_probe(tmp_path / "h100", 1, {8: 1.2, 64: 0.77})
    avo.apply.enable(tmp_path)  # require_faster is the default
    assert call(8)[1] == 0  # CPU tensors: no speed claim
    assert reasons() == {"not measured on cpu": 1}
    avo.apply.stats(reset=True)
    on_gpu(monkeypatch, H100)
    avo.apply.reload()
    assert call(8)[1] == 1 and call(64)[1] == 0
    assert reasons() == {f"slower than the replaced call on {H100}": 1}
    avo.apply.stats(reset=True)
    on_gpu(monkeypatch, H200)  # another GPU: the H100's numbers say nothing there
    avo.apply.reload()
    assert call(8)[1] == 0 and reasons() == {f"not measured on {H200}": 1}
    avo.apply.stats(reset=True)

    # a kernel tuned on the H200 beside it: each GPU picks its own
    write_gpu_probe(tmp_path / "h200", 2, {8: 1.5, 64: 1.1}, hardware=H200)
    avo.apply.reload()
    assert call(8)[1] == 2 and call(64)[1] == 2
    on_gpu(monkeypatch, H100)
    avo.apply.reload()
    assert call(8)[1] == 1 and call(64)[1] == 0
    # min_speedup raises the bar
    avo.apply.enable(tmp_path, min_speedup=1.3)
    assert call(8)[1] == 0


def test_a_remeasurement_overrides_the_export_record(tmp_path, monkeypatch):
    art = write_gpu_probe(tmp_path / "a", 1, {8: 1.2})
    from avo.apply import read_artifact
    digest = read_artifact(art).digest
    on_gpu(monkeypatch, H200)
    avo.apply.enable(tmp_path)
    assert call(8)[1] == 0
    row = SpeedRecord(task="apply_probe", artifact="probe1", digest=digest, key="n=8,x:float32,scale=2.0",
                      hardware=H200, device_mode="cuda", latency_ms=1.0, replaced_latency_ms=1.4, ratio=1.4,
                      replaced="baseline.py", source="measure", measured="2026-02-01T00:00:00+00:00")
    write_speed_file(tmp_path / f"speed-{H200}.jsonl", [row])
    avo.apply.reload()
    assert call(8)[1] == 1  # now measured on the H200
    on_gpu(monkeypatch, H100)
    write_speed_file(tmp_path / f"speed-{H100}.jsonl", [row.model_copy(update={"hardware": H100, "ratio": 0.9})])
    avo.apply.reload()
    assert call(8)[1] == 0  # re-measured slower on the H100: the export's 1.2x no longer counts
    assert len(read_speed_files([tmp_path])) == 2
    (tmp_path / "speed-bad.jsonl").write_text('{"task": 1}\n')
    with pytest.raises(ArtifactError, match="speed-bad.jsonl:1"):
        avo.apply.reload()


def test_measure_command_writes_records_without_a_cpu_speed_claim(tmp_path, monkeypatch):
    from avo.apply.measure import main
    write_probe(tmp_path / "a", 0, [8], 1, 64)  # tag 0: the reference's tag, so it passes the check
    assert main([str(tmp_path), "--device", "interpret"]) == 0
    files = list(tmp_path.glob("speed-*.jsonl"))
    assert len(files) == 1
    rows = read_speed_files([tmp_path])
    assert [(r.key, r.device_mode, r.source, r.replaced) for r in rows] == [
        ("n=8,x:float32,scale=2.0", "interpret", "measure", "reference")]
    on_gpu(monkeypatch, rows[0].hardware)
    avo.apply.enable(tmp_path)
    assert call(8)[1] == 0 and next(iter(reasons())).startswith("not measured on")


class FakeEvent:
    """A fence: done unless its launch faulted (then query raises like a CUDA error)."""
    faults: set = set()
    made: list = []

    def __init__(self, device):
        self.n = len(FakeEvent.made)
        FakeEvent.made.append(self)

    def query(self):
        if self.n in FakeEvent.faults:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.n not in FakeEvent.pending

    pending: set = set()


def test_device_fault_at_the_next_call_disables_the_key_and_is_quarantined(tmp_path, caplog):
    write_probe(tmp_path / "a", 1, [8, 64], 1, 1024)
    q = tmp_path / "quarantine.jsonl"
    avo.apply.enable(tmp_path, require_faster=False, fault_checks=2, quarantine=q)
    fw = rt._STATE.faults
    fw.event_factory, fw.devices = FakeEvent, ("cpu",)
    FakeEvent.made, FakeEvent.faults, FakeEvent.pending = [], set(), set()
    assert call(64)[1] == 1 and call(64)[1] == 1 and call(64)[1] == 1
    assert len(FakeEvent.made) == 2  # probation: the first 2 launches per key are fenced
    assert not fw.pending  # completed fences are dropped at the next call
    FakeEvent.pending = {2}  # the next launch is still running...
    assert call(8)[1] == 1
    FakeEvent.faults = {2}  # ...and the device reports a fault for it
    with caplog.at_level(logging.WARNING, logger="avo.apply"), pytest.raises(DeviceFault, match=r"n=8.*probe1"):
        call(64)
    assert any("device fault" in r.getMessage() for r in caplog.records)
    assert call(8)[1] == 0  # disabled until reload
    s = avo.apply.stats()["apply_probe"]
    assert s["reasons"]["device fault"] == 1 and s["reasons"]["disabled after device fault"] == 1
    rows = [json.loads(x) for x in q.read_text().splitlines()]
    assert [(r["task"], r["key"], r["artifact"]) for r in rows] == [("apply_probe", "n=8,x:float32,scale=2.0", "probe1")]
    avo.apply.reload()  # a restarted engine: the quarantined kernel does not serve that key again
    assert call(8)[1] == 0 and call(64)[1] == 1
    avo.apply.synchronize()  # no CUDA here: checks the pending fences only


def test_strided_inputs_copied_only_where_allowed(tmp_path):
    write_probe(tmp_path / "a", 1, [8], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    x = torch.arange(16, dtype=torch.float32)[::2]
    assert int(probe(x, 2.0)[1]) == 0  # the default: a strided input falls back
    copying = avo.apply("apply_probe", copy_inputs=True)(probe.original)
    y, tag = copying(x, 2.0)
    assert int(tag) == 1 and torch.equal(y, x * 2.0)
    s = avo.apply.stats()["apply_probe"]
    assert s["copies"] == {"layout copy: x": 1} and s["reasons"] == {"guard:contiguous": 1}


def test_shipped_attention_winners_serve_only_where_they_beat_sdpa_on_their_gpu():
    """The shipped H100 winners under the default policy (routes only, no kernel runs here): on the
    H100 they serve exactly the keys their export measured faster than the task's T_b (torch SDPA),
    elsewhere nothing until re-measured there."""
    from avo.apply.table import Policy, build_table
    from avo.tasks import REPO_ROOT
    table = build_table((REPO_ROOT / "kernels" / "attention" / "evolved",), False, Policy())
    served, slower = {}, set()
    for task, tt in table.tasks.items():
        for key, entries in tt.exact.items():
            r = tt.route(key, H100)
            if isinstance(r, str):
                assert r == f"slower than the replaced call on {H100}"
                slower.add((task, r))
            else:
                served.setdefault(task, []).append(r.key_text)
            assert tt.route(key, H200) == f"not measured on {H200}"
    assert sorted((t, len(k)) for t, k in served.items()) == [("attention_gqa_decode", 2), ("attention_gqa_fwd", 1)]
    assert {k for k in served["attention_gqa_decode"]} == {
        "batch=1,dim=128,kv_heads=8,kv_len=8192,q_heads=32,k:bfloat16,q:bfloat16,v:bfloat16",
        "batch=1,dim=128,kv_heads=8,kv_len=32768,q_heads=32,k:bfloat16,q:bfloat16,v:bfloat16"}
    assert slower and "attention_mha_fwd" not in served  # no shipped MHA winner beats SDPA on its keys


FAULT_SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
import avo
from avo.apply import DeviceFault, write_artifact
from avo.schema import (BuildSpec, Correctness, Definition, Environment, Evaluation, EvaluationStatus, Performance,
                        RandomInput, Solution, SourceFile, TensorSpec, Trace, Workload)

KERNEL = """import torch
import triton
import triton.language as tl


@triton.jit
def _double(x_ptr, y_ptr, n, BAD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    if BAD:  # an address far outside any allocation: an asynchronous illegal-address fault
        x = tl.load(x_ptr + offs + 1099511627776, mask=m)
    tl.store(y_ptr + offs, x * 2, mask=m)


def run(x, y):
    _double[(triton.cdiv(x.numel(), 128),)](x, y, x.numel(), BAD=x.numel() == 13, BLOCK=128)
"""
d = Definition(name="fault_probe", op_type="probe", reference="def run(x):\n    return x * 2\n",
               axes={"n": {"type": "var"}}, inputs={"x": TensorSpec(shape=["n"], dtype="float32")},
               outputs={"y": TensorSpec(shape=["n"], dtype="float32")})
sol = Solution(name="fault_1", definition=d.name, author="test",
               spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point="kernel.py::run"),
               sources=[SourceFile(path="kernel.py", content=KERNEL)])
ev = Evaluation(status=EvaluationStatus.PASSED, environment=Environment(hardware="test", device_mode="cuda"),
                timestamp="2026-01-01T00:00:00+00:00", correctness=Correctness(),
                performance=Performance(latency_ms=1.0, reference_latency_ms=2.0, speedup_factor=2.0))
traces = [Trace(definition=d.name, solution=sol.name, evaluation=ev,
                workload=Workload(uuid=f"n{n}", axes={"n": n}, inputs={"x": RandomInput()})) for n in (8, 13)]
root = Path(sys.argv[1])
write_artifact(root / "a", d, sol, traces)
q = root / "quarantine.jsonl"
avo.apply.enable(root / "a", require_faster=False, quarantine=q)
f = avo.apply("fault_probe")(lambda x: x * 2)
ok = f(torch.ones(8, device="cuda")).tolist() == [2.0] * 8
f(torch.ones(13, device="cuda"))  # returns: the fault is reported later
try:
    avo.apply.synchronize()
    fault = None
except DeviceFault as e:
    fault = str(e)
print(json.dumps({"ok": ok, "fault": fault, "quarantine": q.read_text() if q.exists() else "",
                  "stats": avo.apply.stats()}))
'''


@pytest.mark.gpu
def test_gpu_asynchronous_illegal_address_is_attributed_at_the_sync_point(tmp_path):
    """A real device fault (in a subprocess: it leaves the CUDA context unusable)."""
    import os
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    r = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ok"] and res["fault"] and "n=13" in res["fault"], res
    assert json.loads(res["quarantine"].splitlines()[0])["key"] == "n=13,x:float32"
    assert res["stats"]["fault_probe"]["reasons"]["device fault"] == 1


def test_remeasuring_a_shipped_winner_times_it_against_sdpa():
    """The evaluators' definitions have moved on since the export (forbidden calls, descriptions);
    the calls are the same, so T_b stays the task's baseline.py (SDPA), not the fp32 reference."""
    from avo.apply import read_artifact
    from avo.apply.measure import _task_of
    from avo.tasks import REPO_ROOT
    t, replaced, against = _task_of(read_artifact(REPO_ROOT / "kernels" / "attention" / "evolved" / "gqa_decode_h100"))
    assert replaced == "baseline.py" and "scaled_dot_product_attention" in t.baseline and against == "task"
    assert [w.uuid for w in t.workloads][:1] == ["gpu_b1_hq32_hkv8_kv8192_d128"]


def test_transformers_call_avo_does_not_serve_goes_straight_to_sdpa(monkeypatch):
    """The miss path of the transformers integration: decided once per shape and dispatch table
    (Applied.decide), then transformers' own sdpa_attention_forward with the miss counted; a table
    swap (reload) decides again; a key an artifact serves still goes through avo's dispatch."""
    import avo.apply.transformers_attn as avo_attn
    from avo.apply.runtime import Applied
    from avo.tasks import REPO_ROOT
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attn(torch.nn.Module):
        is_causal, num_key_value_groups, scaling = True, 4, 128 ** -0.5

    on_gpu(monkeypatch, H100)  # the shipped winners' GPU: kv 8192 is served there, 8193 no artifact covers
    decided, dispatched = [], []
    real_decide, real_dispatch = Applied.decide, Applied._dispatch
    monkeypatch.setattr(Applied, "decide", lambda self, args: decided.append(self.task) or real_decide(self, args))
    monkeypatch.setattr(Applied, "_dispatch", lambda self, a, k: dispatched.append(self.task) or real_dispatch(self, a, k))
    avo.apply.enable(REPO_ROOT / "kernels" / "attention" / "evolved")
    m = Attn().eval()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 32, 128, generator=g).to(torch.bfloat16).transpose(1, 2)  # as LlamaAttention makes it
    k8193, v8193 = (torch.randn(1, 8, 8193, 128, generator=g).to(torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        want = sdpa_attention_forward(m, q, k8193, v8193, None, scaling=m.scaling)[0]
        for _ in range(3):
            out = avo_attn.avo_attention_forward(m, q, k8193, v8193, None, scaling=m.scaling, position_ids=None)[0]
            assert torch.equal(out, want)
        assert decided == ["attention_gqa_decode"] and dispatched == []  # decided once, never dispatched
        s = avo.apply.stats()["attention_gqa_decode"]
        assert (s["calls"], s["misses"], s["reasons"]) == (3, 3, {"miss": 3})
        avo.apply.reload()  # a new table: decided again
        avo_attn.avo_attention_forward(m, q, k8193, v8193, None, scaling=m.scaling)
        assert decided == ["attention_gqa_decode"] * 2 and dispatched == []
        # kv 8192: the H100 winner's key: avo's dispatch runs (here its guard: a Triton kernel, CPU tensors)
        k8192, v8192 = k8193[:, :, :8192].contiguous(), v8193[:, :, :8192].contiguous()
        for _ in range(2):
            out = avo_attn.avo_attention_forward(m, q, k8192, v8192, None, scaling=m.scaling)[0]
        assert dispatched == ["attention_gqa_decode"] * 2
        torch.testing.assert_close(out, sdpa_attention_forward(m, q, k8192, v8192, None, scaling=m.scaling)[0])
        assert avo.apply.stats()["attention_gqa_decode"]["reasons"] == {"miss": 4, "guard:device": 2}
        avo.apply.disable()  # not enabled: transformers' SDPA, nothing counted
        avo_attn.avo_attention_forward(m, q, k8193, v8193, None, scaling=m.scaling)
        assert avo.apply.stats()["attention_gqa_decode"]["calls"] == 4 + 2


def test_require_faster_counts_only_records_against_the_call_the_integration_replaces(tmp_path, monkeypatch):
    """A speed record says what it was measured against; the xgrammar integration replaces
    xgrammar's own kernel, so a record against the task's T_b (its torch reference) does not let it
    serve, one against xgrammar does; the fallback reason says which record is missing. Rows
    written before the field count as against the task's T_b."""
    from avo.apply.measure import XGRAMMAR_BASELINE, resolve_baseline
    from avo.apply.speed import SpeedBook, TASK_BASELINE
    from avo.apply.table import Entry, Policy, TaskTable
    from avo.apply.keys import KeyLayout
    from avo.tasks import load_task

    old_row = ('{"task":"grammar_bitmask","artifact":"a","digest":"d1","key":"k","hardware":"%s","device_mode":"cuda",'
               '"latency_ms":1.0,"replaced_latency_ms":1.3,"ratio":1.3,"replaced":"T_b","source":"export"}' % H100)
    assert SpeedRecord.model_validate_json(old_row).against == TASK_BASELINE  # backwards compatible
    d = load_task("grammar_bitmask").definition
    e = Entry(lambda *a: None, "a", "d1", "k", {}, (), None, True, 1.0)

    def table(*records):
        return TaskTable("grammar_bitmask", d, KeyLayout.of(d), {}, [], [], (), [], Policy(), SpeedBook(records))

    vs_task = SpeedRecord.model_validate_json(old_row)
    vs_ref = vs_task.model_copy(update={"against": "reference"})
    vs_xgr = vs_task.model_copy(update={"against": "xgrammar", "ratio": 1.1, "source": "measure"})
    slower_xgr = vs_xgr.model_copy(update={"ratio": 0.84})
    assert table(vs_task).fastest([e], H100) is e  # a caller replacing the task's own T_b
    assert table(vs_task).fastest([e], H100, "xgrammar") == f"no speed record against xgrammar on {H100}"
    assert table(vs_ref).fastest([e], H100, "xgrammar") == f"no speed record against xgrammar on {H100}"
    assert table(vs_task, vs_xgr).fastest([e], H100, "xgrammar") is e
    assert table(vs_task, slower_xgr).fastest([e], H100, "xgrammar") == f"slower than xgrammar on {H100}"
    assert table(vs_xgr).fastest([e], H100) == f"no speed record against task on {H100}"
    assert table().fastest([e], H100, "xgrammar") == f"not measured on {H100}"

    # end to end through the integration's function (no xgrammar needed: the key guard runs first)
    import avo.apply.xgrammar_bitmask as avo_xgr
    from avo.apply.measure import _task_of
    from avo.apply import read_artifact
    from avo.tasks import REPO_ROOT
    assert avo_xgr.grammar_bitmask.replaces == "xgrammar"
    src = REPO_ROOT / "kernels" / "grammar" / "evolved" / "bitmask_h100"
    art = read_artifact(src)
    on_gpu(monkeypatch, H100)
    avo.apply.enable(src)  # the shipped winner: export records against the task's T_b (the torch reference)
    tt = rt._STATE.table.tasks["grammar_bitmask"]
    key = next(iter(tt.exact))
    r_task, r_xgr = tt.route(key, H100), tt.route(key, H100, "xgrammar")
    assert not isinstance(r_task, str) and r_xgr == f"no speed record against xgrammar on {H100}"
    rows = [SpeedRecord(task="grammar_bitmask", artifact=art.manifest.name, digest=art.digest, key=tt.exact[key][0].key_text,
                        hardware=H100, device_mode="cuda", latency_ms=1.0, replaced_latency_ms=1.2, ratio=1.2,
                        replaced="builtin xgrammar", against="xgrammar", source="measure")]
    folder = tmp_path / "arts"
    import shutil
    shutil.copytree(src, folder / "bitmask_h100")
    write_speed_file(folder / f"speed-{H100}.jsonl", rows)
    avo.apply.enable(folder)
    tt = rt._STATE.table.tasks["grammar_bitmask"]
    assert not isinstance(tt.route(key, H100, "xgrammar"), str)  # measured faster than xgrammar: served
    # the counted reason, through the integration's @avo.apply function
    avo.apply.enable(src)
    b, v = tt.layout.axes_of(key)["batch"], tt.layout.axes_of(key)["vocab"]
    n = tt.layout.axes_of(key).get("num_rows", b)
    logits = torch.zeros(b, v)
    bits = torch.zeros(b, (v + 31) // 32, dtype=torch.int32)
    monkeypatch.setattr(avo_xgr, "_xgrammar_apply", lambda: (lambda lg, bm, indices=None, **kw: None))
    avo_xgr.grammar_bitmask(logits, bits, torch.arange(n, dtype=torch.int32))
    assert avo.apply.stats()["grammar_bitmask"]["reasons"] == {f"no speed record against xgrammar on {H100}": 1}

    # `avo apply measure --task grammar_bitmask --baseline xgrammar` times xgrammar's function
    code, replaced, against = resolve_baseline("xgrammar", "grammar_bitmask")
    assert code == XGRAMMAR_BASELINE and against == "xgrammar" and "apply_token_bitmask_inplace" in code
    t, replaced, against = _task_of(art, "xgrammar")
    assert t.baseline == XGRAMMAR_BASELINE and against == "xgrammar" and replaced == "builtin xgrammar"
    with pytest.raises(ValueError):
        resolve_baseline("xgrammar", "attention_gqa_decode")
