"""megakernel_decode_layer: the task loads with Llama-3-8B GPU workloads and tiny CPU layers, its SOL
model counts every weight and the used cache once, the reference is the layer, and the seed (and a
TUNABLES sample) passes the real quick_evaluator in the Triton interpreter while a wrong cache length,
a missing residual or a flipped RoPE come back INCORRECT_NUMERICAL and a torch matmul REWARD_HACK.
Also: grammar_bitmask's persistent-grid and skip-all-ones TUNABLES stay correct."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avo.tasks import default_seed_path
from avo.harness import sol
from avo.schema import EvaluationStatus
from avo.tasks import load_task, solution_from_kernel_file
from kernel_variants import namespace, variant, with_config

S = EvaluationStatus
SEED_PATH = default_seed_path("megakernel_decode_layer")
BITMASK_SEED = default_seed_path("grammar_bitmask")
LLAMA3_8B = dict(hidden=4096, q_dim=4096, kv_heads=8, kv_dim=1024, head_dim=128, mlp=14336)


@pytest.fixture(scope="module")
def task():
    return load_task("megakernel_decode_layer")


def test_megakernel_task_loads_with_llama_gpu_and_tiny_cpu_workloads(task):
    gpu, cpu = task.select("gpu"), task.select("cpu")
    assert len(gpu) >= 5 and all({k: w.axes[k] for k in LLAMA3_8B} == LLAMA3_8B for w in gpu)
    assert {w.axes["batch"] for w in gpu} >= {1, 4, 8}
    assert len({w.inputs["kv_len"].value for w in gpu}) >= 4
    assert all(w.inputs["kv_len"].value <= w.axes["max_kv"] for w in task.workloads)
    assert all(w.axes["hidden"] <= 64 and w.dtypes["x"] in ("float16", "float32") for w in cpu)
    assert 0 in {w.inputs["kv_len"].value for w in cpu}  # only the new token
    assert any((w.axes["q_dim"] // w.axes["head_dim"]) // w.axes["kv_heads"] == 3 for w in cpu)  # group 3
    assert all(w.axes["q_dim"] % w.axes["kv_dim"] == 0 and w.axes["head_dim"] % 2 == 0 for w in task.workloads)


def test_megakernel_sol_counts_weights_cache_and_flops(task):
    w = next(w for w in task.workloads if w.uuid == "gpu_b8_kv8191_bfloat16")
    params = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096
    flops, nbytes = sol.work(task.definition, w)
    assert flops == 2 * 8 * (params - 2 * 4096) + 4 * 8 * 4096 * 8192
    cache = 2 * 8 * 8 * 8191 * 128 * 2
    act = 8 * 4096 * 2 * 2 + 2 * 8 * 8 * 128 * 2 + 2 * 128 * 4
    assert nbytes == params * 2 + cache + act
    # ~0.7 GB at 3.35 TB/s: memory-bound, about 210 us on an H100 SXM.
    assert sol.sol_time_s(task.definition, w, sol.hardware_by_name("H100 SXM")) == pytest.approx(nbytes / 3.35e12)


def test_megakernel_reference_matches_explicit_per_head_loop(task):
    ns = namespace(task.definition.reference)
    axes = dict(batch=2, hidden=12, q_dim=12, kv_heads=1, kv_dim=4, head_dim=4, mlp=10, max_kv=6)
    names = ["x", "attn_norm_w", "wq", "wk", "wv", "wo", "mlp_norm_w", "w_gate", "w_up", "w_down",
             "k_cache", "v_cache", "rope_cos", "rope_sin"]
    a = ns["make_inputs"](axes, {n: torch.float64 for n in names}, torch.Generator().manual_seed(0), "cpu")
    kv_len = 3
    out, k_new, v_new = ns["run"](*(a[n] for n in names), kv_len)
    c, s_ = a["rope_cos"], a["rope_sin"]
    for b in range(2):
        x = a["x"][b]
        h = x / torch.sqrt((x * x).mean() + 1e-5) * a["attn_norm_w"]
        rope = lambda t: torch.stack([t[i] * c[i] + (-t[i + 2] if i < 2 else t[i - 2]) * s_[i] for i in range(4)])
        k = rope(a["wk"] @ h)
        v = a["wv"] @ h
        torch.testing.assert_close(k_new[b, 0], k)
        keys = [a["k_cache"][b, 0, j] for j in range(kv_len)] + [k]
        vals = [a["v_cache"][b, 0, j] for j in range(kv_len)] + [v]
        heads = []
        for hh in range(3):  # three q heads share the one kv head
            q = rope((a["wq"] @ h)[4 * hh:4 * hh + 4])
            wts = torch.tensor([float(q @ kk) / 2.0 for kk in keys], dtype=torch.float64).softmax(0)
            heads.append(sum(wts[j] * vals[j] for j in range(kv_len + 1)))
        h2 = x + a["wo"] @ torch.cat(heads)
        m = h2 / torch.sqrt((h2 * h2).mean() + 1e-5) * a["mlp_norm_w"]
        g = a["w_gate"] @ m
        torch.testing.assert_close(out[b], h2 + a["w_down"] @ (g / (1 + torch.exp(-g)) * (a["w_up"] @ m)))


def test_megakernel_seed_config_is_within_tunables():
    ns = namespace(SEED_PATH.read_text(), str(SEED_PATH))
    assert set(ns["CONFIG"]) == set(ns["TUNABLES"])
    assert all(ns["CONFIG"][k] in ns["TUNABLES"][k] for k in ns["CONFIG"])


def test_megakernel_seed_passes_interpreter_evaluation(task, quick_evaluator):
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, SEED_PATH))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in task.select("cpu")}
    for t in rep.traces:  # fp32 scratch: well inside the bf16-sized tolerance
        assert t.evaluation.correctness.extra["matched_ratio"] == 1.0
        assert t.evaluation.correctness.max_absolute_error < 5e-3


SPLIT_K_POINT = dict(GEMV_BLOCK_N=16, GEMV_BLOCK_K=32, GEMV_WARPS=4, ATTN_BLOCK_KV=16, ATTN_WARPS=4, NORM_BLOCK=256,
                     num_stages=2, GEMV_DOT=True, FUSE_NORM=True, FUSE_QKV=True, ATTN_SPLITS=4, ATTN_DOT=True, SPLIT_K=2,
                     ATTN_LAST_COMBINES=True)
MEGAKERNEL_SAMPLE = [  # the fused knobs with and without each other, odd tiles, more splits than KV rows
    dict(GEMV_BLOCK_N=8, GEMV_BLOCK_K=32, GEMV_WARPS=2, ATTN_BLOCK_KV=8, ATTN_WARPS=1, NORM_BLOCK=256, num_stages=2),
    dict(GEMV_BLOCK_N=16, GEMV_BLOCK_K=32, GEMV_WARPS=4, ATTN_BLOCK_KV=8, ATTN_WARPS=2, NORM_BLOCK=256, num_stages=3,
         GEMV_DOT=True, FUSE_NORM=True, FUSE_QKV=True, ATTN_SPLITS=4, ATTN_DOT=True, GEMV_TMA=True, ATTN_LAST_COMBINES=True),
    dict(GEMV_BLOCK_N=32, GEMV_BLOCK_K=64, GEMV_WARPS=4, ATTN_BLOCK_KV=16, ATTN_WARPS=4, NORM_BLOCK=512, num_stages=1,
         GEMV_DOT=False, FUSE_NORM=True, FUSE_QKV=True, ATTN_SPLITS=32, ATTN_LAST_COMBINES=True),  # empty splits
    dict(GEMV_BLOCK_N=4, GEMV_BLOCK_K=64, GEMV_WARPS=1, ATTN_BLOCK_KV=32, ATTN_WARPS=4, NORM_BLOCK=1024, num_stages=2,
         GEMV_DOT=True, FUSE_NORM=False, FUSE_QKV=True, ATTN_SPLITS=2, ATTN_DOT=True, ACT_NARROW=True,
         FUSE_NORM_UPTO=2),  # batches 1 and 2 fuse the norms, batch 3 launches them
    # split-K (K 48..96 in 32-wide chunks: 2-3 splits, fewer than asked) with and without the fused path
    dict(SPLIT_K_POINT, SPLIT_K=4, MLP_BLOCK_N=32, PDL=True),  # PDL is GPU-only: here the guard sees tl.extra.cuda
    dict(GEMV_BLOCK_N=8, GEMV_BLOCK_K=32, GEMV_WARPS=2, ATTN_BLOCK_KV=8, ATTN_WARPS=1, NORM_BLOCK=256, num_stages=1,
         GEMV_DOT=False, FUSE_NORM=False, FUSE_QKV=False, SPLIT_K=2, MLP_BLOCK_N=8, SPLIT_K_QO=1),  # down alone
    dict(SPLIT_K_POINT, SPLIT_K=1, SPLIT_K_QO=2, PREFETCH=2, ACT_NARROW=True, ATTN_SPLITS=1, GEMV_TMA=True),  # q|k|v and O alone
    # FUSE_MLP: down inside the gate/up GEMV (mlp 80 and hidden 48 cut the last row block and j step short)
    dict(GEMV_BLOCK_N=8, GEMV_BLOCK_K=32, GEMV_WARPS=2, ATTN_BLOCK_KV=8, ATTN_WARPS=1, NORM_BLOCK=256, num_stages=2,
         GEMV_DOT=False, FUSE_MLP=8, DOWN_BLOCK_J=64),  # FMA tiles, every batch fused
    dict(SPLIT_K_POINT, MLP_BLOCK_N=32, FUSE_MLP=8, DOWN_BLOCK_J=128, PDL=True, PREFETCH=1,
         RELAXED_ADDS=True, PREFETCH_O=8),  # tl.dot, next to split-K q|k|v, O (relaxed adds)
    dict(SPLIT_K_POINT, SPLIT_K=1, FUSE_MLP=2, DOWN_BLOCK_J=256, ACT_NARROW=True, GEMV_TMA=True,
         FUSE_NORM=False),  # batches 1 and 2 fused, batch 3 launches the down GEMV
]


@pytest.mark.parametrize("i", range(len(MEGAKERNEL_SAMPLE)))
def test_megakernel_tunable_combination_passes(task, quick_evaluator, tmp_path, i):
    path = with_config(SEED_PATH, tmp_path, f"mk{i}", MEGAKERNEL_SAMPLE[i])
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message
    for t in rep.traces:  # fp16 dot operands on the fp16 workload; fp32 elsewhere
        assert t.evaluation.correctness.extra["matched_ratio"] == 1.0


WRONG = {
    "kv_len_off_by_one": ("nmask = offs_n < end", "nmask = offs_n < end - 1"),
    "no_down_residual": ("w_down, out, mode=1, res=h,", "w_down, out, mode=0, res=h,"),
    "rope_sign_flipped": ("sign = tl.where(offs_d < half, -1.0, 1.0)", "sign = tl.where(offs_d < half, 1.0, -1.0)"),
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_megakernel_wrong_variant_is_incorrect_numerical(task, quick_evaluator, tmp_path, name):
    path = variant(SEED_PATH, tmp_path, name, *WRONG[name])
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (name, rep.status, rep.message)


FUSED_POINT = dict(SPLIT_K_POINT, FUSE_MLP=8)  # every batch fused
POINT_WRONG = {  # name -> (the config that turns the broken code on, the edit)
    # split-K and the attention's last-split combine
    "residual_in_every_split": (SPLIT_K_POINT, ("if tl.program_id(1) == 0:", "if tl.program_id(1) >= 0:")),
    "first_split_casts": (SPLIT_K_POINT, ("== tl.num_programs(1) - 1:", "== 0:")),
    "attention_combines_before_the_last_split": (SPLIT_K_POINT, ("== SPLITS - 1:", "== SPLITS - 2:")),
    # FUSE_MLP's down projection inside the gate/up GEMV
    "fused_residual_in_every_program": (FUSED_POINT, ("if pid_n == 0:", "if pid_n >= 0:")),
    "fused_first_program_casts": (FUSED_POINT, ("== tl.num_programs(0) - 1:", "== 0:")),
    "fused_down_skips_last_rows": (FUSED_POINT, ("j_ok = offs_j < NB", "j_ok = offs_j < NB - 1")),
}


@pytest.mark.parametrize("name", sorted(POINT_WRONG))
def test_megakernel_wrong_variant_at_its_point_is_incorrect_numerical(task, quick_evaluator, tmp_path, name):
    config, edit = POINT_WRONG[name]
    path = with_config(variant(SEED_PATH, tmp_path, name + "_src", *edit), tmp_path, name, config)
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (name, rep.status, rep.message)


def test_megakernel_torch_matmul_is_reward_hack(task, quick_evaluator, tmp_path):
    path = variant(SEED_PATH, tmp_path, "torch_mm", "    _gemv(attn, wo, h, mode=1, res=x, acc=h if split_qo > 1 else None, split_k=split_qo,\n"
                   "          prefetch=_knob(\"PREFETCH_O\") or None)\n", "    h.copy_(attn @ wo.float().T + x)\n")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.REWARD_HACK and "library-call" in (rep.hack_check or ""), (rep.status, rep.message)


# grammar_bitmask: the persistent grid and skip-all-ones knobs (absent from the seed's CONFIG, which
# stays as it is) in combination with RMW and block sizes, on the task's CPU workloads.
BITMASK_SAMPLE = [
    dict(BLOCK_SIZE=128, num_warps=4, num_stages=1, RMW=False, PERSISTENT=True, PROGRAMS_PER_SM=1, SKIP_ONES=False,
         BROADCAST_WORDS=True),
    dict(BLOCK_SIZE=512, num_warps=2, num_stages=2, RMW=True, PERSISTENT=True, PROGRAMS_PER_SM=8, SKIP_ONES=True,
         BROADCAST_WORDS=False),
    dict(BLOCK_SIZE=256, num_warps=4, num_stages=1, RMW=True, PERSISTENT=False, PROGRAMS_PER_SM=2, SKIP_ONES=True,
         BROADCAST_WORDS=True),
    dict(BLOCK_SIZE=1024, num_warps=8, num_stages=3, RMW=False, PERSISTENT=True, PROGRAMS_PER_SM=4, SKIP_ONES=True,
         BROADCAST_WORDS=True),
    # WORD_TILE: the RMW read of mixed words only, and the two-store path; one of them persistent
    dict(BLOCK_SIZE=128, num_warps=4, num_stages=1, RMW=True, PERSISTENT=False, PROGRAMS_PER_SM=1, SKIP_ONES=False,
         BROADCAST_WORDS=False, WORD_TILE=True),
    dict(BLOCK_SIZE=1024, num_warps=8, num_stages=2, RMW=False, PERSISTENT=True, PROGRAMS_PER_SM=2, SKIP_ONES=True,
         BROADCAST_WORDS=False, WORD_TILE=True),
    dict(BLOCK_SIZE=256, num_warps=4, num_stages=1, RMW=True, PERSISTENT=True, PROGRAMS_PER_SM=4, SKIP_ONES=True,
         BROADCAST_WORDS=False, WORD_TILE=True),
    # AUTO_BLOCK: 8192 halves to 1024 on the cpu workloads (4 pretend SMs, a few short rows)
    dict(BLOCK_SIZE=8192, num_warps=8, num_stages=1, RMW=True, PERSISTENT=False, PROGRAMS_PER_SM=1, SKIP_ONES=False,
         BROADCAST_WORDS=False, WORD_TILE=True, AUTO_BLOCK=True),
    # RMW_MIN_ROWS 16: the cpu workloads (3-8 rows) take WORD_TILE's masked-store path although RMW is on
    dict(BLOCK_SIZE=1024, num_warps=4, num_stages=1, RMW=True, WORD_TILE=True, AUTO_BLOCK=True, RMW_MIN_ROWS=16),
]


def test_bitmask_seed_config_is_unchanged_and_new_knobs_default_off():
    ns = namespace(BITMASK_SEED.read_text(), str(BITMASK_SEED))
    assert ns["CONFIG"] == dict(BLOCK_SIZE=256, num_warps=4, num_stages=1, RMW=False)
    assert {k: ns["TUNABLES"][k][0] for k in ("PERSISTENT", "SKIP_ONES", "BROADCAST_WORDS", "WORD_TILE", "AUTO_BLOCK",
                                              "RMW_MIN_ROWS")} \
        == {"PERSISTENT": False, "SKIP_ONES": False, "BROADCAST_WORDS": False, "WORD_TILE": False, "AUTO_BLOCK": False,
            "RMW_MIN_ROWS": 0}
    for knob in ("RMW", "PERSISTENT", "PROGRAMS_PER_SM", "SKIP_ONES", "BROADCAST_WORDS", "WORD_TILE", "AUTO_BLOCK"):
        values = ns["TUNABLES"][knob]
        assert {c.get(knob, values[0]) for c in BITMASK_SAMPLE} | {ns["CONFIG"].get(knob, values[0])} == set(values), knob


@pytest.mark.parametrize("idx", range(len(BITMASK_SAMPLE)))
def test_bitmask_tunable_combination_passes(quick_evaluator, tmp_path, idx):
    bt = load_task("grammar_bitmask")
    path = with_config(BITMASK_SEED, tmp_path, f"bm{idx}", BITMASK_SAMPLE[idx])
    rep = quick_evaluator.evaluate(bt, solution_from_kernel_file(bt, path))
    assert rep.status == S.PASSED, (BITMASK_SAMPLE[idx], rep.message)


def test_bitmask_skip_ones_with_inverted_test_is_incorrect(quick_evaluator, tmp_path):
    bt = load_task("grammar_bitmask")
    path = with_config(BITMASK_SEED, tmp_path, "bm_cfg", BITMASK_SAMPLE[1])
    path = variant(path, tmp_path, "bm_wrong", "tl.sum((words != -1).to(tl.int32), 0) > 0",
                  "tl.sum((words != -1).to(tl.int32), 0) == 0")
    rep = quick_evaluator.evaluate(bt, solution_from_kernel_file(bt, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


# WORD_TILE's per-word predicates, each broken the way a plausible edit would break it.
WORD_TILE_WRONG = {
    "rmw_reads_nothing": ("vals = tl.load(ptrs, mask=mixed)", "vals = tl.load(ptrs, mask=mixed & blocked, other=0.0)"),
    "zero_words_skipped": ("mask=touched & (words == 0)[:, None])", "mask=touched & (words == 1)[:, None])"),
    "mixed_word_whole": ("tl.store(ptrs, inf, mask=mixed & blocked)", "tl.store(ptrs, inf, mask=mixed)"),
}


def test_bitmask_auto_block_sizes_the_grid_per_call():
    # The block each call launches with: halved (not below 1024) until rows x blocks cover the SMs.
    ns = namespace(BITMASK_SEED.read_text(), str(BITMASK_SEED))
    seen = []
    class Launcher:  # stands in for the Triton launch: records BLOCK_SIZE, runs nothing
        def __getitem__(self, grid):
            return lambda *args, **kw: seen.append((grid[0], kw["BLOCK_SIZE"], kw["RMW"]))
    ns["_bitmask_kernel"] = Launcher()
    ns["_num_sms"] = lambda device: 132
    ns["CONFIG"].update(BLOCK_SIZE=8192, AUTO_BLOCK=True, RMW=True, RMW_MIN_ROWS=32)
    for rows in (1, 4, 64):
        logits = torch.empty(rows, 151936)
        ns["run"](logits, torch.empty(rows, 4748, dtype=torch.int32), torch.arange(rows, dtype=torch.int32))
    # 1 row: 149 blocks; 4 rows: 4 x 38; 64 rows: 64 x 19; RMW from 32 rows on (RMW_MIN_ROWS)
    assert seen == [(149, 1024, False), (152, 4096, False), (1216, 8192, True)]


@pytest.mark.parametrize("name", sorted(WORD_TILE_WRONG))
def test_bitmask_word_tile_wrong_predicate_is_incorrect(quick_evaluator, tmp_path, name):
    bt = load_task("grammar_bitmask")
    cfg = BITMASK_SAMPLE[4] if name == "rmw_reads_nothing" else BITMASK_SAMPLE[5]
    path = variant(with_config(BITMASK_SEED, tmp_path, "bm_cfg", cfg), tmp_path, "bm_" + name, *WORD_TILE_WRONG[name])
    rep = quick_evaluator.evaluate(bt, solution_from_kernel_file(bt, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (name, rep.status, rep.message)


def test_bitmask_persistent_grid_that_skips_blocks_is_incorrect(quick_evaluator, tmp_path):
    bt = load_task("grammar_bitmask")
    path = with_config(BITMASK_SEED, tmp_path, "bm_cfg", BITMASK_SAMPLE[0])
    path = variant(path, tmp_path, "bm_stride", "range(tl.program_id(0), n_tiles, tl.num_programs(0))",
                  "range(tl.program_id(0), n_tiles, tl.num_programs(0) + 1)")
    rep = quick_evaluator.evaluate(bt, solution_from_kernel_file(bt, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


def test_gpu_megakernel_config_names_existing_seed_and_workloads(task):
    from avo.config import load_config
    from avo.tasks import REPO_ROOT
    cfg = load_config(REPO_ROOT / "configs" / "gpu_megakernel.yaml")
    assert cfg.tasks == ["megakernel_decode_layer"]
    assert (cfg.seed_path(task.name, task.name) or SEED_PATH).exists()
    assert set(cfg.workloads[task.name]) <= {w.uuid for w in task.select("gpu")}


# ---- every kernel of this family also compiles for sm_90 (frontend + ptxas, no GPU needed) ----
# The interpreter accepts code that Triton's compiler refuses (Python `or` on tensors, some
# control flow); compiling for a GPU target catches it on a CPU machine. A subprocess
# (tests/compile_sm90.py), because TRITON_INTERPRET must be unset before triton is imported.



def test_memory_bound_kernels_compile_for_sm90(tmp_path):
    import os
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    script = Path(__file__).with_name("compile_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAIL" not in r.stdout and r.stdout.count("OK  ") >= 48  # other families' kernels may join the list
    assert all(f"OK   mk gemv MODE={m} NORM=1 DOT=1 SPLIT=1" in r.stdout for m in (0, 1))  # DOT=1 ones with PDL
