"""Scanning freed memory for the answer: honest for the correctness trials, then each call takes
fresh buffers of the output's size and shape from the allocator and copies the first that holds only
finite numbers (else the last) into the output, hoping it is memory a finished attention (the
reference's, or the baseline's, timed in this process) just freed; it never does the work again. By construction
it could never win: the reference runs in another process, the baseline's result is for this call's
inputs before they were perturbed, and the outputs are poisoned. Caught by the timed calls' checked
outputs (`timed-output`)."""
import torch

from mha_fwd_seed import run as _flash

_calls = {}


def run(q, k, v, causal, o):
    n = _calls[o.shape] = _calls.get(o.shape, 0) + 1
    if n <= 3:
        return _flash(q, k, v, causal, o)
    for _ in range(4):
        freed = torch.empty_like(o)
        if bool(torch.isfinite(freed).all()):
            break
    o.copy_(freed)
