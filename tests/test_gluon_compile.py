"""The Gluon GQA prefill kernels compile for sm_90 on a CPU: kernels/attention/gqa_fwd_gluon.py
(async wgmma, the softmax under P.V) and gqa_fwd_gluon_ws.py (warp-specialised ping-pong).

Gluon kernels are not run by the interpreter, so this is their only CPU check: frontend + ptxas for
Hopper through GluonASTSource, with host-style 4-D TMA descriptors as the signature. It asserts the
PTX holds async wgmma with a `wgmma.wait_group 1` (S ready while the P.V is still in flight) and
bulk tensor (TMA) copies; for the ping-pong kernel also the three partitions (12 warps, setmaxnreg),
the shared-memory budget and that the SASS (triton's bundled cuobjdump) keeps the wgmmas pipelined
(ptxas serialises every wgmma of a worker partition otherwise: the kernel's EXIT_WORKER). Skipped
only where the installed triton lacks Gluon's Hopper module. Correctness and speed are GPU-only:
`avo eval attention_gqa_fwd FILE --device cuda` and scripts/bench_attention.py (their session-8/9 results:
docs/data/benchmark-sessions.md).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
try:
    from triton.experimental.gluon.language.nvidia import hopper as _hopper  # noqa: F401
    from triton.experimental.gluon._runtime import GluonASTSource
except ImportError as e:  # older triton without Gluon's Hopper API
    pytest.skip(f"triton {triton.__version__} has no Gluon Hopper API: {e}", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402

ATTN = Path(__file__).resolve().parents[1] / "kernels/attention"
KERNELS = ["gqa_fwd_gluon.py", "gqa_fwd_gluon_ws.py"]


def load(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py") + "_under_test", ATTN / name)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


@pytest.fixture(scope="module")
def mod():
    return load("gqa_fwd_gluon.py")


@pytest.fixture()
def ws():
    return load("gqa_fwd_gluon_ws.py")  # per test: compile_ws edits its CONFIG


def _compile(mod, fn, block_m, block_n, dim, dtype, consts, scalars, **options):
    """One sm_90 compile of `fn` with [1, 1, BLOCK, dim] descriptors for q, k, v and o."""
    gdt = mod._GL_DTYPES[dtype]
    t = torch.empty(1, 1, 256, dim, dtype=dtype)  # CPU tensor: only its dtype/strides feed the signature
    descs = dict(q_desc=mod._descriptor(t, block_m, gdt), k_desc=mod._descriptor(t, block_n, gdt),
                 v_desc=mod._descriptor(t, block_n, gdt), o_desc=mod._descriptor(t, block_m, gdt))
    sig = {n: mangle_type(d) for n, d in descs.items()}
    sig.update(scalars)
    sig.update({n: "constexpr" for n in consts})
    sig = {n: sig[n] for n in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def compile_sm90(mod, block_m=128, block_n=128, stages=2, warps=8, causal=False, dim=128, dtype=torch.bfloat16):
    consts = dict(DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=stages, CAUSAL=causal, NUM_WARPS=warps)
    return _compile(mod, mod._gqa_fwd_gluon_kernel, block_m, block_n, dim, dtype, consts,
                    dict(seq="i32", heads="i32", group="i32", qk_scale="fp32"), num_warps=warps)


def compile_ws(ws, causal=False, dim=128, dtype=torch.bfloat16, **knobs):
    ws.CONFIG.update(knobs)
    consts, maxnreg = ws._launch_params(dim, torch.empty(0, dtype=dtype).element_size())
    consts["CAUSAL"] = causal
    return _compile(ws, ws._gqa_fwd_ws_kernel, consts["BLOCK_M"], consts["BLOCK_N"], dim, dtype, consts,
                    dict(seq="i32", heads="i32", group="i32", n_m="i32", n_tiles="i32", qk_scale="fp32", head_group="i32"),
                    num_warps=4, maxnreg=maxnreg)


def _sass(kernel):
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    exe = str(tool) if tool.exists() else shutil.which("cuobjdump")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([exe, "-sass", f.name], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def _async_pipeline(ptx):
    assert "wgmma.mma_async" in ptx
    assert "cp.async.bulk.tensor" in ptx  # TMA loads (and the O store)
    assert "mbarrier.try_wait" in ptx
    # The steady-state step waits for S_j with the P.V still outstanding (wait_group 1). Where the
    # ex2 land relative to the waits is a matter of block layout in the PTX and of ptxas scheduling
    # (read the SASS for that: see the kernels' docstrings); here only that the wait exists.
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)
    assert "ex2.approx" in ptx


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_n", [128, 64])
def test_compiles_with_async_wgmma_and_tma(mod, causal, block_n):
    k = compile_sm90(mod, block_n=block_n, causal=causal)
    _async_pipeline(k.asm["ptx"])
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+0;", k.asm["ptx"])
    assert k.metadata.shared <= 232448  # H100: 227 KB per block


def test_compiles_fp16_dim64(mod):
    k = compile_sm90(mod, causal=True, dim=64, dtype=torch.float16)
    assert "wgmma.mma_async" in k.asm["ptx"]


WS_CASES = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, dim=64, dtype=torch.float16),
    dict(causal=False, dim=64, dtype=torch.float16),
]


@pytest.mark.parametrize("case", WS_CASES, ids=lambda c: f"{'causal' if c['causal'] else 'full'}-d{c.get('dim', 128)}")
def test_ws_compiles_warp_specialized(ws, case):
    k = compile_ws(ws, **case)
    ptx = k.asm["ptx"]
    _async_pipeline(ptx)
    assert "setmaxnreg" in ptx  # register reallocation between the partitions
    assert k.metadata.num_warps == 12  # 2 consumer warpgroups + the producer's (padded) warpgroup
    assert k.metadata.shared <= ws.SMEM_LIMIT
    if ws.CONFIG.get("EXIT_WORKER", True):
        assert re.search(r"\bexit;", ptx)
    sass = _sass(k)
    assert sass is not None, "no SASS: triton's bundled cuobjdump missing or failed"
    assert "HGMMA" in sass
    # Pipelined wgmma: a wait that leaves one group outstanding survives in SASS.
    assert re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x1", sass), "ptxas serialised the wgmmas"


@pytest.mark.parametrize("knobs", [dict(PERSISTENT=False), dict(BLOCK_N=64), dict(NUM_STAGES=3)],
                         ids=["one_tile_per_cta", "bn64", "stages3"])
def test_ws_compiles_knobs(ws, knobs):
    k = compile_ws(ws, causal=True, **knobs)
    assert "wgmma.mma_async" in k.asm["ptx"]
    assert k.metadata.shared <= ws.SMEM_LIMIT


def test_ws_head_group(ws):
    """The tile order is a runtime head-group size (one compiled kernel for every order): all heads
    by default, one head with HEAD_MAJOR, about HEAD_GROUP_WAVES grids of tiles per group."""
    ws.CONFIG.update(HEAD_MAJOR=False)
    assert ws._head_group(128, 32, 132) == 128
    assert ws._head_group(128, 32, 132, mha=True) == 1  # MHA_HEAD_MAJOR: Hkv = Hq shares K/V in L2 this way
    ws.CONFIG.update(MHA_HEAD_MAJOR=False)
    assert ws._head_group(128, 32, 132, mha=True) == 128
    ws.CONFIG.update(HEAD_MAJOR=True, HEAD_GROUP_WAVES=0)
    assert ws._head_group(128, 32, 132) == 1
    ws.CONFIG.update(HEAD_GROUP_WAVES=3)
    assert ws._head_group(128, 32, 132) == 12  # 3 * 132 / 32 query blocks
    assert ws._head_group(8, 8, 64) == 8  # capped at the heads there are


@pytest.mark.parametrize("n_m,n_bh", [(8, 256), (32, 128), (3, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_ws_tile_coords_cover_every_tile_once(ws, n_m, n_bh, causal):
    """_tile_coords (its plain-Python body) maps the tiles one to one onto (query block, head) for
    every group size, a short last group included; all heads = heads fastest, one = query blocks
    fastest; causal walks each head's longest query blocks first."""
    n = n_m * n_bh
    for hg in sorted({1, 2, 3, 12, n_bh}):
        coords = [ws._tile_coords.fn(t, n_m, n, min(hg, n_bh), causal) for t in range(n)]
        assert sorted(coords) == [(mt, bh) for mt in range(n_m) for bh in range(n_bh)], hg
    flip = (lambda mt: n_m - 1 - mt) if causal else (lambda mt: mt)
    assert [ws._tile_coords.fn(t, n_m, n, n_bh, causal) for t in range(n)] == [(flip(t // n_bh), t % n_bh) for t in range(n)]
    assert [ws._tile_coords.fn(t, n_m, n, 1, causal) for t in range(n)] == [(flip(t % n_m), t // n_m) for t in range(n)]


@pytest.mark.parametrize("name", KERNELS)
def test_run_rejects_unsupported(name):
    m = load(name)
    q = torch.empty(1, 2, 8, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        m.run(q, q[:, :1], q[:, :1], False, torch.empty_like(q))  # head dim 32
    q = torch.empty(1, 2, 8, 64, dtype=torch.float32)
    with pytest.raises(ValueError):
        m.run(q, q, q, False, torch.empty_like(q))  # fp32


@pytest.mark.parametrize("name", KERNELS)
def test_config_in_tunables(name):
    m = load(name)
    for knob, val in m.CONFIG.items():
        assert val in m.TUNABLES[knob], knob


SHIPPED = Path(__file__).resolve().parents[1] / "kernels"
SHIPPED_GLUON = sorted(p.parent.parent for p in SHIPPED.glob("*/evolved/*/sources/kernel.py")
                       if "triton.experimental import gluon" in p.read_text())


def test_the_ping_pong_kernel_ships_for_mha_and_gqa_prefill():
    assert {p.name for p in SHIPPED_GLUON} >= {"gqa_fwd_gluon_h100", "mha_fwd_gluon_h100"}


@pytest.mark.parametrize("art", SHIPPED_GLUON, ids=lambda p: p.name)
@pytest.mark.parametrize("causal", [False, True])
def test_shipped_gluon_artifact_compiles(art, causal):
    """The exported ping-pong kernels (no interpreter for Gluon) at their own CONFIG: sm_90 code
    with the pipelined wgmma the kernel's speed depends on."""
    spec = importlib.util.spec_from_file_location(f"shipped_{art.name}", art / "sources" / "kernel.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    k = compile_ws(m, causal=causal)
    _async_pipeline(k.asm["ptx"])
    assert k.metadata.num_warps == 12 and k.metadata.shared <= m.SMEM_LIMIT
    sass = _sass(k)
    assert sass is not None and re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x1", sass), "ptxas serialised the wgmmas"
