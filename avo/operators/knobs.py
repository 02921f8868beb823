"""A kernel file's knobs: `CONFIG = dict(...)` (current values) and `TUNABLES = dict(...)` (allowed
values per knob), read with `ast` and rewritten in place: only the CONFIG assignment changes,
every other byte of the file stays as it was."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any


class KnobError(Exception):
    """The kernel has no usable CONFIG/TUNABLES; the message is one line."""


@dataclass
class Knobs:
    config: dict[str, Any]  # knob -> current value, in file order
    tunables: dict[str, list[Any]]  # knob -> allowed values
    span: tuple[int, int, int, int]  # CONFIG assignment: lineno, col (bytes), end_lineno, end_col (bytes)
    call_style: bool  # dict(K=v) rather than {"K": v}

    @property
    def mutable(self) -> list[str]:
        """Knobs with a current value and more than one allowed value."""
        return [k for k in self.config if k in self.tunables and len(self.tunables[k]) > 1]

    def index(self, knob: str, value: Any) -> int:
        """Position of a value in the knob's allowed list; the nearest one for an off-grid number."""
        allowed = self.tunables[knob]
        for i, v in enumerate(allowed):
            if type(v) is type(value) and v == value:
                return i
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in allowed):
            return min(range(len(allowed)), key=lambda i: abs(allowed[i] - value))
        return 0


def _literal_dict(node: ast.AST, what: str) -> tuple[dict[str, Any], bool]:
    try:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}, True
        if isinstance(node, ast.Dict):
            return {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(node.keys, node.values)}, False
    except ValueError:
        raise KnobError(f"{what} holds a value that is not a literal") from None
    raise KnobError(f"{what} must be dict(...) or a {{...}} literal")


def parse_knobs(source: str) -> Knobs:
    try:
        mod = ast.parse(source)
    except SyntaxError as e:
        raise KnobError(f"kernel does not parse: {e.msg} (line {e.lineno})") from None
    found: dict[str, ast.Assign] = {}
    for node in mod.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("CONFIG", "TUNABLES"):
            found[node.targets[0].id] = node
    if "CONFIG" not in found or "TUNABLES" not in found:
        missing = " and ".join(n for n in ("CONFIG", "TUNABLES") if n not in found)
        raise KnobError(f"kernel has no module-level {missing} = dict(...)")
    config, call_style = _literal_dict(found["CONFIG"].value, "CONFIG")
    tunables, _ = _literal_dict(found["TUNABLES"].value, "TUNABLES")
    for k, v in tunables.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise KnobError(f"TUNABLES[{k!r}] must be a non-empty list of allowed values")
    # The kernel convention: a knob listed in TUNABLES but absent from CONFIG runs at its first
    # allowed value. Make it explicit so the search can move it (rewrites then list it in CONFIG).
    for k, v in tunables.items():
        config.setdefault(k, v[0])
    node = found["CONFIG"]
    return Knobs(config=config, tunables={k: list(v) for k, v in tunables.items()},
                 span=(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset), call_style=call_style)


def format_config(knobs: Knobs, config: dict[str, Any]) -> str:
    if knobs.call_style and all(k.isidentifier() for k in config):
        return "CONFIG = dict(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"
    return "CONFIG = {" + ", ".join(f"{k!r}: {v!r}" for k, v in config.items()) + "}"


def rewrite_config(source: str, knobs: Knobs, config: dict[str, Any]) -> str:
    """The source with the CONFIG assignment replaced; ast columns are UTF-8 byte offsets."""
    data = source.encode()
    lines = data.splitlines(keepends=True)
    l0, c0, l1, c1 = knobs.span
    start = sum(len(x) for x in lines[:l0 - 1]) + c0
    end = sum(len(x) for x in lines[:l1 - 1]) + c1
    return (data[:start] + format_config(knobs, config).encode() + data[end:]).decode()


def describe_move(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'BLOCK_SIZE 256->512, num_warps 4->8': the note format the heuristic reads back."""
    return ", ".join(f"{k} {old[k]!r}->{new[k]!r}" for k in new if k in old and new[k] != old[k])
