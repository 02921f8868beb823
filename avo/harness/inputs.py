"""Inputs for a workload: deterministic from a seed on the device that uses them, so the candidate
worker and the reference worker build the same tensors without ever sharing memory."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from avo.schema import CustomInput, Definition, SafetensorsInput, ScalarInput, Workload

TORCH_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "bool": torch.bool,
}
FP4X2 = getattr(torch, "float4_e2m1fn_x2", None)  # two FP4 E2M1 values per byte (torch >= 2.8)
if FP4X2 is not None:
    TORCH_DTYPES.update({"float4_e2m1": FP4X2, "float4_e2m1fn_x2": FP4X2})
# the 16 FP4 E2M1 values by code (sign bit 3), for comparing packed outputs as numbers
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Byte-identical view dtypes used for bitwise equality (NaN-safe) of snapshots.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
POISON_INT = -0x5A5A5A5B


def tensor_dtype(d: Definition, w: Workload, name: str) -> torch.dtype:
    spec = {**d.inputs, **d.outputs}[name]
    return TORCH_DTYPES[w.dtypes.get(name, spec.dtype)]


def shape_of(d: Definition, w: Workload, name: str) -> tuple[int, ...]:
    """The tensor's shape: the definition's, with the last dim halved for packed FP4 (as SOL-ExecBench packs it)."""
    dims = d.dims(name, d.axis_values(w.axes))
    if FP4X2 is not None and dims and tensor_dtype(d, w, name) == FP4X2:
        dims = (*dims[:-1], dims[-1] // 2)
    return dims


def fp4_unpack(t: torch.Tensor) -> torch.Tensor:
    """Packed FP4 as float32 values, low nibble first (the last dim doubles)."""
    b = t.view(torch.uint8).long()
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=t.device)
    return torch.stack((table[b & 15], table[b >> 4]), dim=-1).flatten(-2)


def _default_tensor(shape, dtype, gen, device) -> torch.Tensor:
    if dtype == FP4X2 and FP4X2 is not None:  # any byte is two valid FP4 values (no NaN or inf in E2M1)
        return torch.randint(0, 256, shape, generator=gen, device=device, dtype=torch.uint8).view(dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen, device=device).bool()
    return torch.randint(0, 8, shape, generator=gen, device=device, dtype=dtype)


def make_inputs(d: Definition, w: Workload, seed: int, device: str,
                custom: Optional[Callable] = None, root: Optional[Path] = None,
                entrypoint: Optional[Callable] = None) -> dict[str, Any]:
    """Inputs in the definition's order. A reference module may define
    `make_inputs(axes, dtypes, gen, device) -> dict` for inputs with structure (indices, masks);
    a SOL-ExecBench definition names its own `custom_inputs_entrypoint(axes_and_scalars, device)`,
    which draws from torch's global generator: it runs seeded, inside a fork of that generator."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    axes = d.axis_values(w.axes)
    dtypes = {n: tensor_dtype(d, w, n) for n in d.inputs}
    made = dict(custom(axes, dtypes, gen, device)) if custom else {}
    if entrypoint is not None and any(isinstance(s, CustomInput) for s in w.inputs.values()):
        scalars = {k: s.value for k, s in w.inputs.items() if isinstance(s, ScalarInput)}
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device != "cpu" else []):
            torch.manual_seed(seed)
            made.update(entrypoint({**axes, **scalars}, device))
    out: dict[str, Any] = {}
    for name in d.inputs:
        spec = w.inputs.get(name)
        if isinstance(spec, ScalarInput):
            out[name] = spec.value
        elif isinstance(spec, SafetensorsInput):
            from safetensors.torch import load_file
            out[name] = load_file(str((root or Path(".")) / spec.path))[spec.tensor_key].to(device)
        elif name in made:
            out[name] = made[name]
        else:
            out[name] = _default_tensor(shape_of(d, w, name), dtypes[name], gen, device)
    return out


def alloc_outputs(d: Definition, w: Workload, device: str) -> dict[str, torch.Tensor]:
    return {n: torch.empty(shape_of(d, w, n), dtype=tensor_dtype(d, w, n), device=device) for n in d.outputs}


def poison_(t: torch.Tensor) -> None:
    """Fill with a value no correct kernel leaves behind, so unwritten or stale output fails."""
    if FP4X2 is not None and t.dtype == FP4X2:
        t.view(torch.uint8).fill_(0xF7)  # (6.0, -6.0): the extremes, in an order no rounding gives twice
    elif t.dtype.is_floating_point:
        t.fill_(float("nan"))
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(POISON_INT if t.dtype in (torch.int32, torch.int64) else -91)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()]) if t.dtype != torch.bool else t


def snapshot(values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in values.items() if isinstance(v, torch.Tensor) and k not in skip}


def changed(values: dict[str, Any], snap: dict[str, torch.Tensor]) -> list[str]:
    """Names of snapshotted tensors whose bits differ now (bitwise, so NaN == NaN)."""
    return [k for k, s in snap.items() if not torch.equal(bits(values[k]), bits(s))]


def upcast(values: dict[str, Any]) -> dict[str, Any]:
    """Reference precision: floating tensors to float32 (float64 gains little for bf16 kernels)."""
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point and v.dtype != FP4X2 else v)
            for k, v in values.items()}


def perturb_(values: dict[str, Any], pseed: int, fraction: float = 1 / 16,
             integers: Optional[list[str]] = None) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """Overwrite a random contiguous 1/16 of each floating input, and of the integer inputs named in
    `integers` (the definition's perturb_integers), with another stretch of the same tensor, chosen
    by `pseed` (deterministic in every process, so the reference rebuilds the same inputs). Timed
    calls see a new perturbation each time: a cache keyed on a sample of the input values hits and
    returns a stale result, and enough outputs change to exceed any matched-ratio tolerance. Values
    stay in the tensor's own distribution (positive stays positive). Returns what `unperturb_`
    needs to undo it."""
    import random
    undo = []
    extra = set(integers or ())
    for name, t in values.items():
        if not isinstance(t, torch.Tensor) or t.numel() < 2 or not t.is_contiguous() or \
                not (t.dtype.is_floating_point or name in extra):
            continue
        rng = random.Random(f"{pseed}:{name}")
        flat = t.view(-1)
        n = flat.numel()
        span = max(1, int(n * fraction))
        j, k = rng.randrange(n - span + 1), rng.randrange(n - span + 1)
        undo.append((flat, j, flat[j:j + span].clone()))
        flat[j:j + span] = flat[k:k + span].clone()
    return undo


def unperturb_(undo: list[tuple[torch.Tensor, int, torch.Tensor]]) -> None:
    for flat, j, old in reversed(undo):
        flat[j:j + old.numel()] = old
