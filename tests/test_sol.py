"""Speed-of-light bounds: the hardware table, device-name matching, work from the definition's
expressions and from the reference (FLOP counter on meta tensors), T_SOL, and the score."""
from __future__ import annotations

import math

import pytest

from avo.harness import sol
from avo.schema import Definition, Workload
from avo.tasks import load_task

MATMUL_REF = "import torch\n\n\ndef run(a, b):\n    return torch.matmul(a, b)\n"


def _matmul_definition(k: int = 64, **sol_model) -> Definition:
    return Definition.model_validate({
        "name": "mm", "op_type": "gemm", "reference": MATMUL_REF,
        "axes": {"m": {"type": "var"}, "n": {"type": "var"}, "k": {"type": "const", "value": k}},
        "inputs": {"a": {"shape": ["m", "k"], "dtype": "bfloat16"}, "b": {"shape": ["k", "n"], "dtype": "bfloat16"}},
        "outputs": {"c": {"shape": ["m", "n"], "dtype": "bfloat16"}},
        "sol": sol_model})


def _wl(**axes) -> Workload:
    return Workload(uuid="w", axes=axes, inputs={})


def test_hardware_table_is_sane():
    names = {h.name for h in sol.HARDWARE}
    assert {"H100 SXM", "H100 PCIe", "H200", "B200"} <= names
    for h in sol.HARDWARE:
        f = h.peak_flops
        assert 1e12 <= h.peak_bw <= 1e13 and h.l2_bytes >= 40 << 20
        assert f["bfloat16"] == f["float16"] > 5 * f["float32"]
        assert f["float8_e4m3fn"] == pytest.approx(2 * f["bfloat16"], rel=0.01)
    h100, h200 = sol.hardware_by_name("H100 SXM"), sol.hardware_by_name("H200")
    assert h200.peak_bw > h100.peak_bw and h200.peak_flops["bfloat16"] == h100.peak_flops["bfloat16"]
    assert sol.hardware_by_name("nope") is None


@pytest.mark.parametrize("device_name,entry", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),  # what pynvml and torch report on an SXM board
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),  # faster memory than the SXM: its own entry, no false below-SOL
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-80GB", None),
    ("Tesla V100-SXM2-16GB", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_match_gpu_name(device_name, entry):
    h = sol.match_gpu_name(device_name)
    assert (h.name if h else None) == entry


def test_expressions_from_the_definition():
    g = load_task("grammar_bitmask")
    w = next(w for w in g.workloads if w.uuid == "cpu_b3_v1000_float32")
    flops, nbytes = sol.work(g.definition, w)
    assert flops == 0 and nbytes == 3 * 32 * 4 + 3 * 1000 * 4  # bitmask words + logits
    a = load_task("attention_mha_fwd")
    for w in a.select("gpu"):
        b, h, s, d = (w.axes[x] for x in ("batch", "heads", "seq", "dim"))
        causal = w.inputs["causal"].value
        flops, nbytes = sol.work(a.definition, w)
        assert flops == 4 * b * h * s * s * d / (2 if causal else 1)
        assert nbytes == 4 * b * h * s * d * 2  # q, k, v, o in bf16


def test_expression_environment_and_errors():
    d = _matmul_definition(flops="2*m*n*k", bytes="numel_a*isz_a + numel_b*isz_b + numel_c*isz_c")
    env = sol.expr_env(d, _wl(m=3, n=5))
    assert (env["k"], env["numel_a"], env["isz_c"]) == (64, 3 * 64, 2)
    assert sol.work(d, _wl(m=3, n=5)) == (2 * 3 * 5 * 64, (3 * 64 + 64 * 5 + 3 * 5) * 2)
    bad = _matmul_definition(flops="2*m*n*q")
    with pytest.raises(ValueError, match=r"SOL expression '2\*m\*n\*q' failed"):
        sol.work(bad, _wl(m=3, n=5))
    evil = _matmul_definition(flops="__import__('os').getpid()")
    with pytest.raises(ValueError, match="failed"):  # no builtins in SOL expressions
        sol.work(evil, _wl(m=3, n=5))


def test_reference_derived_work():
    """No SOL model: FLOPs from torch's FlopCounterMode on meta tensors, bytes = unique I/O."""
    d = _matmul_definition()
    flops, nbytes = sol.work(d, _wl(m=1000, n=3000))  # nothing is allocated: meta tensors
    assert flops == 2 * 1000 * 3000 * 64
    assert nbytes == sol.io_bytes(d, _wl(m=1000, n=3000)) == (1000 * 64 + 64 * 3000 + 1000 * 3000) * 2
    a = load_task("attention_mha_fwd")
    w = next(w for w in a.select("gpu") if not w.inputs["causal"].value)
    derived = a.definition.model_copy(update={"sol": a.definition.sol.model_copy(update={"flops": None})})
    assert sol.reference_flops(derived, w) == sol.work(a.definition, w)[0]  # the two matmuls


def test_how_the_bound_was_derived_is_said():
    derived = sol.work_source(_matmul_definition())
    assert "counted on the reference" in derived and "unique inputs + outputs" in derived
    given = sol.work_source(load_task("attention_mha_fwd").definition)
    assert "FLOPs = 4*batch*heads*seq*seq*dim / (2 if causal else 1) (the definition)" in given
    assert "bytes = numel_q*isz_q" in given and "compute peak of bfloat16" in given


def test_reference_that_needs_data_counts_as_memory_bound():
    g = load_task("grammar_bitmask")
    d = g.definition.model_copy(update={"reference": "def run(logits, bitmask, indices):\n"
                                                     "    return logits[indices.tolist()]\n"})
    assert sol.reference_flops(d, g.select("cpu")[0]) == 0.0


def test_sol_time_picks_the_binding_resource():
    h = sol.hardware_by_name("H100 SXM")
    d = _matmul_definition(k=8192)
    big, thin = _wl(m=8192, n=8192), _wl(m=1, n=8192)
    t_big = sol.sol_time_s(d, big, h)
    assert t_big == pytest.approx(2 * 8192 ** 3 / h.peak_flops["bfloat16"])
    t_thin = sol.sol_time_s(d, thin, h)
    assert t_thin == pytest.approx(sol.io_bytes(d, thin) / h.peak_bw)
    fp32 = d.model_copy(update={"sol": d.sol.model_copy(update={"compute_dtype": "float32"})})
    assert sol.sol_time_s(fp32, big, h) == pytest.approx(2 * 8192 ** 3 / h.peak_flops["float32"])


def test_score_formula():
    t_sol, t_b = 1.0, 5.0
    assert sol.sol_score(t_b, t_b, t_sol) == pytest.approx(0.5)  # the baseline
    assert sol.sol_score(t_sol, t_b, t_sol) == pytest.approx(1.0)  # speed of light
    assert sol.sol_score(3.0, t_b, t_sol) == pytest.approx(1 / (1 + 2 / 4))
    assert sol.sol_score(2 * t_b, t_b, t_sol) < 0.5 < sol.sol_score(0.9 * t_b, t_b, t_sol)
    assert sol.sol_score(0.5, t_b, t_sol) > 1.0  # below SOL: the runner flags it as a hack
    assert sol.sol_score(2.0, 1.0, 1.0) is None and sol.sol_score(0.0, t_b, t_sol) is None
    xs = [sol.sol_score(t, t_b, t_sol) for t in (1.0, 1.5, 2.0, 4.0, 8.0)]
    assert xs == sorted(xs, reverse=True) and all(math.isfinite(x) for x in xs)
