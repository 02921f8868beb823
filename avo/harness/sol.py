"""Speed-of-light bounds: T_SOL = max(FLOPs / peak_flops[dtype], bytes / peak_bw), from the
definition's SOL model (expressions over the axes) or derived from the reference; the hardware
table holds datasheet peaks (dense, no sparsity)."""
from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel

from avo.schema import DTYPE_BYTES, Definition, ScalarInput, Workload


class Hardware(BaseModel):
    name: str
    peak_bw: float  # bytes/s, HBM
    peak_flops: dict[str, float]  # dtype -> FLOP/s (tensor core where one exists)
    l2_bytes: int


_T = 1e12
HARDWARE = [
    Hardware(name="H100 SXM", peak_bw=3.35e12, l2_bytes=50 << 20,
             peak_flops={"bfloat16": 989 * _T, "float16": 989 * _T, "float8_e4m3fn": 1979 * _T,
                         "float8_e5m2": 1979 * _T, "float32": 67 * _T, "int8": 1979 * _T}),
    Hardware(name="H100 PCIe", peak_bw=2.0e12, l2_bytes=50 << 20,
             peak_flops={"bfloat16": 756 * _T, "float16": 756 * _T, "float8_e4m3fn": 1513 * _T,
                         "float8_e5m2": 1513 * _T, "float32": 51 * _T, "int8": 1513 * _T}),
    # NVL: its own memory (3.9 TB/s) is faster than the SXM's: the SXM bound would flag honest kernels
    Hardware(name="H100 NVL", peak_bw=3.9e12, l2_bytes=50 << 20,
             peak_flops={"bfloat16": 835 * _T, "float16": 835 * _T, "float8_e4m3fn": 1671 * _T,
                         "float8_e5m2": 1671 * _T, "float32": 60 * _T, "int8": 1671 * _T}),
    Hardware(name="H200", peak_bw=4.8e12, l2_bytes=60 << 20,
             peak_flops={"bfloat16": 989 * _T, "float16": 989 * _T, "float8_e4m3fn": 1979 * _T,
                         "float8_e5m2": 1979 * _T, "float32": 67 * _T, "int8": 1979 * _T}),
    Hardware(name="B200", peak_bw=8.0e12, l2_bytes=126 << 20,
             peak_flops={"bfloat16": 2250 * _T, "float16": 2250 * _T, "float8_e4m3fn": 4500 * _T,
                         "float8_e5m2": 4500 * _T, "float32": 80 * _T, "int8": 4500 * _T}),
]


def hardware_by_name(name: str) -> Optional[Hardware]:
    return next((h for h in HARDWARE if h.name == name), None)


def match_gpu_name(gpu_name: str) -> Optional[Hardware]:
    """Map a device name from pynvml / torch ('NVIDIA H100 80GB HBM3') to a table entry."""
    n = gpu_name.upper()
    if "H200" in n:
        return hardware_by_name("H200")
    if "H100" in n:
        return hardware_by_name("H100 NVL" if "NVL" in n else "H100 PCIe" if "PCIE" in n else "H100 SXM")
    if "B200" in n:
        return hardware_by_name("B200")
    return None


def detect_gpu_name() -> Optional[str]:
    """The name of the first GPU this process can see (CUDA_VISIBLE_DEVICES) via pynvml
    (nvidia-ml-py), None without a driver."""
    try:
        import pynvml
        from avo.harness.timing import nvml_handle
        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(nvml_handle(pynvml, use_torch=False))
            return name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def expr_env(d: Definition, w: Workload) -> dict[str, Any]:
    """Names usable in SOL expressions: axes, scalar inputs, isz_<t>, numel_<t> for each tensor."""
    axes = d.axis_values(w.axes)
    env: dict[str, Any] = dict(axes)
    env.update({k: s.value for k, s in w.inputs.items() if isinstance(s, ScalarInput)})
    for name, spec in {**d.inputs, **d.outputs}.items():
        if spec.shape is None:
            continue
        env[f"isz_{name}"] = DTYPE_BYTES[w.dtypes.get(name, spec.dtype)]
        env[f"numel_{name}"] = math.prod(d.dims(name, axes))
    env.update(ceil=math.ceil, min=min, max=max, log2=math.log2)
    return env


def _eval(expr: str, env: dict[str, Any]) -> float:
    try:
        return float(eval(compile(expr, "<sol>", "eval"), {"__builtins__": {}}, env))
    except Exception as e:
        raise ValueError(f"SOL expression {expr!r} failed: {e}") from None


def io_bytes(d: Definition, w: Workload) -> float:
    """Unique input + output bytes (each read once, each written once)."""
    return float(d.io_bytes(w))


def reference_flops(d: Definition, w: Workload) -> float:
    """FLOPs of the reference, counted by torch's FlopCounterMode on meta tensors (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from avo.harness.inputs import shape_of, tensor_dtype
    ns: dict[str, Any] = {}
    exec(compile(d.reference, f"<{d.name}/reference>", "exec"), ns)
    args = []
    for name in d.inputs:
        spec = w.inputs.get(name)
        if isinstance(spec, ScalarInput):
            args.append(spec.value)
        else:
            args.append(torch.empty(shape_of(d, w, name), dtype=tensor_dtype(d, w, name), device="meta"))
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            ns["run"](*args)
    except Exception:
        return 0.0  # references that need real data (indexing by values) count as memory-bound
    return float(counter.get_total_flops())


def work(d: Definition, w: Workload) -> tuple[float, float]:
    """(FLOPs, bytes) of one workload."""
    env = expr_env(d, w)
    flops = _eval(d.sol.flops, env) if d.sol.flops else reference_flops(d, w)
    nbytes = _eval(d.sol.bytes, env) if d.sol.bytes else io_bytes(d, w)
    return flops, nbytes


def work_source(d: Definition) -> str:
    """How `work` gets a definition's FLOPs and bytes, in words (printed next to the SOL numbers)."""
    f = f"FLOPs = {d.sol.flops} (the definition)" if d.sol.flops else \
        "FLOPs counted on the reference (torch FlopCounterMode on meta tensors)"
    b = f"bytes = {d.sol.bytes} (the definition)" if d.sol.bytes else "bytes = unique inputs + outputs, each moved once"
    return f"{f}; {b}; compute peak of {d.sol.compute_dtype}"


def sol_time_s(d: Definition, w: Workload, hw: Hardware) -> float:
    flops, nbytes = work(d, w)
    peak = hw.peak_flops.get(d.sol.compute_dtype, hw.peak_flops["bfloat16"])
    return max(flops / peak, nbytes / hw.peak_bw)


def sol_score(t_k: float, t_b: float, t_sol: float) -> Optional[float]:
    """S = 1 / (1 + (T_k - T_SOL) / (T_b - T_SOL)): 0.5 at the baseline, 1.0 at SOL."""
    if t_b <= t_sol or t_k <= 0:
        return None
    return 1.0 / (1.0 + (t_k - t_sol) / (t_b - t_sol))
