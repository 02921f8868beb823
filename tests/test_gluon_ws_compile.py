"""The warp-specialised Gluon GQA prefill kernel (kernels/attention/gqa_fwd_gluon_ws.py) compiles for sm_90.

CPU only: frontend + ptxas for Hopper through GluonASTSource, with host-style 4-D TMA descriptors as
the signature (as tests/test_gluon_compile.py does for gqa_fwd_gluon.py). Asserts async wgmma, TMA
copies and the three partitions (12 warps, setmaxnreg), the shared-memory budget, and, where triton
ships cuobjdump, that the SASS keeps the wgmmas pipelined (a `WARPGROUP.DEPBAR.LE gsb0, 0x1`: S ready
while the P.V is in flight; ptxas serialises every wgmma of a worker partition otherwise, see the
kernel's EXIT_WORKER). Skipped only where the installed triton lacks Gluon's Hopper module.
Correctness and speed are GPU-only: scripts/gluon_ws_check.py.
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

KERNEL = Path(__file__).resolve().parents[1] / "kernels/attention/gqa_fwd_gluon_ws.py"


@pytest.fixture()
def mod():
    spec = importlib.util.spec_from_file_location("gqa_fwd_gluon_ws_under_test", KERNEL)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def compile_sm90(mod, causal=False, dim=128, dtype=torch.bfloat16, **knobs):
    mod.CONFIG.update(knobs)
    gdt = mod._GL_DTYPES[dtype]
    consts, maxnreg = mod._launch_params(dim, torch.empty(0, dtype=dtype).element_size())
    consts["CAUSAL"] = causal
    t = torch.empty(1, 1, 256, dim, dtype=dtype)  # CPU tensor: only its dtype/strides feed the signature
    bm, bn = consts["BLOCK_M"], consts["BLOCK_N"]
    descs = dict(q_desc=mod._descriptor(t, bm, gdt), k_desc=mod._descriptor(t, bn, gdt),
                 v_desc=mod._descriptor(t, bn, gdt), o_desc=mod._descriptor(t, bm, gdt))
    fn = mod._gqa_fwd_ws_kernel
    sig = {n: mangle_type(d) for n, d in descs.items()}
    sig.update(seq="i32", heads="i32", group="i32", n_m="i32", n_tiles="i32", qk_scale="fp32")
    sig.update({n: "constexpr" for n in consts})
    sig = {n: sig[n] for n in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, maxnreg=maxnreg))


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


CASES = [
    dict(causal=False),
    dict(causal=True),
    dict(causal=True, dim=64, dtype=torch.float16),
    dict(causal=False, dim=64, dtype=torch.float16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'causal' if c['causal'] else 'full'}-d{c.get('dim', 128)}")
def test_compiles_warp_specialized(mod, case):
    k = compile_sm90(mod, **case)
    ptx = k.asm["ptx"]
    assert "wgmma.mma_async" in ptx
    assert "cp.async.bulk.tensor" in ptx  # TMA loads and the O stores
    assert "mbarrier.try_wait" in ptx
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)  # S_j ready, P.V in flight
    assert "ex2.approx" in ptx
    assert "setmaxnreg" in ptx  # register reallocation between the partitions
    assert k.metadata.num_warps == 12  # 2 consumer warpgroups + the producer's (padded) warpgroup
    assert k.metadata.shared <= mod.SMEM_LIMIT
    if mod.CONFIG.get("EXIT_WORKER", True):
        assert re.search(r"\bexit;", ptx)
    sass = _sass(k)
    if sass is not None:
        assert "HGMMA" in sass
        # Pipelined wgmma: a wait that leaves one group outstanding survives in SASS.
        assert re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x1", sass), "ptxas serialised the wgmmas"


@pytest.mark.parametrize("knobs", [dict(PERSISTENT=False), dict(BLOCK_N=64), dict(NUM_STAGES=3)],
                         ids=["one_tile_per_cta", "bn64", "stages3"])
def test_compiles_knobs(mod, knobs):
    k = compile_sm90(mod, causal=True, **knobs)
    assert "wgmma.mma_async" in k.asm["ptx"]
    assert k.metadata.shared <= mod.SMEM_LIMIT


def test_run_rejects_unsupported(mod):
    q = torch.empty(1, 2, 8, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError):
        mod.run(q, q[:, :1], q[:, :1], False, torch.empty_like(q))  # head dim 32
    q = torch.empty(1, 2, 8, 64, dtype=torch.float32)
    with pytest.raises(ValueError):
        mod.run(q, q, q, False, torch.empty_like(q))  # fp32


def test_config_in_tunables(mod):
    for name, val in mod.CONFIG.items():
        assert val in mod.TUNABLES[name], name
