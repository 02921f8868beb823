"""A kernel file's knobs, read with `ast` and rewritten in place (every other byte of the file
stays as it was).

Declared: `CONFIG = dict(...)` (current values) and `TUNABLES = dict(...)` (allowed values per
knob); a move rewrites the CONFIG assignment. Declared knobs always win.

Discovered, for a Triton kernel that declares none (a user's own kernel, a tutorial's): the
literal values at its launch sites, `kernel[grid](..., BLOCK_M=64, num_warps=4)`, where the
parameter is a `tl.constexpr` power of two (block sizes, tiles, group sizes) or the launch option
`num_warps` / `num_stages` (added to the launch when absent); a name there is followed to its one
literal assignment in the host function or the module (`BLOCK = 128`); and `triton.autotune`
config lists: a list of several configs can be pinned to one (`autotune` 'all'->2), a single
config's literals are knobs like a launch's; and a persistent launch's programs per SM (a literal
times `multi_processor_count` in its grid: `GRID_PER_SM`). Ranges are safe by construction: powers of two
within 8x of the current value (at most 8192), warps 1-16, stages 1-5. A move rewrites those
literals only; the evaluator decides whether the kernel still computes the task."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Optional


class KnobError(Exception):
    """The kernel has no usable CONFIG/TUNABLES; the message is one line."""


@dataclass
class Knobs:
    config: dict[str, Any]  # knob -> current value, in file order
    tunables: dict[str, list[Any]]  # knob -> allowed values
    span: tuple[int, int, int, int]  # CONFIG assignment: lineno, col (bytes), end_lineno, end_col (bytes)
    call_style: bool  # dict(K=v) rather than {"K": v}
    sites: Optional[dict[str, "Site"]] = None  # discovered knobs: where each lives (None: declared)

    @property
    def discovered(self) -> bool:
        return self.sites is not None

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
    """The declared knobs, else those discovered in the kernel's Triton launches."""
    try:
        mod = ast.parse(source)
    except SyntaxError as e:
        raise KnobError(f"kernel does not parse: {e.msg} (line {e.lineno})") from None
    found: dict[str, ast.Assign] = {}
    for node in mod.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("CONFIG", "TUNABLES"):
            found[node.targets[0].id] = node
    if not found:
        return discover_knobs(mod, source)
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


def _offset(lines: list[bytes], lineno: int, col: int) -> int:
    return sum(len(x) for x in lines[:lineno - 1]) + col


def rewrite_config(source: str, knobs: Knobs, config: dict[str, Any]) -> str:
    """The source with the knobs set to `config`: the CONFIG assignment replaced (declared), or
    the literals of the changed knobs (discovered). ast columns are UTF-8 byte offsets."""
    data = source.encode()
    lines = data.splitlines(keepends=True)
    if knobs.sites is None:
        l0, c0, l1, c1 = knobs.span
        start, end = _offset(lines, l0, c0), _offset(lines, l1, c1)
        return (data[:start] + format_config(knobs, config).encode() + data[end:]).decode()
    edits = []
    for k, site in knobs.sites.items():
        v = config.get(k, knobs.config[k])
        if v == knobs.config[k] and type(v) is type(knobs.config[k]):
            continue
        l0, c0, l1, c1 = site.span
        start, end = _offset(lines, l0, c0), _offset(lines, l1, c1)
        if site.kind == "insert":
            text = f", {site.keyword}={v!r}"
        elif site.kind == "pin":
            text = "[" + (site.choices[v] if v != "all" else ", ".join(site.choices)) + "]"
        else:
            text = repr(v)
        edits.append((start, end, text.encode()))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode()


def describe_move(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'BLOCK_SIZE 256->512, num_warps 4->8': the note format the heuristic reads back."""
    return ", ".join(f"{k} {old[k]!r}->{new[k]!r}" for k in new if k in old and new[k] != old[k])


# ---- discovery: the knobs of a Triton kernel that declares none ----
LAUNCH_OPTIONS = {"num_warps": [1, 2, 4, 8, 16], "num_stages": [1, 2, 3, 4, 5]}
DEFAULT_OPTIONS = {"num_warps": 4, "num_stages": 3}  # Triton's defaults on NVIDIA GPUs
MAX_BLOCK = 8192
GRID_PER_SM = [1, 2, 3, 4, 8]  # resident programs per SM of a persistent launch


@dataclass
class Site:
    kind: str  # literal | insert (a launch option added to the call) | pin (an autotune config list)
    span: tuple[int, int, int, int]
    keyword: str = ""  # insert: the launch option's name
    choices: list[str] = field(default_factory=list)  # pin: each config's source text


def _pow2_range(v: int) -> list[int]:
    if v > MAX_BLOCK:
        return [v]
    lo, out, x = max(1, v // 8), [], 1
    while x <= min(v * 8, MAX_BLOCK):
        if x >= lo:
            out.append(x)
        x *= 2
    return out


def _is_pow2_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value > 0 \
        and node.value & (node.value - 1) == 0


def _span(node: ast.AST) -> tuple[int, int, int, int]:
    return node.lineno, node.col_offset, node.end_lineno, node.end_col_offset


def _jit_kernels(mod: ast.Module) -> dict[str, tuple[list[str], set[str], Optional[ast.Call]]]:
    """name -> (parameters, constexpr parameters, its triton.autotune decorator call or None)."""
    out = {}
    for node in mod.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decos = [ast.unparse(d) for d in node.decorator_list]
        if not any(d.split("(")[0].endswith("jit") for d in decos):
            continue
        params = [a.arg for a in node.args.args]
        const = {a.arg for a in node.args.args if a.annotation is not None and ast.unparse(a.annotation).endswith("constexpr")}
        tune = next((d for d in node.decorator_list if isinstance(d, ast.Call)
                     and ast.unparse(d.func).split(".")[-1] == "autotune"), None)
        out[node.name] = (params, const, tune)
    return out


def _single_literal(scope: list[ast.stmt], name: str) -> Optional[ast.Constant]:
    """The literal of `name` when the scope assigns it exactly once, to a literal."""
    hits = [n for n in scope for n in ast.walk(n) if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign))
            and any(isinstance(t, ast.Name) and t.id == name
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
    if len(hits) == 1 and isinstance(hits[0], ast.Assign) and len(hits[0].targets) == 1 \
            and isinstance(hits[0].value, ast.Constant):
        return hits[0].value
    return None


def _single_value(scope: list[ast.stmt], name: str) -> Optional[ast.AST]:
    """The value of `name` when the scope assigns it exactly once (any expression)."""
    hits = [n for n in scope for n in ast.walk(n) if isinstance(n, ast.Assign) and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name) and n.targets[0].id == name]
    return hits[0].value if len(hits) == 1 else None


def _counts_sms(node: ast.AST, scope: list[ast.stmt], mod: ast.Module) -> bool:
    """An expression of the GPU's SM count: `...multi_processor_count`, or a name assigned from it."""
    text = ast.unparse(node)
    if "multi_processor_count" in text:
        return True
    if isinstance(node, ast.Name):
        value = _single_value(scope, node.id) or _single_value(mod.body, node.id)
        return value is not None and "multi_processor_count" in ast.unparse(value)
    return False


def discover_knobs(mod: ast.Module, source: str) -> Knobs:
    kernels = _jit_kernels(mod)
    config: dict[str, Any] = {}
    tunables: dict[str, list[Any]] = {}
    sites: dict[str, Site] = {}
    seen: set[tuple] = set()
    inside = _inside_functions(mod)

    def add(base: str, value: Any, allowed: list[Any], site: Site) -> None:
        if (site.span, site.keyword) in seen or len(allowed) < 2:
            return
        seen.add((site.span, site.keyword))
        name, n = base, 1
        while name in config:
            n += 1
            name = f"{base}_{n}"
        config[name], tunables[name], sites[name] = value, allowed, site

    def literal_knob(base: str, node: ast.AST, scope: list[ast.stmt], option: bool) -> None:
        if isinstance(node, ast.Name):
            node, base = _single_literal(scope, node.id) or _single_literal(mod.body, node.id), node.id
        if node is None or not isinstance(node, ast.Constant) or type(node.value) is not int:
            return
        if option:
            allowed = sorted(set(LAUNCH_OPTIONS[base if base in LAUNCH_OPTIONS else option] + [node.value]))
        elif _is_pow2_int(node):
            allowed = _pow2_range(node.value)
        else:
            return
        add(base, node.value, allowed, Site("literal", _span(node)))

    def grid_factors(grid: ast.AST, scope: list[ast.stmt]) -> None:
        """A persistent launch's programs per SM: `NUM_SMS * 2` (a literal times the SM count) in
        the grid, or in the one assignment of the name the grid is."""
        if isinstance(grid, ast.Name):
            grid = _single_value(scope, grid.id) or _single_value(mod.body, grid.id)
        for node in ast.walk(grid) if grid is not None else []:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                for lit, other in ((node.left, node.right), (node.right, node.left)):
                    if isinstance(lit, ast.Constant) and type(lit.value) is int and 0 < lit.value <= 64 and _counts_sms(other, scope, mod):
                        add("GRID_PER_SM", lit.value, sorted(set(GRID_PER_SM + [lit.value])), Site("literal", _span(lit)))

    for fn in [n for n in mod.body if isinstance(n, ast.FunctionDef)] + [mod]:
        scope = fn.body
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
            target = call.func.value if isinstance(call.func, ast.Subscript) else None
            if not (isinstance(target, ast.Name) and target.id in kernels) or (fn is mod and call in inside):
                continue
            params, const, tune = kernels[target.id]
            grid_factors(call.func.slice, scope)
            for i, arg in enumerate(call.args):
                if i < len(params) and params[i] in const:
                    literal_knob(params[i], arg, scope, False)
            given = set()
            for kw in call.keywords:
                given.add(kw.arg)
                if kw.arg in const:
                    literal_knob(kw.arg, kw.value, scope, False)
                elif kw.arg in LAUNCH_OPTIONS and tune is None:
                    literal_knob(kw.arg, kw.value, scope, kw.arg)
            if tune is None and (call.args or call.keywords):
                last = max([*call.args, *(k.value for k in call.keywords)], key=lambda n: (n.end_lineno, n.end_col_offset))
                end = (last.end_lineno, last.end_col_offset, last.end_lineno, last.end_col_offset)
                for opt in LAUNCH_OPTIONS:
                    if opt not in given:
                        add(opt, DEFAULT_OPTIONS[opt], LAUNCH_OPTIONS[opt], Site("insert", end, keyword=opt))
    for name, (_, _, tune) in kernels.items():
        cfgs = next((kw.value for kw in (tune.keywords if tune else []) if kw.arg == "configs"), None)
        if not isinstance(cfgs, ast.List) or not cfgs.elts:
            continue
        if len(cfgs.elts) > 1:
            choices = [ast.get_source_segment(source, e) or ast.unparse(e) for e in cfgs.elts]
            add("autotune", "all", ["all", *range(len(cfgs.elts))], Site("pin", _span(cfgs), choices=choices))
            continue
        one = cfgs.elts[0]
        if isinstance(one, ast.Call) and one.args and isinstance(one.args[0], ast.Dict):
            for k, v in zip(one.args[0].keys, one.args[0].values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and _is_pow2_int(v):
                    add(k.value, v.value, _pow2_range(v.value), Site("literal", _span(v)))
        for kw in getattr(one, "keywords", []):
            if kw.arg in LAUNCH_OPTIONS and isinstance(kw.value, ast.Constant) and type(kw.value.value) is int:
                add(kw.arg, kw.value.value, sorted(set(LAUNCH_OPTIONS[kw.arg] + [kw.value.value])),
                    Site("literal", _span(kw.value)))
    if not config:
        raise KnobError("kernel has no module-level CONFIG and TUNABLES, and no Triton launch with knobs to turn "
                        "(tl.constexpr powers of two, num_warps, num_stages, autotune configs, programs per SM)")
    return Knobs(config=config, tunables=tunables, span=(0, 0, 0, 0), call_style=True, sites=sites)


def _inside_functions(mod: ast.Module) -> set[ast.AST]:
    return {n for f in mod.body if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
