"""Layout tasks (layout_bshd_to_bhsd, layout_transpose2d, layout_bshd_to_bhds): they load with the
anchor shapes, their SOL model is one read + one write, the references are the permutations, the
seeds (and a sample of their TUNABLES) pass the real quick_evaluator in the Triton interpreter, wrong
index arithmetic comes back INCORRECT_NUMERICAL and a torch permute comes back REWARD_HACK."""
from __future__ import annotations


import pytest
import torch

from avo.tasks import default_seed_path
from avo.harness import sol
from avo.schema import EvaluationStatus
from avo.tasks import load_task, solution_from_kernel_file
from kernel_variants import namespace, variant, with_config

S = EvaluationStatus
# task -> (permutation, GPU anchor shape in bf16)
LAYOUT_TASKS = {
    "layout_bshd_to_bhsd": ((0, 2, 1, 3), (8, 4096, 32, 128)),
    "layout_transpose2d": ((1, 0), (16384, 16384)),
    "layout_bshd_to_bhds": ((0, 2, 3, 1), (64, 1024, 8, 128)),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_TASKS))
def test_layout_task_loads_with_anchor_and_awkward_cpu_workloads(name):
    task = load_task(name)
    perm, anchor = LAYOUT_TASKS[name]
    d = task.definition
    assert list(d.inputs) == ["x"] and list(d.outputs) == ["y"]
    gpu, cpu = task.select("gpu"), task.select("cpu")
    assert any(tuple(w.axes[a] for a in d.inputs["x"].shape) == anchor and not w.dtypes for w in gpu)
    assert {w.dtypes.get("x", "bfloat16") for w in gpu} == {"bfloat16", "float16", "float32"}
    assert len(cpu) >= 3 and any(any(v % 8 for v in w.axes.values()) for w in cpu)
    for w in task.workloads:
        assert w.dtypes.get("x") == w.dtypes.get("y")
        numel = 1
        for v in w.axes.values():
            numel *= v
        flops, nbytes = sol.work(d, w)
        isz = {"float32": 4}.get(w.dtypes.get("x", "bfloat16"), 2)
        assert flops == 0 and nbytes == 2 * numel * isz
    assert default_seed_path(name).exists()


@pytest.mark.parametrize("name", sorted(LAYOUT_TASKS))
def test_layout_reference_is_the_permutation(name):
    task = load_task(name)
    perm, _ = LAYOUT_TASKS[name]
    ns = namespace(task.definition.reference, "reference")
    x = torch.arange(2 * 3 * 5 * 7).reshape((2, 3, 5, 7)[:len(perm)] if len(perm) == 4 else (6, 35))
    y = ns["run"](x)
    assert y.is_contiguous()
    for idx in [(1, 2, 4, 6), (0, 1, 3, 5)] if len(perm) == 4 else [(5, 34), (2, 7)]:
        assert y[tuple(idx[p] for p in perm)] == x[idx]


@pytest.mark.parametrize("name", sorted(LAYOUT_TASKS))
def test_layout_seed_config_is_within_tunables(name):
    ns = namespace(default_seed_path(name).read_text(), str(default_seed_path(name)))
    cfg, tun = ns["CONFIG"], ns["TUNABLES"]
    assert set(cfg) == set(tun) and all(cfg[k] in tun[k] for k in cfg)


@pytest.mark.parametrize("name", sorted(LAYOUT_TASKS))
def test_layout_seed_passes_interpreter_evaluation(name, quick_evaluator):
    task = load_task(name)
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, default_seed_path(name)))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in task.select("cpu")}
    assert all(t.evaluation.correctness.max_absolute_error == 0.0 for t in rep.traces)


# Small tiles (several tiles per awkward dimension, ragged edges) and the non-default branches.
TUNABLE_SAMPLE = {
    "layout_transpose2d": dict(BLOCK_R=16, BLOCK_C=32, GROUP=4, TRANS=False, STREAM=True, num_warps=2, num_stages=2),
    "layout_bshd_to_bhds": dict(BLOCK_R=32, BLOCK_C=16, GROUP=1, TRANS=True, STREAM=True, num_warps=8, num_stages=3),
    "layout_bshd_to_bhsd": dict(BLOCK_S=4, BLOCK_D=16, H_FAST=False, STREAM=True, num_warps=1, num_stages=2),
}


# TMA: boxes through host tensor descriptors where TMA's 16-byte rules hold (three of the four cpu
# workloads; D=130 fp32 takes the pointer path), each tile size with ragged seq tails.
BHSD_TMA_SAMPLE = [dict(BLOCK_S=4, BLOCK_D=16, H_FAST=False, num_warps=1, TMA=True),
                   dict(BLOCK_S=128, BLOCK_D=128, H_FAST=True, num_warps=4, TMA=True)]


@pytest.mark.parametrize("idx", range(len(BHSD_TMA_SAMPLE)))
def test_bhsd_tma_knob_passes(idx, quick_evaluator, tmp_path):
    task = load_task("layout_bshd_to_bhsd")
    cfg = dict(TUNABLE_SAMPLE["layout_bshd_to_bhsd"], STREAM=False, **BHSD_TMA_SAMPLE[idx])
    path = with_config(default_seed_path(task.name), tmp_path, f"tma{idx}", cfg)
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message


# The transpose seeds' TMA path needs 16-byte rows on both sides, which no cpu workload has: run() on
# such shapes in the interpreter (a subprocess: TRITON_INTERPRET must be set before triton loads).
TRANSPOSE_TMA_CHECK = """
import importlib.util, itertools, torch
for path, kind in [("kernels/layout/transpose2d_seed.py", "2d"), ("kernels/layout/bshd_to_bhds_seed.py", "bhds")]:
    spec = importlib.util.spec_from_file_location("m" + kind, path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    shapes = [((40, 72), torch.float32), ((24, 136), torch.float16)] if kind == "2d" else \
             [((2, 40, 3, 24), torch.float32), ((1, 24, 5, 8), torch.float16)]
    for (shp, dt), br, bc, g in itertools.product(shapes, [16, 32], [16, 64], [1, 4]):
        m.CONFIG = dict(BLOCK_R=br, BLOCK_C=bc, GROUP=g, TRANS=True, STREAM=False, num_warps=4, num_stages=1, TMA=True)
        x = torch.randn(*shp).to(dt)
        y, want = ((torch.empty(shp[1], shp[0], dtype=dt), x.t()) if kind == "2d" else
                   (torch.empty(shp[0], shp[2], shp[3], shp[1], dtype=dt), x.permute(0, 2, 3, 1)))
        r, c = (shp if kind == "2d" else (shp[1], shp[2] * shp[3]))
        assert m._tma_fits(x, y, r, c), (kind, shp)
        m.run(x, y)
        assert torch.equal(y, want), (kind, shp, br, bc, g)
print("TMA OK")
"""


def test_transpose_seeds_tma_path_copies_exactly():
    import os
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    r = subprocess.run([sys.executable, "-c", TRANSPOSE_TMA_CHECK], cwd=REPO_ROOT, capture_output=True, text=True,
                       env=dict(os.environ, TRITON_INTERPRET="1"), timeout=300)
    assert r.returncode == 0 and "TMA OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    bad = TRANSPOSE_TMA_CHECK.replace("m.run(x, y)", "m.run(x, y); y.zero_()")
    r = subprocess.run([sys.executable, "-c", bad], cwd=REPO_ROOT, capture_output=True, text=True,
                       env=dict(os.environ, TRITON_INTERPRET="1"), timeout=300)
    assert r.returncode != 0 and "AssertionError" in r.stderr  # the check fails when the output is wrong


def test_bhsd_tma_wrong_store_row_is_incorrect(quick_evaluator, tmp_path):
    task = load_task("layout_bshd_to_bhsd")
    cfg = dict(TUNABLE_SAMPLE["layout_bshd_to_bhsd"], STREAM=False, **BHSD_TMA_SAMPLE[1])
    path = variant(with_config(default_seed_path(task.name), tmp_path, "tma", cfg), tmp_path, "tma_wrong",
                   "y_desc.store([b * H + h, s_tile", "y_desc.store([b * H + (h + 1) % H, s_tile")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


@pytest.mark.parametrize("name", sorted(TUNABLE_SAMPLE))
def test_layout_tunable_combination_passes(name, quick_evaluator, tmp_path):
    task = load_task(name)
    path = with_config(default_seed_path(name), tmp_path, name, TUNABLE_SAMPLE[name])
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message


# STREAM (evict_first loads, .cs stores) changes cache hints only: each seed (kv_paged too) with it
# on still copies exactly on every cpu workload, and its sm_90 PTX carries the hints.
LAYOUT_SEEDS = sorted([*LAYOUT_TASKS, "layout_kv_paged"])


@pytest.mark.parametrize("name", LAYOUT_SEEDS)
def test_layout_stream_knob_passes_interpreter_evaluation(name, quick_evaluator, tmp_path):
    task, seed = load_task(name), default_seed_path(name)
    ns = namespace(seed.read_text(), str(seed))
    assert ns["TUNABLES"]["STREAM"] == [False, True] and ns["CONFIG"]["STREAM"] is False  # off: the kernel as before
    path = with_config(seed, tmp_path, name + "_stream", dict(ns["CONFIG"], STREAM=True))
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message
    assert {t.workload.uuid for t in rep.traces} == {w.uuid for w in task.select("cpu")}
    assert all(t.evaluation.correctness.max_absolute_error == 0.0 for t in rep.traces)


def test_layout_stream_variants_compile_sm90():
    # Every layout seed's branches with STREAM off and on (tests/compile_sm90.py layout; TRITON_INTERPRET
    # unset, so a subprocess): STREAM=True points must emit ld.global.L1::evict_first and st.global.cs, bhsd's
    # TMA points the bulk tensor copies.
    import os
    import subprocess
    import sys
    from avo.tasks import REPO_ROOT
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "compile_sm90.py"), "layout"], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("OK  ") == 21 and r.stdout.count("STREAM=True") == 8 and "FAIL" not in r.stdout, r.stdout
    assert r.stdout.count("bhsd TMA") == 2 and r.stdout.count("transpose TMA") == 2, r.stdout
    assert r.stdout.count("kv_paged FLAT") == 1, r.stdout


WRONG_VARIANTS = {  # name -> (task, old, new)
    "transpose_tile_not_transposed": ("layout_transpose2d", "tl.trans(tile)", "tile"),
    "bhds_batch_base_dropped": ("layout_bshd_to_bhds", "base = tl.program_id(1).to(tl.int64) * R * C",
                                "base = tl.program_id(1).to(tl.int64) * 0"),
    "bhsd_wrong_head_stride": ("layout_bshd_to_bhsd", "dst = y_ptr + ((b * H + h) * S", "dst = y_ptr + ((b * H + 0) * S"),
}


@pytest.mark.parametrize("case", sorted(WRONG_VARIANTS))
def test_layout_wrong_variant_is_incorrect(case, quick_evaluator, tmp_path):
    name, old, new = WRONG_VARIANTS[case]
    task = load_task(name)
    path = variant(default_seed_path(name), tmp_path, case, old, new)
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (case, rep.status, rep.message)


def test_layout_torch_permute_is_reward_hack(quick_evaluator, tmp_path):
    task = load_task("layout_bshd_to_bhsd")
    path = variant(default_seed_path("layout_bshd_to_bhsd"), tmp_path, "torch_permute",
                    "    batch, seq, heads, dim = x.shape\n", "    y.copy_(x.permute(0, 2, 1, 3))\n    return\n")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.REWARD_HACK and rep.hack_check == "static:library-call", rep.message


def test_gpu_layout_config_names_existing_tasks_seeds_and_workloads():
    from avo.config import load_config
    from avo.tasks import REPO_ROOT
    cfg = load_config(REPO_ROOT / "configs" / "gpu_layout.yaml")
    assert sorted(cfg.tasks) == sorted([*LAYOUT_TASKS, "layout_kv_paged"])
    for name in cfg.tasks:
        assert (cfg.seed_path(name, name) or default_seed_path(name)).exists()
        uuids = {w.uuid for w in load_task(name).select("gpu")}
        assert set(cfg.workloads[name]) <= uuids


# ---- layout_kv_paged: the packing transform (k, v -> paged cache through a block table) ----

def test_kv_paged_task_loads_and_sol_is_read_plus_write():
    task = load_task("layout_kv_paged")
    d = task.definition
    assert d.inplace == ["k_cache", "v_cache"] and not d.outputs
    assert any(not w.dtypes for w in task.select("gpu"))  # the bf16 anchor
    cpu = task.select("cpu")
    assert len(cpu) >= 3 and any(w.axes["seq"] % w.axes["block_size"] for w in cpu)  # ragged last block
    for w in task.workloads:
        a = w.axes
        assert a["blocks_per_seq"] == -(-a["seq"] // a["block_size"]) and a["num_blocks"] >= a["batch"] * a["blocks_per_seq"]
        isz = {"float32": 4}.get(w.dtypes.get("k", "bfloat16"), 2)
        flops, nbytes = sol.work(d, w)
        assert flops == 0
        assert nbytes == 4 * a["batch"] * a["seq"] * a["kv_heads"] * a["head_dim"] * isz + 4 * a["batch"] * a["blocks_per_seq"]


def test_kv_paged_reference_places_tokens_and_keeps_other_blocks():
    task = load_task("layout_kv_paged")
    ns = namespace(task.definition.reference, "reference")
    axes = dict(batch=2, seq=5, kv_heads=1, head_dim=2, block_size=2, blocks_per_seq=3, num_blocks=8)
    a = ns["make_inputs"](axes, {n: torch.float32 for n in ("k", "v", "k_cache", "v_cache")},
                          torch.Generator().manual_seed(0), "cpu")
    before = a["k_cache"].clone()
    ns["run"](**a)
    table = a["block_table"].tolist()
    written = set()
    for b in range(2):
        for s in range(5):
            blk, slot = table[b][s // 2], s % 2
            assert torch.equal(a["k_cache"][blk, slot], a["k"][b, s]) and torch.equal(a["v_cache"][blk, slot], a["v"][b, s])
            written.add((blk, slot))
    for blk in range(8):
        for slot in range(2):
            if (blk, slot) not in written:
                assert torch.equal(a["k_cache"][blk, slot], before[blk, slot])


KV_SEED = default_seed_path("layout_kv_paged")


def test_kv_paged_seed_and_split_kv_variant_pass(quick_evaluator, tmp_path):
    task = load_task("layout_kv_paged")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, KV_SEED))
    assert rep.status == S.PASSED, rep.message
    path = with_config(KV_SEED, tmp_path, "kv_split", dict(BLOCK=256, KV_TOGETHER=False, STREAM=True, num_warps=2, num_stages=2))
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message
    # FLAT: chunks of 256 straddle cache blocks on the cpu shapes (16 * 3 * 24 = 1152 elements a block)
    path = with_config(KV_SEED, tmp_path, "kv_flat", dict(BLOCK=256, KV_TOGETHER=True, STREAM=False, num_warps=2, num_stages=1, FLAT=True))
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.PASSED, rep.message


def test_kv_paged_flat_ignoring_the_block_table_is_incorrect(quick_evaluator, tmp_path):
    task = load_task("layout_kv_paged")
    flat = with_config(KV_SEED, tmp_path, "kv_flat", dict(BLOCK=256, KV_TOGETHER=True, STREAM=False, num_warps=2, num_stages=1, FLAT=True))
    path = variant(flat, tmp_path, "flat_no_table", "    dst = phys * run_len + (offs - j * run_len)",
                   "    dst = (b * blocks_per_seq + j) * run_len + (offs - j * run_len)")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


def test_kv_paged_ignoring_the_block_table_is_incorrect(quick_evaluator, tmp_path):
    task = load_task("layout_kv_paged")
    path = variant(KV_SEED, tmp_path, "no_table", "phys = tl.load(table_ptr + b * blocks_per_seq + j).to(tl.int64)",
                    "phys = b * blocks_per_seq + j")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.INCORRECT_NUMERICAL, (rep.status, rep.message)


def test_kv_paged_torch_index_put_is_reward_hack(quick_evaluator, tmp_path):
    task = load_task("layout_kv_paged")
    path = variant(KV_SEED, tmp_path, "index_put", "    if batch * seq == 0:\n",
                    "    pos = torch.arange(seq, device=k.device)\n"
                    "    blk = block_table.long()[:, pos // block_size]\n"
                    "    k_cache[blk, (pos % block_size).expand(batch, seq)] = k\n"
                    "    v_cache[blk, (pos % block_size).expand(batch, seq)] = v\n"
                    "    return\n    if batch * seq == 0:\n")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, path))
    assert rep.status == S.REWARD_HACK and "library-call" in (rep.hack_check or ""), (rep.status, rep.message)
