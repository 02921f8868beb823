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
# skipping (the diagonal starts mid-block) and BLOCK_M > BLOCK_N (several diagonal blocks).
TUNABLE_SAMPLE = [
    dict(BLOCK_M=16, BLOCK_N=64, num_warps=2, num_stages=1, EXP2=True, CAUSAL_SKIP=True, PEEL_TAIL=True,
         WARP_SPEC=False, REVERSE_M=True),
    dict(BLOCK_M=128, BLOCK_N=16, num_warps=8, num_stages=3, EXP2=False, CAUSAL_SKIP=True, PEEL_TAIL=False,
         WARP_SPEC=True, REVERSE_M=True),
    dict(BLOCK_M=32, BLOCK_N=128, num_warps=4, num_stages=2, EXP2=True, CAUSAL_SKIP=False, PEEL_TAIL=True,
         WARP_SPEC=True, REVERSE_M=False),
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

