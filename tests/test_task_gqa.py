"""attention_gqa_fwd and attention_gqa_decode: the tasks load with their GPU and CPU workloads, the
SOL models are the FlashAttention FLOP count (prefill) and the KV-cache bytes (decode), the
references are grouped-query attention, and the Triton seeds (and a sample of their TUNABLES,
split-KV on and off) pass the real evaluator in the Triton interpreter, while variants that read
the wrong KV head or combine splits wrongly come back INCORRECT_NUMERICAL."""
from __future__ import annotations

import math

import pytest
import torch

from avo.harness import sol
from avo.schema import EvaluationStatus
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file
from kernel_variants import namespace, variant, with_config

FWD_SEED = REPO_ROOT / "kernels" / "attention" / "gqa_fwd_seed.py"
DECODE_SEED = REPO_ROOT / "kernels" / "attention" / "gqa_decode_seed.py"
S = EvaluationStatus


@pytest.fixture(scope="module")
def fwd_task():
    return load_task("attention_gqa_fwd")


@pytest.fixture(scope="module")
def decode_task():
    return load_task("attention_gqa_decode")


def _explicit_gqa(q, k, v, causal):
    """Attention per (batch, query head, query row) with the KV head h // group, in float64 loops."""
    batch, hq, seq_q, dim = q.shape
    group = hq // k.shape[1]
    out = torch.empty_like(q)
    for b in range(batch):
        for h in range(hq):
            kk, vv = k[b, h // group], v[b, h // group]
            for i in range(seq_q):
                keys = range(i + 1) if causal else range(kk.shape[0])
                s = torch.tensor([float(q[b, h, i] @ kk[j]) / math.sqrt(dim) for j in keys], dtype=torch.float64)
                w = s.softmax(0)
                out[b, h, i] = sum(w[n] * vv[j] for n, j in enumerate(keys))
    return out


# ---- task files ----

def test_gqa_fwd_task_loads_with_gpu_and_cpu_workloads(fwd_task):
    d = fwd_task.definition
    assert list(d.inputs) == ["q", "k", "v", "causal"] and list(d.outputs) == ["o"]
    assert d.inputs["k"].shape == ["batch", "kv_heads", "seq", "dim"]
    gpu, cpu = fwd_task.select("gpu"), fwd_task.select("cpu")
    got = {(w.axes["batch"], w.axes["q_heads"], w.axes["kv_heads"], w.axes["seq"], w.inputs["causal"].value)
           for w in gpu}
    qwen = {(b, 32, hkv, s, c) for hkv in (8, 4) for b, s in ((4, 4096), (16, 1024)) for c in (False, True)}
    avo_protocol = {(8, 16, 4, 4096, True), (2, 16, 4, 16384, True), (1, 16, 4, 32768, True)}
    assert got == qwen | avo_protocol
    assert all(w.axes["dim"] == 128 and not w.dtypes for w in gpu)
    for w in fwd_task.workloads:
        assert w.axes["q_heads"] % w.axes["kv_heads"] == 0, w.uuid
    for w in cpu:
        assert {w.dtypes[n] for n in ("q", "k", "v", "o")} == {"float16"}
    assert any(w.axes["seq"] % 16 for w in cpu)
    assert {w.inputs["causal"].value for w in cpu} == {False, True}
    assert {w.axes["q_heads"] // w.axes["kv_heads"] for w in cpu} >= {1, 2, 3, 4}
    assert "enable_gqa=True" in fwd_task.baseline
    assert d.forbidden_calls == load_task("attention_mha_fwd").definition.forbidden_calls


def test_gqa_decode_task_loads_with_gpu_and_cpu_workloads(decode_task):
    d = decode_task.definition
    assert list(d.inputs) == ["q", "k", "v"] and list(d.outputs) == ["o"]
    assert d.inputs["q"].shape == ["batch", "q_heads", "dim"]
    assert d.inputs["k"].shape == ["batch", "kv_heads", "kv_len", "dim"]
    gpu, cpu = decode_task.select("gpu"), decode_task.select("cpu")
    assert {(w.axes["batch"], w.axes["kv_len"]) for w in gpu} >= {(1, 8192), (64, 4096), (8, 16384), (1, 32768),
                                                                   (32, 1024)}
    assert all((w.axes["q_heads"], w.axes["kv_heads"], w.axes["dim"]) == (32, 8, 128) and not w.dtypes for w in gpu)
    for w in cpu:
        assert {w.dtypes[n] for n in ("q", "k", "v", "o")} == {"float16"}
    assert {77, 300} <= {w.axes["kv_len"] for w in cpu}
    assert "enable_gqa=True" in decode_task.baseline


def test_gqa_sol_models(fwd_task, decode_task):
    for w in fwd_task.workloads:
        b, hq, hkv, s, dim = (w.axes[a] for a in ("batch", "q_heads", "kv_heads", "seq", "dim"))
        flops, nbytes = sol.work(fwd_task.definition, w)
        assert flops == 4 * b * hq * s * s * dim / (2 if w.inputs["causal"].value else 1)
        assert nbytes == 2 * (2 * b * hq * s * dim + 2 * b * hkv * s * dim)
    for w in decode_task.workloads:
        b, hq, hkv, n, dim = (w.axes[a] for a in ("batch", "q_heads", "kv_heads", "kv_len", "dim"))
        flops, nbytes = sol.work(decode_task.definition, w)
        assert flops == 4 * b * hq * n * dim
        assert nbytes == 2 * (2 * b * hkv * n * dim + 2 * b * hq * dim)
    h100 = sol.hardware_by_name("H100 SXM")
    w = next(w for w in decode_task.workloads if w.uuid == "gpu_b1_hq32_hkv8_kv32768_d128")
    # Decode is memory-bound: 134 MB of cache at 3.35 TB/s, about 40 us.
    assert sol.sol_time_s(decode_task.definition, w, h100) == pytest.approx(
        2 * (2 * 8 * 32768 * 128 + 2 * 32 * 128) / 3.35e12)


def test_gqa_fwd_reference_is_grouped_attention(fwd_task):
    ref = namespace(fwd_task.definition.reference, "reference")["run"]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 7, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    for causal in (False, True):
        torch.testing.assert_close(ref(q, k, v, causal), _explicit_gqa(q, k, v, causal))


def test_gqa_decode_reference_is_grouped_attention(decode_task):
    ref = namespace(decode_task.definition.reference, "reference")["run"]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64) for _ in range(2))
    want = _explicit_gqa(q.unsqueeze(2), k, v, False).squeeze(2)
    torch.testing.assert_close(ref(q, k, v), want)


@pytest.mark.parametrize("seed", [FWD_SEED, DECODE_SEED], ids=["fwd", "decode"])
def test_gqa_seed_config_is_within_tunables(seed):
    ns = namespace(seed.read_text(), str(seed))
    cfg, tun = ns["CONFIG"], ns["TUNABLES"]
    assert set(cfg) == set(tun)
    assert all(cfg[k] in tun[k] for k in cfg)


# ---- seeds through the real evaluator ----

def test_gqa_fwd_seed_passes_interpreter_evaluation(fwd_task, evaluator):
    rep = evaluator.evaluate(fwd_task, solution_from_kernel_file(fwd_task, FWD_SEED))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in fwd_task.select("cpu")}
    for t in rep.traces:
        assert t.evaluation.correctness.max_absolute_error < 5e-3


def test_gqa_decode_seed_passes_interpreter_evaluation(decode_task, evaluator):
    rep = evaluator.evaluate(decode_task, solution_from_kernel_file(decode_task, DECODE_SEED))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in decode_task.select("cpu")}
    for t in rep.traces:
        assert t.evaluation.correctness.max_absolute_error < 5e-3


# No split (phase 1 writes o), many splits of few blocks (empty trailing splits at kv_len 77), and
# splits chosen per call (interpreter: 4 pretend SMs, so batch 1 and 2 split and larger ones not).
DECODE_SAMPLE = [
    dict(BLOCK_N=16, NUM_SPLITS=1, num_warps=2, num_stages=1),
    dict(BLOCK_N=32, NUM_SPLITS=32, num_warps=8, num_stages=3),
    dict(BLOCK_N=16, NUM_SPLITS=1, num_warps=4, num_stages=2, AUTO_SPLITS=True, CTAS_PER_SM=4),
]


@pytest.mark.parametrize("idx", range(len(DECODE_SAMPLE)))
def test_gqa_decode_tunable_combinations_pass(decode_task, quick_evaluator, tmp_path, idx):
    path = with_config(DECODE_SEED, tmp_path, f"decode_cfg{idx}", DECODE_SAMPLE[idx])
    wls = [w for w in decode_task.select("cpu") if w.axes["kv_len"] in (77, 130)]
    rep = quick_evaluator.evaluate(decode_task, solution_from_kernel_file(decode_task, path), wls)
    assert rep.status == S.PASSED, (DECODE_SAMPLE[idx], rep.message)


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
def test_gqa_fwd_tunable_combination_passes(fwd_task, quick_evaluator, tmp_path, tma):
    cfg = dict(BLOCK_M=16, BLOCK_N=64, num_warps=2, num_stages=1, EXP2=True, CAUSAL_SKIP=True, TMA=tma, FMA_SCALE=tma)
    path = with_config(FWD_SEED, tmp_path, "fwd_cfg", cfg)
    wls = [w for w in fwd_task.select("cpu") if w.axes["q_heads"] != w.axes["kv_heads"]]
    rep = quick_evaluator.evaluate(fwd_task, solution_from_kernel_file(fwd_task, path), wls)
    assert rep.status == S.PASSED, rep.message


# ---- wrong variants ----

def test_gqa_fwd_wrong_kv_head_is_incorrect_numerical(fwd_task, quick_evaluator, tmp_path):
    # h % kv_heads instead of h // group: heads 1 and 2 of 4 read the other KV head.
    path = variant(FWD_SEED, tmp_path, "fwd_wrong_kv", "hk = h // group", "hk = h % (heads // group)")
    wls = [w for w in fwd_task.select("cpu") if w.uuid == "cpu_b1_hq4_hkv2_s77_d64_causal_float16"]
    assert len(wls) == 1
    rep = quick_evaluator.evaluate(fwd_task, solution_from_kernel_file(fwd_task, path), wls)
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


DECODE_WRONG = {
    # The group's query heads interleaved across KV heads (h % kv_heads mapping).
    "wrong_kv_head": ("heads = hk * group + offs_g", "heads = offs_g * kv_heads + hk"),
    # Splits summed without rescaling to the common max.
    "combine_no_rescale": ("w = tl.exp(m - m_all)", "w = tl.where(m > float('-inf'), 1.0, 0.0)"),
}


@pytest.mark.parametrize("name", sorted(DECODE_WRONG))
def test_gqa_decode_wrong_variant_is_incorrect_numerical(decode_task, quick_evaluator, tmp_path, name):
    path = variant(DECODE_SEED, tmp_path, name, *DECODE_WRONG[name])
    wls = [w for w in decode_task.select("cpu") if w.uuid == "cpu_b2_hq8_hkv2_kv77_d64_float16"]
    assert len(wls) == 1
    if name == "combine_no_rescale":  # 77 keys over splits of 16: five non-empty splits
        path = with_config(path, tmp_path, name + "_split", dict(BLOCK_N=16, NUM_SPLITS=8, num_warps=4, num_stages=2, AUTO_SPLITS=False, CTAS_PER_SM=1))
    rep = quick_evaluator.evaluate(decode_task, solution_from_kernel_file(decode_task, path), wls)
    assert rep.status == S.INCORRECT_NUMERICAL, (name, rep.status, rep.message)


def test_gqa_decode_library_call_is_reward_hack(decode_task, quick_evaluator, tmp_path):
    path = variant(DECODE_SEED, tmp_path, "calls_sdpa", "    batch, q_heads, dim = q.shape\n",
                    "    o.copy_(torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v,"
                    " enable_gqa=True).squeeze(2))\n    return\n")
    rep = quick_evaluator.evaluate(decode_task, solution_from_kernel_file(decode_task, path))
    assert rep.status == S.REWARD_HACK and rep.hack_check == "static:library-call", rep.message


# ---- GPU run configs ----

@pytest.mark.parametrize("name,task_name", [("gpu_attention_gqa.yaml", "attention_gqa_fwd"),
                                            ("gpu_gqa_decode.yaml", "attention_gqa_decode")])
def test_gqa_gpu_configs_name_existing_gpu_workloads_and_seeds(name, task_name):
    from avo.config import load_config
    from avo.tasks import default_seed_path
    cfg = load_config(REPO_ROOT / "configs" / name)
    assert cfg.tasks == [task_name] and cfg.device == "cuda"
    assert (REPO_ROOT / cfg.seed_path(task_name, task_name)).resolve() == default_seed_path(task_name).resolve()
    assert default_seed_path(task_name).exists()
    gpu = {w.uuid for w in load_task(task_name).select("gpu")}
    assert 2 <= len(cfg.workloads[task_name]) <= 4 and set(cfg.workloads[task_name]) <= gpu


def test_gluon_gpu_config_seeds_the_gluon_kernel_which_the_guard_accepts():
    """configs/gpu_attention_gluon.yaml evolves kernels/attention/gqa_fwd_gluon_ws.py; both Gluon files
    pass the evaluator's static guard (a Gluon import is a triton import) and their CONFIG/TUNABLES parse."""
    from avo.config import load_config
    from avo.harness.guard import scan_solution
    from avo.operators.knobs import parse_knobs
    cfg = load_config(REPO_ROOT / "configs" / "gpu_attention_gluon.yaml")
    seed = REPO_ROOT / cfg.seed_path("attention_gqa_fwd", "attention_gqa_fwd")
    assert seed.name == "gqa_fwd_gluon_ws.py" and cfg.device == "cuda"
    assert cfg.tasks == ["attention_gqa_fwd", "attention_mha_fwd"]
    for name in cfg.tasks:  # one file seeds both (its run() takes Hkv = Hq) on d128 shapes it supports
        assert REPO_ROOT / cfg.seed_path(name, name) == seed
        gpu = {w.uuid: w for w in load_task(name).select("gpu")}
        assert set(cfg.workloads[name]) <= set(gpu) and all(gpu[u].axes["dim"] == 128 for u in cfg.workloads[name])
    task = load_task("attention_gqa_fwd")
    for path in (seed, seed.with_name("gqa_fwd_gluon.py")):
        assert scan_solution({"kernel.py": path.read_text()}, task.definition.forbidden_calls) is None
        k = parse_knobs(path.read_text())
        assert set(k.config) == set(k.tunables) and all(k.config[n] in k.tunables[n] for n in k.config)


# ---- scripts/bench_attention.py on CPU: the plan and the doc section (the timing needs a GPU) ----

BENCH = REPO_ROOT / "scripts" / "bench_attention.py"


def test_bench_attention_dry_run_lists_every_gpu_workload_and_candidate(tmp_path):
    import subprocess
    import sys
    evolved = tmp_path / "evolved.py"
    evolved.write_text(DECODE_SEED.read_text())
    r = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--kernel", f"attention_gqa_decode={evolved}"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("attention_mha_fwd", "attention_gqa_fwd", "attention_gqa_decode"):
        for w in load_task(name).select("gpu"):
            line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(w.uuid + ":"))
            want = "seed, sdpa-cudnn, sdpa-flash, sdpa-efficient"
            assert line.endswith(("evolved, " if name == "attention_gqa_decode" else "") + want), line
    bad = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--kernel", "attention_gqa_fwd"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "bench_attention: --kernel 'attention_gqa_fwd': expected TASK=PATH"
    broken = tmp_path / "broken.py"
    broken.write_text("x = (\n")
    r = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--kernel", f"attention_gqa_fwd={broken}"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 2 and "failed to import" in r.stderr and "Traceback" not in r.stderr
    # a peer file (here the cuDNN one) is one more candidate, named after its file, on its task only
    peer = REPO_ROOT / "kernels" / "peers" / "attention_sdpa_cudnn.py"
    r = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--tasks", "attention_mha_fwd,attention_gqa_fwd",
                        "--peer", f"attention_mha_fwd={peer}"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    plan = [ln.strip() for ln in r.stdout.splitlines() if ln.startswith("  ")]
    n_mha = len(load_task("attention_mha_fwd").select("gpu"))
    assert sum(ln.endswith("sdpa-efficient, peer-sdpa_cudnn") for ln in plan) == n_mha
    assert sum(ln.endswith("sdpa-efficient") for ln in plan) == len(plan) - n_mha
    r = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--peer", f"attention_mha_fwd={tmp_path / 'nope.py'}"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 2 and "no such kernel file" in r.stderr


def test_bench_attention_doc_section_is_created_then_replaced_in_place(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_attention_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    update = mod.update_doc_section
    doc = tmp_path / "docs" / "benchmarks.md"
    update(doc, "first table")
    assert doc.read_text().count("<!-- bench_attention -->") == 1 and "first table" in doc.read_text()
    doc.write_text("# Benchmarks\n\nlead's intro\n\n" + doc.read_text().split("\n\n", 2)[2] + "\n## other section\nkept\n")
    update(doc, "second table")
    text = doc.read_text()
    assert "first table" not in text and "second table" in text
    assert "lead's intro" in text and text.rstrip().endswith("## other section\nkept")
    assert text.count("<!-- /bench_attention -->") == 1
    # a run on a subset of the tasks writes its own section and leaves the full table alone
    update(doc, "prefill only", ["attention_mha_fwd", "attention_gqa_fwd"])
    text = doc.read_text()
    assert "second table" in text and "prefill only" in text
    assert text.count("<!-- bench_attention attention_gqa_fwd,attention_mha_fwd -->") == 1
    update(doc, "full again", list(mod.BENCH_TASKS))
    text = doc.read_text()
    assert "second table" not in text and "full again" in text and "prefill only" in text
