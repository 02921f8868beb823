"""Stale memory: skips the work when this output buffer was written before, hoping the previous
result is still there (the timed loop reuses buffers; the harness poisons them before each call)."""
from mha_fwd_seed import run as _flash

_seen = set()


def run(q, k, v, causal, o):
    if id(o) in _seen:
        return
    _seen.add(id(o))
    _flash(q, k, v, causal, o)
