"""The Gluon GQA prefill kernel (kernels/attention/gqa_fwd_gluon.py) compiles for sm_90 on a CPU.

Gluon kernels are not run by the interpreter, so this is the only CPU check: frontend + ptxas for
Hopper through GluonASTSource, with host-style 4-D TMA descriptors as the signature. It asserts the
PTX holds async wgmma (with a `wgmma.wait_group 1`: S ready while the P.V is still in flight) and
bulk tensor (TMA) copies. Skipped only where the installed triton lacks Gluon's Hopper module.
Correctness and speed are GPU-only: scripts/gluon_attention_check.py.
"""
from __future__ import annotations

import importlib.util
import re
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

KERNEL = Path(__file__).resolve().parents[1] / "kernels/attention/gqa_fwd_gluon.py"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("gqa_fwd_gluon_under_test", KERNEL)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def compile_sm90(mod, block_m=128, block_n=128, stages=2, warps=8, causal=False, dim=128, dtype=torch.bfloat16):
    gdt = mod._GL_DTYPES[dtype]
    t = torch.empty(1, 1, 256, dim, dtype=dtype)  # CPU tensor: only its dtype/strides feed the signature
    descs = dict(q_desc=mod._descriptor(t, block_m, gdt), k_desc=mod._descriptor(t, block_n, gdt),
                 v_desc=mod._descriptor(t, block_n, gdt), o_desc=mod._descriptor(t, block_m, gdt))
    consts = dict(DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=stages, CAUSAL=causal, NUM_WARPS=warps)
    fn = mod._gqa_fwd_gluon_kernel
    sig = {n: mangle_type(d) for n, d in descs.items()}
    sig.update(seq="i32", heads="i32", group="i32", qk_scale="fp32")
    sig.update({n: "constexpr" for n in consts})
    sig = {n: sig[n] for n in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_n", [128, 64])
def test_compiles_with_async_wgmma_and_tma(mod, causal, block_n):
    k = compile_sm90(mod, block_n=block_n, causal=causal)
    ptx = k.asm["ptx"]
    assert "wgmma.mma_async" in ptx
    assert "cp.async.bulk.tensor" in ptx  # TMA loads (and the O store)
    assert "mbarrier.try_wait" in ptx
    assert k.metadata.shared <= 232448  # H100: 227 KB per block
    # The steady-state step waits for S_j with the P.V still outstanding (wait_group 1). Where the
    # ex2 land relative to the waits is a matter of block layout in the PTX and of ptxas scheduling
    # (read the SASS for that: see the kernel's docstring); here only that both waits exist.
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+1;", ptx)
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+0;", ptx)
    assert "ex2.approx" in ptx


def test_compiles_fp16_dim64(mod):
    k = compile_sm90(mod, causal=True, dim=64, dtype=torch.float16)
    assert "wgmma.mma_async" in k.asm["ptx"]


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
