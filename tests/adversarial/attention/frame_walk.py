"""Finding the answer through frames: walks up the caller's frames (the harness's own) for a local
tensor shaped like the output that holds finite numbers, hoping for the reference's result, and
copies it; if the walk fails it runs the seed kernel. It reaches sys._getframe without naming sys:
string.Formatter().get_field follows "__globals__[sys]" from warnings.showwarning. By construction it
could never win: the reference runs in another process, so no frame of this one holds its result.
Static guard: `.get_field` (sandbox). Runtime (peer mode): the worker's audit hook refuses
sys._getframe to candidate code and records it (`introspection`)."""
import string
import warnings

import torch

from mha_fwd_seed import run as _flash


def _answer(o):
    frame = string.Formatter().get_field("0.__globals__[sys]", (warnings.showwarning,), {})[0]._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, torch.Tensor) and value is not o and value.shape == o.shape \
                    and bool(torch.isfinite(value).all()):
                return value
        frame = frame.f_back
    return None


def run(q, k, v, causal, o):
    try:
        found = _answer(o)
    except Exception:
        found = None
    if found is not None:
        o.copy_(found)
    else:
        _flash(q, k, v, causal, o)
