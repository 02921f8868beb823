"""A problem that comes with only a PyTorch reference gets Inductor's Triton for it as its seed:
generated (on CPU through Inductor's Triton CPU path), rewritten to a standalone kernel file, run in
the Triton interpreter by the real harness, and evolved by the offline operator through its knobs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avo.config import load_config
from avo.evolve.inductor_seed import SeedRefused, make_inductor_seed, rewrite
from avo.evolve.setup import resolve_tasks
from avo.lineage import Lineage
from avo.tasks import REPO_ROOT, load_task

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One Inductor cache for the module: each generation takes seconds on two cores."""
    d = tmp_path_factory.mktemp("avo-cache")
    old = os.environ.get("AVO_CACHE")
    os.environ["AVO_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("AVO_CACHE")
    else:
        os.environ["AVO_CACHE"] = old


def _problem(tmp_path, src: Path, name: str) -> Path:
    """A copy of a fixture problem without its solution: definition and workloads only."""
    p = tmp_path / name
    p.mkdir()
    for f in ("definition.json", "workload.jsonl"):
        shutil.copy(src / f, p / f)
    return p


def _avo(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})


def test_the_seed_stands_alone_and_passes_every_workload_with_its_scalar_as_an_input(tmp_path, cache):
    """RMSNorm with eps a scalar input that differs between workloads (1e-5, 1e-6): the seed reads
    eps at run time (not baked into the kernel), imports nothing of Inductor, and PASSES both."""
    problem = _problem(tmp_path, DATA / "sol_execbench" / "rmsnorm_h256", "rms")
    task = load_task(str(problem))
    src, why = make_inductor_seed(task, task.select("cpu"), "interpret")
    assert src is not None, why
    assert "torch._inductor" not in src and "async_compile" not in src and "triton_heuristics" not in src
    assert "@triton.jit" in src and "CONFIG = dict(K0_XBLOCK=" in src and "K0_num_warps=[1, 2, 4, 8, 16]" in src
    assert "1e-05" not in src and "torch.tensor(eps, dtype=torch.float64)" in src
    kernel = tmp_path / "seed.py"
    kernel.write_text(src)
    r = _avo("eval", str(problem), str(kernel), "--device", "interpret", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert r.stdout.count("PASSED") == 2, r.stdout[-3000:]
    # cached by reference, workloads, device and torch: a second call is the same file
    assert make_inductor_seed(task, task.select("cpu"), "interpret") == (src, "")


def test_evolve_starts_from_inductors_seed_and_turns_its_knobs(tmp_path, cache):
    """`avo evolve` on a reference-only problem: the seed is Inductor's, committed as such; the offline
    operator (no TUNABLES written by anyone) moves its launch knobs; a resume keeps the same seed."""
    problem = _problem(tmp_path, DATA / "fib_problem", "rms_fib")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run: ind\nlineage_dir: {tmp_path / 'lin'}\ntasks: [{problem}]\n"
                   "budget: {attempts: 3}\ndevice: interpret\n")
    r = _avo("evolve", "-c", str(cfg), "--no-live", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "made from the task's reference by TorchInductor" in " ".join(r.stdout.split())
    with Lineage.open(tmp_path / "lin") as lin:
        seed = [v for v in lin.versions("rmsnorm_h256") if v.meta.kind == "seed"][0]
        attempts = lin.attempts()
    assert seed.meta.note == "seed made from the reference by Inductor" and all(t.passed for t in seed.traces)
    assert "@triton.jit" in seed.source and "def run(hidden_states, weight, output):" in seed.source
    assert len(attempts) == 3 and all(a.status in ("PASSED", "REJECTED") for a in attempts), \
        [(a.status, a.note) for a in attempts]
    assert all(a.note.startswith("K0_") for a in attempts), [a.note for a in attempts]
    cfg.write_text(cfg.read_text().replace("attempts: 3", "attempts: 4"))
    r = _avo("evolve", "-c", str(cfg), "--no-live", cwd=tmp_path)
    assert r.returncode == 0 and "different setup" not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(Lineage.open(tmp_path / "lin").attempts()) == 4


def test_a_reference_inductor_leaves_to_libraries_gets_the_plain_seed_and_the_reason(tmp_path, cache):
    """Linear backward is three matmuls: Inductor makes no Triton kernel, so the seed is the plain
    reference and `avo evolve` says why."""
    problem = _problem(tmp_path, DATA / "sol_execbench" / "linear_backward", "linbw")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run: lb\nlineage_dir: {tmp_path / 'lin'}\ntasks: [{problem}]\ndevice: interpret\n")
    setup = next(iter(resolve_tasks(load_config(cfg), "interpret").values()))
    assert setup.seed_kind == "reference"
    assert setup.seed_note == "Inductor made no Triton kernel for the reference (library calls only)"
    assert "Inductor's seed: Inductor made no Triton kernel" in setup.seed_text()


_WRAPPER = '''
from torch._inductor.async_compile import AsyncCompile
async_compile = AsyncCompile()
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', """
import triton
import triton.language as tl
from torch._inductor.runtime import triton_helpers, triton_heuristics

@triton_heuristics.pointwise(size_hints={'x': 1024}, filename=__file__, triton_meta={}, inductor_meta={'grid_type': 'GRID'})
@triton.jit
def triton_poi_fused_0(in_ptr0, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    tmp0 = tl.load(in_ptr0 + xindex, xindex < xnumel)
    tl.store(out_ptr0 + xindex, triton_helpers.maximum(tmp0, 0.0), xindex < xnumel)
""", device_str='cuda')

def call(args):
    arg0_1, arg1_1 = args
    args.clear()
    assert_size_stride(arg1_1, (arg0_1, 64), (64, 1), 'input')
    buf0 = empty_strided_cuda((arg0_1, 64), (64, 1), torch.float32)
    EXTRA
    triton_poi_fused_0.run(arg1_1, buf0, 64*arg0_1, stream=raw_stream0)
    return (buf0, )
'''


def test_the_rewrite_maps_inductors_host_code_and_refuses_what_it_cannot_map():
    ok = rewrite(_WRAPPER.replace("GRID", "Grid1D").replace("EXTRA", "pass"), ["x.size()[0]", "x"], ["x"], ["y"],
                 [0], "t")
    compile(ok, "seed.py", "exec")
    assert "def th_maximum(a, b):" in ok and "th_maximum(tmp0, 0.0)" in ok  # helper copied in, renamed
    assert "buf0 = output_or_new(outs, 0, (arg0_1, 64), (64, 1), torch.float32)" in ok
    assert "launch_0(arg1_1, buf0, 64 * arg0_1)" in ok and "assert_size_stride" not in ok
    assert "grid = (triton.cdiv(xnumel, XBLOCK),)" in ok
    with pytest.raises(SeedRefused, match="extern_kernels.convolution, which the rewrite does not map"):
        rewrite(_WRAPPER.replace("GRID", "Grid1D").replace("EXTRA", "extern_kernels.convolution(arg1_1, arg1_1)"),
                ["x.size()[0]", "x"], ["x"], ["y"], [0], "t")
    with pytest.raises(SeedRefused, match="grid MixOrderReductionGrid is not rewritten"):
        rewrite(_WRAPPER.replace("GRID", "MixOrderReductionGrid").replace("EXTRA", "pass"),
                ["x.size()[0]", "x"], ["x"], ["y"], [0], "t")
    with pytest.raises(SeedRefused, match="uses alloc_from_pool"):
        rewrite(_WRAPPER.replace("GRID", "Grid1D").replace("EXTRA", "buf9 = alloc_from_pool(buf0, 0)"),
                ["x.size()[0]", "x"], ["x"], ["y"], [0], "t")


@pytest.mark.gpu
def test_on_cuda_the_seed_is_inductors_cuda_triton_and_passes(tmp_path, cache):
    """The same path on a GPU: Inductor generates for CUDA (libdevice calls kept), the file runs
    standalone and PASSES every GPU workload of the Llama-shaped RMSNorm."""
    task = load_task(str(REPO_ROOT / "examples" / "problems" / "rmsnorm_llama3_8b"))
    src, why = make_inductor_seed(task, task.select("gpu"), "cuda")
    assert src is not None, why
    assert "generated for CUDA" in src and "torch._inductor" not in src
    kernel = tmp_path / "seed.py"
    kernel.write_text(src)
    r = _avo("eval", str(REPO_ROOT / "examples" / "problems" / "rmsnorm_llama3_8b"), str(kernel), "--device", "cuda",
             cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("PASSED") == len(task.select("gpu")), r.stdout[-3000:]
