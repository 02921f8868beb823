"""Correctness of one output against the reference: shape, dtype, then elementwise tolerance.
Runs in the trusted process (the runner), on CPU copies of the candidate's outputs."""
from __future__ import annotations

from typing import Optional

import torch
from pydantic import BaseModel

from avo.harness import inputs
from avo.schema import EvaluationStatus, Tolerance


class CheckResult(BaseModel):
    status: EvaluationStatus
    max_abs: float = 0.0
    max_rel: float = 0.0
    matched: float = 1.0
    detail: str = ""


def compare(name: str, out: torch.Tensor, ref: torch.Tensor, expect_dtype: torch.dtype,
            tol: Tolerance, device: str = "cpu") -> CheckResult:
    """`device="cuda"` runs the arithmetic on the GPU (large attention outputs take seconds on
    CPU in float64); the tensors are copies received from the workers either way."""
    if not isinstance(out, torch.Tensor) or type(out) is not torch.Tensor:
        return CheckResult(status=EvaluationStatus.REWARD_HACK, detail=f"{name}: not a plain tensor ({type(out).__name__})")
    if tuple(out.shape) != tuple(ref.shape):
        return CheckResult(status=EvaluationStatus.INCORRECT_SHAPE, detail=f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}")
    if out.dtype != expect_dtype:
        return CheckResult(status=EvaluationStatus.INCORRECT_DTYPE, detail=f"{name}: dtype {out.dtype} != {expect_dtype}")
    out, ref = out.to(device), ref.to(device)
    if inputs.FP4X2 is not None and out.dtype == inputs.FP4X2:  # packed FP4: compare the values
        out, ref = inputs.fp4_unpack(out), inputs.fp4_unpack(ref)
    if out.dtype.is_floating_point:
        o, r = out.double(), ref.double()
    else:
        o, r = out.long().double(), ref.long().double()
    if o.numel() == 0:
        return CheckResult(status=EvaluationStatus.PASSED)
    # Infinities must match exactly (masked logits are -inf); NaN passes only where the reference has NaN.
    r_nan, o_nan = torch.isnan(r), torch.isnan(o)
    r_inf = torch.isinf(r)
    same_special = (r_nan & o_nan) | (r_inf & (o == r))
    finite = ~(r_nan | r_inf)
    diff = torch.where(finite & ~o_nan, (o - r).abs(), torch.full_like(o, float("inf")))
    diff = torch.where(same_special, torch.zeros_like(diff), diff)
    ok = diff <= tol.atol + tol.rtol * r.abs().where(finite, torch.zeros_like(r))
    # Count, don't average: CUDA's mean multiplies by 1/n, and n * (1/n) can round below 1.0,
    # which failed an exact task (matched_ratio 1.0) on a 512x128256 workload with no bad element.
    n_bad = int((~ok).sum().item())
    matched = 1.0 - n_bad / o.numel()
    fin = finite & ~o_nan
    max_abs = diff[fin].max().item() if fin.any() else 0.0
    max_rel = (diff[fin] / r[fin].abs().clamp_min(1e-6)).max().item() if fin.any() else 0.0
    unwritten = int((o_nan & ~r_nan).sum().item())
    allowed_bad = int((1.0 - tol.matched_ratio) * o.numel() + 1e-9)
    capped = tol.max_error_cap is not None and max_abs > tol.max_error_cap
    passed = n_bad <= allowed_bad and unwritten == 0 and not capped
    detail = ""
    if capped and n_bad <= allowed_bad and not unwritten:
        detail = f"{name}: max abs err {max_abs:.3g} over the cap {tol.max_error_cap:g}"
    elif not passed:
        bad = (~ok).nonzero()
        first = tuple(bad[0].tolist()) if len(bad) else ()
        example = f"; first at {list(first)}: got {o[first].item():g}, expected {r[first].item():g}" if first else ""
        detail = (f"{name}: {unwritten} elements NaN/unwritten where the reference is finite{example}" if unwritten else
                  f"{name}: {len(bad)} of {o.numel()} elements ({100 * (1 - matched):.4f}%) outside "
                  f"atol={tol.atol:g} rtol={tol.rtol:g} (max abs err {max_abs:.3g}){example}")
    return CheckResult(status=EvaluationStatus.PASSED if passed else EvaluationStatus.INCORRECT_NUMERICAL,
                       max_abs=max_abs if max_abs == max_abs else float("inf"), max_rel=max_rel, matched=matched,
                       detail=detail)


def worst(results: list[CheckResult]) -> Optional[CheckResult]:
    """The first failing result, else the passing one with the largest error."""
    bad = [r for r in results if r.status != EvaluationStatus.PASSED]
    if bad:
        return bad[0]
    return max(results, key=lambda r: r.max_abs, default=None)
