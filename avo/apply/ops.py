"""avo.apply calls as `torch.library` custom ops, so torch.compile (and CUDA graph capture through
it) sees one opaque op where an `@avo.apply` function is called, instead of tracing into the
Python dispatch.

One op per decorated function (`torch.ops.avo.<name>`), its schema made from the task's definition:
tensor inputs `Tensor` (`Tensor(a!)` for the definition's `inplace` inputs), scalar inputs
`bool`/`int`/`float`, outputs `Tensor` / `(Tensor, ...)` / `()`. Its real implementation is the
runtime's dispatch (the same path as an eager call: the table read at the call, so `reload()`
changes what a compiled graph runs at its next call, without recompiling), its outputs made
contiguous and never aliasing an input. Its fake (meta) implementation allocates the outputs
from the definition: shapes from the axes read off the input shapes (symbolic sizes work), dtype
of an output = that of the first input whose definition dtype is the output's (attention: o
follows q), else the definition's.
"""
from __future__ import annotations

import keyword
import weakref
from typing import Any, Callable, Optional

import torch

from avo.apply.keys import KeyLayout
from avo.harness.inputs import TORCH_DTYPES
from avo.schema import AxisExpr, Definition, eval_axis_expr

_LIB: Optional[torch.library.Library] = None
_OPS: dict = {}  # op name -> (schema, OpOverloadPacket)
_TARGETS: dict = {}  # op name -> dispatch callable (rebound on reload, the op stays)
_OWNERS: dict = {}  # op name -> weakref to the object (Applied) it dispatches for


def _lib() -> torch.library.Library:
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("avo", "FRAGMENT")
    return _LIB


def op_identifier(text: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text).strip("_") or "op"
    return ("op_" + out) if out[0].isdigit() else out


def _arg(name: str, i: int) -> str:
    ok = name.isidentifier() and not keyword.iskeyword(name) and name not in ("self", "out")
    return name if ok else f"in{i}"


def op_schema(d: Definition) -> str:
    """The custom op's schema (without the name) for a definition."""
    parts = []
    alias = iter("abcdefghijklmnopqrstuvwxyz")
    for i, (n, spec) in enumerate(d.inputs.items()):
        if spec.shape is not None:
            t = f"Tensor({next(alias)}!)" if n in d.inplace else "Tensor"
        elif spec.dtype == "bool":
            t = "bool"
        elif spec.dtype.startswith("int"):
            t = "int"
        else:
            t = "float"
        parts.append(f"{t} {_arg(n, i)}")
    outs = [n for n, s in d.outputs.items()]
    ret = "()" if not outs else "Tensor" if len(outs) == 1 else "(" + ", ".join("Tensor" for _ in outs) + ")"
    return f"({', '.join(parts)}) -> {ret}"


class FakeOutputs:
    """The outputs' shapes and dtypes from a call's inputs, by the definition alone."""

    def __init__(self, d: Definition):
        self.d = d
        self.layout = KeyLayout.of(d)
        tensor_names = {n for n, s in d.inputs.items() if s.shape is not None}
        self.follow = []  # per output: the input index whose dtype it takes, or None
        self.dtypes = []
        for spec in d.outputs.values():
            src = next((i for i, (n, s) in enumerate(d.inputs.items())
                        if n in tensor_names and s.dtype == spec.dtype), None)
            self.follow.append(src)
            self.dtypes.append(TORCH_DTYPES[spec.dtype])
        known = {a for _, axes in self.layout.tensor_inputs for a in axes} | set(d.const_axes)
        known |= {a for a, ax in d.axes.items() if isinstance(ax, AxisExpr)}
        self.ok = all(a.isdigit() or a in known for s in d.outputs.values() for a in s.shape or [])

    def dtypes_for(self, args: tuple) -> list:
        return [args[src].dtype if src is not None else dt for src, dt in zip(self.follow, self.dtypes)]

    def shapes_for(self, args: tuple) -> list:
        axes: dict[str, Any] = dict(self.d.const_axes)
        for i, names in self.layout.tensor_inputs:
            for a, s in zip(names, args[i].shape):
                axes.setdefault(a, s)
        for a, ax in self.d.axes.items():
            if isinstance(ax, AxisExpr) and a not in axes:
                axes[a] = eval_axis_expr(ax.expression, axes)
        return [tuple(int(a) if a.isdigit() else axes[a] for a in spec.shape or []) for spec in self.d.outputs.values()]

    def __call__(self, *args):
        if not self.d.outputs:
            return None
        device = next(args[i].device for i, _ in self.layout.tensor_inputs)
        outs = [torch.empty(shape, dtype=dt, device=device)
                for shape, dt in zip(self.shapes_for(args), self.dtypes_for(args))]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _aliases(t: torch.Tensor, args: tuple) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == ptr for a in args)


def _own(out, args: tuple):
    """Outputs as a custom op must return them: contiguous, not aliasing an input."""
    if out is None:
        return None
    one = isinstance(out, torch.Tensor)
    outs = [out] if one else list(out)
    outs = [t.clone(memory_format=torch.contiguous_format) if _aliases(t, args) else t.contiguous() for t in outs]
    return outs[0] if one else tuple(outs)


def build_op(name: str, d: Definition, dispatch: Callable[[tuple], Any], owner: Any = None):
    """`torch.ops.avo.<name>` for this definition, calling `dispatch(args)`. The op this owner
    already has under that name and schema is reused (its target rebound, e.g. on reload); a name
    taken by another owner or schema gets a suffix (`<name>_2`). None when the outputs' shapes
    cannot be derived from the inputs (no fake implementation)."""
    fake = FakeOutputs(d)
    if not fake.ok:
        return None
    schema = op_schema(d)
    base, n = op_identifier(name), 1
    cur = base
    while cur in _OPS and (_OPS[cur][0] != schema or _OWNERS.get(cur, lambda: None)() not in (None, owner)):
        n += 1
        cur = f"{base}_{n}"
    _TARGETS[cur] = dispatch
    if owner is not None:
        _OWNERS[cur] = weakref.ref(owner)
    if cur in _OPS:
        return _OPS[cur][1]
    lib = _lib()
    lib.define(cur + schema)

    def impl(*args):
        return _own(_TARGETS[cur](args), args)

    lib.impl(cur, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"avo::{cur}", fake, lib=lib)
    op = getattr(torch.ops.avo, cur)
    _OPS[cur] = (schema, op)
    return op
