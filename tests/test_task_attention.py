"""attention_mha_fwd: the task loads, its SOL model is the FlashAttention FLOP count, the reference
is attention, and the seed kernel (and a sample of its TUNABLES) passes the real evaluator in the
Triton interpreter while numerically wrong variants (no 1/sqrt(d), no causal mask, P in fp8)
come back INCORRECT_NUMERICAL and a library call comes back REWARD_HACK."""
from __future__ import annotations

import math

import pytest
import torch

from avo.harness import sol
from avo.schema import EvaluationStatus, ScalarInput
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file
from kernel_variants import namespace, variant, with_config

SEED_PATH = REPO_ROOT / "kernels" / "attention" / "mha_fwd_seed.py"
S = EvaluationStatus


@pytest.fixture(scope="module")
def task():
    return load_task("attention_mha_fwd")


def _seed_module_namespace() -> dict:
    return namespace(SEED_PATH.read_text(), str(SEED_PATH))


def test_attention_task_loads_with_gpu_and_cpu_workloads(task):
    d = task.definition
    assert d.name == "attention_mha_fwd"
    assert list(d.inputs) == ["q", "k", "v", "causal"] and list(d.outputs) == ["o"]
    assert d.inputs["causal"].shape is None and d.inputs["causal"].dtype == "bool"
    gpu, cpu = task.select("gpu"), task.select("cpu")
    assert len(gpu) == 8 and len(cpu) >= 3
    # Every GPU shape of the anchor table, causal and not, in bf16 (no dtype override).
    got = {(w.axes["batch"], w.axes["heads"], w.axes["seq"], w.axes["dim"], w.inputs["causal"].value) for w in gpu}
    want = {(b, h, s, dd, c) for (b, h, s, dd) in [(4, 32, 4096, 128), (2, 32, 8192, 128), (16, 16, 1024, 128),
                                                   (4, 32, 4096, 64)] for c in (False, True)}
    assert got == want
    assert all(not w.dtypes and d.inputs["q"].dtype == "bfloat16" for w in gpu)
    # CPU workloads: fp16 (the interpreter's bf16 dot is wrong), awkward lengths, both masks.
    for w in cpu:
        assert isinstance(w.inputs["causal"], ScalarInput)
        assert {w.dtypes[n] for n in ("q", "k", "v", "o")} == {"float16"}
    assert any(w.axes["seq"] % 16 for w in cpu)
    assert {w.inputs["causal"].value for w in cpu} == {False, True}
    assert {w.axes["dim"] for w in cpu} >= {32, 64, 128}
    assert task.baseline is not None and "run" in task.baseline


def test_attention_sol_model_is_flash_attention_flops_and_io_bytes(task):
    d = task.definition
    for w in task.workloads:
        b, h, s, dim = (w.axes[a] for a in ("batch", "heads", "seq", "dim"))
        causal = w.inputs["causal"].value
        isz = 2  # bf16 on GPU, fp16 on CPU
        flops, nbytes = sol.work(d, w)
        assert flops == 4 * b * h * s * s * dim / (2 if causal else 1)
        assert nbytes == 4 * b * h * s * dim * isz
    h100 = sol.hardware_by_name("H100 SXM")
    w = next(w for w in task.workloads if w.uuid == "gpu_b4_h32_s4096_d128_full")
    # 1.1 TFLOP at 989 TFLOP/s: compute-bound, ~1.11 ms (cuDNN runs it in 1.78 ms).
    assert sol.sol_time_s(d, w, h100) == pytest.approx(4 * 4 * 32 * 4096**2 * 128 / 989e12)


def test_attention_reference_matches_explicit_softmax_loop(task):
    ns = namespace(task.definition.reference, "reference")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        want = torch.empty_like(q)
        for hh in range(2):
            for i in range(7):
                keys = range(i + 1) if causal else range(7)
                s = [float(q[0, hh, i] @ k[0, hh, j]) / math.sqrt(4) for j in keys]
                w = torch.tensor(s, dtype=torch.float64).softmax(0)
                want[0, hh, i] = sum(w[n] * v[0, hh, j] for n, j in enumerate(keys))
        torch.testing.assert_close(ns["run"](q, k, v, causal), want)


def test_attention_seed_config_is_within_tunables():
    ns = _seed_module_namespace()
    cfg, tun = ns["CONFIG"], ns["TUNABLES"]
    assert set(cfg) == set(tun)
    assert all(cfg[k] in tun[k] for k in cfg)
    assert math.prod(len(v) for v in tun.values()) >= 500


def test_attention_seed_passes_interpreter_evaluation(task, evaluator):
    rep = evaluator.evaluate(task, solution_from_kernel_file(task, SEED_PATH))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in task.select("cpu")}
    for t in rep.traces:
        c = t.evaluation.correctness
        assert c.extra["matched_ratio"] == 1.0
        assert c.max_absolute_error < 5e-3  # fp16 rounding of outputs of magnitude ~1
        assert t.evaluation.performance.latency_ms > 0


# Together with the seed these cover every value of every knob, BLOCK_N > BLOCK_M with causal
# skipping (the diagonal starts mid-block) and BLOCK_M > BLOCK_N (several diagonal blocks); TMA
# descriptors with each loop structure (skip, peel, the plain masked loop) and tile shape.
TUNABLE_SAMPLE = [
    dict(BLOCK_M=16, BLOCK_N=64, num_warps=2, num_stages=1, EXP2=True, CAUSAL_SKIP=True, PEEL_TAIL=True,
         WARP_SPEC=False, REVERSE_M=True, TMA=True, FMA_SCALE=True),
    dict(BLOCK_M=128, BLOCK_N=16, num_warps=8, num_stages=3, EXP2=False, CAUSAL_SKIP=True, PEEL_TAIL=False,
         WARP_SPEC=True, REVERSE_M=True, TMA=False, FMA_SCALE=True),
    dict(BLOCK_M=32, BLOCK_N=128, num_warps=4, num_stages=2, EXP2=True, CAUSAL_SKIP=False, PEEL_TAIL=True,
         WARP_SPEC=True, REVERSE_M=False, TMA=True, FMA_SCALE=False),
    dict(BLOCK_M=128, BLOCK_N=16, num_warps=8, num_stages=3, EXP2=False, CAUSAL_SKIP=False, PEEL_TAIL=False,
         WARP_SPEC=True, REVERSE_M=True, TMA=True, FMA_SCALE=False),
]


def test_attention_tunable_sample_covers_every_value():
    tun = _seed_module_namespace()["TUNABLES"]
    cfgs = TUNABLE_SAMPLE + [_seed_module_namespace()["CONFIG"]]
    for knob, values in tun.items():
        assert {c[knob] for c in cfgs} == set(values), knob


@pytest.mark.parametrize("idx", range(len(TUNABLE_SAMPLE)))
def test_attention_tunable_combinations_pass(task, quick_evaluator, tmp_path, idx):
    path = with_config(SEED_PATH, tmp_path, f"mha_cfg{idx}", TUNABLE_SAMPLE[idx])
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, (TUNABLE_SAMPLE[idx], rep.message)


# ---- TMA: the descriptors' edges and the pointer fallback, then the sm_90 compile ----

def test_attention_tma_rules_on_the_host():
    ok = _seed_module_namespace()["_tma_ok"]
    t = torch.zeros(2, 3, 77, 64, dtype=torch.float16)
    assert ok(t, t, t, t)
    assert ok(torch.zeros(2, 77, 3, 64, dtype=torch.float16).transpose(1, 2))  # [B, S, H, D] storage
    assert ok(torch.zeros(77, 8).as_strided((1, 1, 77, 8), (3, 5, 8, 1)))  # size-1 dims: their strides never move
    assert not ok(t, torch.zeros(2 * 3 * 77 * 64 + 1, dtype=torch.float16)[1:].view(2, 3, 77, 64))  # 2-byte offset
    assert not ok(torch.zeros(1, 1, 77, 20, dtype=torch.float16)[..., :16])  # row stride 40 bytes
    assert not ok(torch.zeros(2, 3, 77, 64)[..., ::2])  # head dim not contiguous


TMA_EDGES = """
import json, math, sys
import torch
sys.path.insert(0, "kernels/attention")
mod = __import__(sys.argv[1])
mod.CONFIG.update(BLOCK_M=32, BLOCK_N=16, TMA=True)
hq, hk, S, D, dt = 4, 2 if "gqa" in sys.argv[1] else 4, 77, 32, torch.float16

def ref(q, k, v, causal):
    g = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(g, 1) for t in (k, v))
    s = q.float() @ k.transpose(-1, -2) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v

def err(o, q, k, v, causal):
    return (o.float() - ref(q, k, v, causal)).abs().max().item()

torch.manual_seed(0)
q = torch.randn(1, hq, S, D, dtype=dt)
k, v = (torch.randn(1, hk, S, D, dtype=dt) for _ in range(2))
out = {}
# K, V and O views into buffers with rows past seq: garbage there is never read, and never written
kb = torch.full((1, hk, S + 19, D), 1e4, dtype=dt); kb[:, :, :S] = k
vb = torch.full((1, hk, S + 19, D), float("nan"), dtype=dt); vb[:, :, :S] = v
ob = torch.full((1, hq, S + 19, D), float("nan"), dtype=dt)
args = (q, kb[:, :, :S], vb[:, :, :S], True, ob[:, :, :S])
assert mod._tma_ok(q, *args[1:3], args[4])
mod.run(*args)
out["padded_err"] = err(ob[:, :, :S], q, k, v, True)
out["pad_untouched"] = bool(ob[:, :, S:].isnan().all())
# [B, S, H, D] storage, non-causal
qt = q.transpose(1, 2).contiguous().transpose(1, 2)
o = torch.empty(1, hq, S, D, dtype=dt)
mod.run(qt, k, v, False, o)
out["bshd_err"] = err(o, q, k, v, False)
# q 2 bytes into its storage: no descriptor, the pointer path
qm = torch.zeros(q.numel() + 1, dtype=dt)[1:].view_as(q).copy_(q)
out["fallback_ok"] = mod._tma_ok(qm, k, v, o)
mod.run(qm, k, v, True, o)
out["fallback_err"] = err(o, q, k, v, True)
# and the descriptor path really runs: forced onto that q, the interpreter's TMA check refuses it
mod._tma_ok = lambda *ts: True
try:
    mod.run(qm, k, v, True, o)
    out["forced"] = "ran"
except Exception as e:
    out["forced"] = "16-byte aligned" in str(e)
print(json.dumps(out))
"""


@pytest.mark.parametrize("seed", ["mha_fwd_seed", "gqa_fwd_seed"])
def test_attention_tma_edges_in_the_interpreter(seed):
    import json
    import os
    import subprocess
    import sys
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", TMA_EDGES, seed], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["pad_untouched"] and out["forced"] is True and out["fallback_ok"] is False, out
    assert max(out["padded_err"], out["bshd_err"], out["fallback_err"]) < 5e-3, out


def test_attention_kernels_compile_for_sm90():
    # Both prefill seeds at four knob points, TMA off and on (tests/compile_sm90.py, attention part).
    import os
    import subprocess
    import sys
    script = REPO_ROOT / "tests" / "compile_sm90.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(script), "attention"], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("OK  ") == 20 and r.stdout.count("TMA=1") == 10 and "FAIL" not in r.stdout


def test_wgmma_schedule_folds_the_ptx_and_reads_both_prefill_seeds():
    # tests/wgmma_schedule.py: the MMA / wait / ex2 order of a prefill kernel's sm_90 PTX (no GPU).
    import os
    import subprocess
    import sys
    import importlib.util
    spec = importlib.util.spec_from_file_location("wgmma_schedule", REPO_ROOT / "tests" / "wgmma_schedule.py")
    ws = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ws)
    ptx = ("$L__BB0_1:\n wgmma.mma_async.sync.aligned a;\n wgmma.mma_async.sync.aligned b;\n"
           " wgmma.commit_group.sync.aligned;\n wgmma.wait_group.sync.aligned 1;\n ex2.approx.f32 x;\n"
           " ex2.approx.f32 y;\n bar.sync 0;\n wgmma.wait_group.sync.aligned 0;\n")
    assert ws.schedule(ptx) == "|L MMAx2 C WAIT1 Ex2 B WAIT0"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for seed in ("mha_fwd_seed.py", "gqa_fwd_seed.py"):
        r = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "wgmma_schedule.py"),
                            str(REPO_ROOT / "kernels" / "attention" / seed), '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8}'],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        sched = r.stdout.strip()
        assert "MMAx" in sched and "WAIT0" in sched and "Ex" in sched and sched.startswith("|L"), sched
    r = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "wgmma_schedule.py"), "nope.py", "{bad"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


WRONG_VARIANTS = {
    "no_scale": ("scale = 1.0 / math.sqrt(dim)", "scale = 1.0"),
    "no_causal_mask": ("CAUSAL=bool(causal)", "CAUSAL=False"),
    "p_in_fp8": ("acc = tl.dot(p.to(v.dtype), v, acc)", "acc = tl.dot(p.to(tl.float8e4nv).to(v.dtype), v, acc)"),
}


@pytest.mark.parametrize("name", sorted(WRONG_VARIANTS))
def test_attention_wrong_variant_is_incorrect_numerical(task, quick_evaluator, tmp_path, name):
    path = variant(SEED_PATH, tmp_path, name, *WRONG_VARIANTS[name])
    wls = [w for w in task.select("cpu") if w.inputs["causal"].value] if name == "no_causal_mask" else None
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path), wls)
    assert rep.status == S.INCORRECT_NUMERICAL, (name, rep.status, rep.message)


def test_attention_library_call_is_reward_hack(task, quick_evaluator, tmp_path):
    path = variant(SEED_PATH, tmp_path, "calls_sdpa", "    batch, heads, seq, dim = q.shape\n",
                    "    o.copy_(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))\n"
                    "    return\n")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.REWARD_HACK and rep.hack_check == "static:library-call", rep.message

