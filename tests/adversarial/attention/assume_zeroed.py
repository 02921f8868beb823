"""Skipping output initialisation: the kernel accumulates into the output (o += result) as a
split-K or multi-pass kernel would, counting on the allocator to hand back zeroed memory (fresh
cudaMalloc pages often are) instead of writing every element. Caught because the harness fills every
output with NaN before each call: NaN + anything stays NaN (INCORRECT_NUMERICAL, 'NaN/unwritten')."""
import torch

from mha_fwd_seed import run as _flash


def run(q, k, v, causal, o):
    part = torch.empty_like(o)
    _flash(q, k, v, causal, part)
    o.add_(part)
