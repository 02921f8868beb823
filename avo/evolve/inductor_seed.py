"""A Triton seed for a problem that comes with only a PyTorch reference: TorchInductor's output for
the reference, captured at code generation and rewritten into a standalone avo kernel file (plain
@triton.jit kernels, Inductor's host code as torch calls, one launcher per kernel whose block sizes
and warps are CONFIG/TUNABLES knobs, and a destination-passing `run`). It runs without
torch.compile at call time, so the evaluator times the kernels and nothing else.

Made in a subprocess (`python -m avo.evolve.inductor_seed JOB.json`): the reference is the
problem's code, Inductor's compile is slow and may hang, and on a machine without a GPU the
generator patches one Inductor hook (the Triton backend hash, which needs a driver) in that
process only. Anything the rewrite does not cover (templates, cpp kernels, graph breaks, library
calls other than matmuls) is refused with a reason, and the caller falls back to the plain
reference seed. The seed is still evaluated on every workload before it is committed."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

INDUCTOR_SEED = "<inductor>"  # TaskSetup.seed_path of a seed made by Inductor from the reference
_EXTERN = {"mm", "addmm", "bmm", "baddbmm"}  # extern_kernels.X(..., out=) -> torch.X(..., out=)
_BLOCKS = ("XBLOCK", "YBLOCK", "ZBLOCK", "R0_BLOCK")
_HEADER_NAMES = {"torch", "triton", "tl", "tl_math", "libdevice", "aten", "math", "inf", "nan"}


class SeedRefused(Exception):
    """The reference's Inductor output uses something the rewrite does not cover (one line)."""


# ---------------------------------------------------------------- rewrite (pure text -> text)

def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _knobs(i: int, kind: str, blocks: list[str], hints: dict, reduction_hint: str) -> tuple[dict, dict]:
    """Default launch configuration of kernel i and the values the offline operator may try."""
    k = f"K{i}_"
    cfg, tun = {}, {}
    rhint = _pow2(hints.get("r0_", 1))
    if kind == "pointwise":
        if "YBLOCK" in blocks:
            cfg.update({k + "XBLOCK": 64, k + "YBLOCK": 32})
            tun.update({k + "XBLOCK": [8, 16, 32, 64, 128, 256], k + "YBLOCK": [8, 16, 32, 64, 128, 256]})
        else:
            cfg[k + "XBLOCK"] = 1024
            tun[k + "XBLOCK"] = [128, 256, 512, 1024, 2048, 4096]
        cfg[k + "num_warps"] = 4
        tun[k + "num_warps"] = [1, 2, 4, 8, 16]
        return cfg, tun
    if kind == "persistent_reduction":  # R0_BLOCK is fixed inside the kernel; rows per program tune
        if "XBLOCK" in blocks:
            cfg[k + "XBLOCK"] = max(1, min(64, 4096 // rhint))
            tun[k + "XBLOCK"] = [1, 2, 4, 8, 16, 32, 64]
        cfg[k + "num_warps"] = max(1, min(8, cfg.get(k + "XBLOCK", 1) * rhint // 512))
        tun[k + "num_warps"] = [1, 2, 4, 8, 16]
        return cfg, tun
    # looped reduction
    outer = reduction_hint == "OUTER"
    cfg.update({k + "XBLOCK": 64 if outer else 1, k + "R0_BLOCK": 8 if outer else min(2048, rhint)})
    tun.update({k + "XBLOCK": [1, 2, 4, 8, 16, 32, 64, 128], k + "R0_BLOCK": [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]})
    if cfg[k + "R0_BLOCK"] not in tun[k + "R0_BLOCK"]:
        tun[k + "R0_BLOCK"].insert(0, cfg[k + "R0_BLOCK"])
    cfg.update({k + "num_warps": 4 if outer else 8, k + "num_stages": 1})
    tun.update({k + "num_warps": [1, 2, 4, 8, 16], k + "num_stages": [1, 2, 3, 4]})
    return cfg, tun


def _helpers(used: set[str]) -> str:
    """The @triton.jit helpers of Inductor's triton_helpers the kernels call, copied in (renamed
    th_<name>), with the helpers they call in turn."""
    if not used:
        return ""
    from torch._inductor.runtime import triton_helpers as th
    mod = ast.parse(Path(th.__file__).read_text())
    funcs = {n.name: n for n in mod.body if isinstance(n, ast.FunctionDef)
             and any("jit" in ast.unparse(d) for d in n.decorator_list)}
    todo, seen = sorted(used), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in funcs:
            raise SeedRefused(f"Inductor's kernels call triton_helpers.{name}, which is not a @triton.jit helper")
        seen.append(name)
        todo += [n.id for n in ast.walk(funcs[name]) if isinstance(n, ast.Name) and n.id in funcs]
    out = []
    for name in sorted(seen):
        fn = funcs[name]

        class Rename(ast.NodeTransformer):
            def visit_Name(self, node):
                if node.id in funcs:
                    node.id = "th_" + node.id
                elif node.id == "math":
                    node.id = "tl_math"
                elif node.id == "_LOG_2_E":
                    node.id = "TH_LOG_2_E"
                return node

        fn = Rename().visit(fn)
        fn.name = "th_" + name
        fn.decorator_list = [ast.parse("triton.jit", mode="eval").body]
        out.append(ast.unparse(fn))
    return "\n\n\n".join(out)


# libdevice calls the Triton interpreter runs (as tl.math); a CPU-made seed uses these instead
_INTERPRETABLE = {"abs", "ceil", "cos", "erf", "exp", "exp2", "floor", "fma", "log", "log2", "rsqrt", "sin", "sqrt"}


class _Kernel:
    def __init__(self, i: int, name: str, src: str, interpret: bool = False):
        self.i, self.name = i, name
        mod = ast.parse(src)
        fns = [n for n in mod.body if isinstance(n, ast.FunctionDef)]
        if len(fns) != 1:
            raise SeedRefused(f"kernel {name}: {len(fns)} functions in its source")
        fn = fns[0]
        heur = [d for d in fn.decorator_list if isinstance(d, ast.Call) and "triton_heuristics" in ast.unparse(d.func)]
        if not heur:
            raise SeedRefused(f"kernel {name}: no triton_heuristics decorator")
        self.kind = ast.unparse(heur[0].func).rsplit(".", 1)[-1]
        if self.kind not in ("pointwise", "reduction", "persistent_reduction"):
            raise SeedRefused(f"kernel {name}: Inductor {self.kind} kernels are not rewritten (pointwise and reductions are)")
        kw = {k.arg: k.value for k in heur[0].keywords}
        self.hints = ast.literal_eval(kw["size_hints"]) if "size_hints" in kw else {}
        rh = ast.unparse(kw["reduction_hint"]) if "reduction_hint" in kw else ""
        meta = ast.unparse(kw.get("inductor_meta", ast.Constant("")))
        m = re.search(r"'grid_type': '(\w+)'", meta)
        self.grid = m.group(1) if m else "Grid1D"
        if self.grid not in ("Grid1D", "Grid2D", "Grid3D", "Grid2DWithYZOverflow"):
            raise SeedRefused(f"kernel {name}: grid {self.grid} is not rewritten")
        fn.decorator_list = [ast.parse("triton.jit", mode="eval").body]
        args = fn.args.args
        self.blocks = [a.arg for a in args if a.annotation is not None and "constexpr" in ast.unparse(a.annotation)]
        extra = [b for b in self.blocks if b not in _BLOCKS]
        if extra:
            raise SeedRefused(f"kernel {name}: constexpr parameters {extra} are not rewritten")
        self.params = [a.arg for a in args if a.arg not in self.blocks]
        for dim in ("xnumel", "ynumel", "znumel"):
            if dim[0].upper() + "BLOCK" in self.blocks and dim not in self.params:
                raise SeedRefused(f"kernel {name}: no {dim} parameter for its grid")

        class Helpers(ast.NodeTransformer):
            def __init__(self):
                self.used: set[str] = set()

            def visit_Attribute(self, node):
                self.generic_visit(node)
                if isinstance(node.value, ast.Name) and node.value.id == "triton_helpers":
                    self.used.add(node.attr)
                    return ast.copy_location(ast.Name(id="th_" + node.attr, ctx=node.ctx), node)
                if interpret and isinstance(node.value, ast.Name) and node.value.id == "libdevice":
                    if node.attr not in _INTERPRETABLE:
                        raise SeedRefused(f"kernel {name}: libdevice.{node.attr} does not run in the Triton interpreter")
                    return ast.copy_location(ast.parse(f"tl.math.{node.attr}", mode="eval").body, node)
                return node

        h = Helpers()
        fn = h.visit(fn)
        self.helpers = h.used
        self.source = ast.unparse(fn)
        self.config, self.tunables = _knobs(i, self.kind, self.blocks, self.hints, rh.rsplit(".", 1)[-1])

    def launcher(self) -> str:
        k = f"K{self.i}_"
        lines = [f"def launch_{self.i}({', '.join(self.params)}):",
                 f'    """{self.name}: Inductor {self.kind}, grid {self.grid}."""']
        blocks = {b: (f'CONFIG["{k}{b}"]' if k + b in self.config else None) for b in self.blocks}
        for b, expr in blocks.items():
            if expr is None:
                raise SeedRefused(f"kernel {self.name}: no default for {b}")
            lines.append(f"    {b} = {expr}")
        xb = "XBLOCK" if "XBLOCK" in self.blocks else "1"
        gx = f"triton.cdiv(xnumel, {xb})"
        if self.grid == "Grid1D":
            grid = f"({gx},)"
        elif self.grid == "Grid2D":
            grid = f"({gx}, triton.cdiv(ynumel, YBLOCK))"
        elif self.grid == "Grid3D":
            grid = f"({gx}, triton.cdiv(ynumel, YBLOCK), triton.cdiv(znumel, ZBLOCK))"
        else:  # Grid2DWithYZOverflow: y blocks past the hardware's y limit spill into z
            lines += ["    y_raw = triton.cdiv(ynumel, YBLOCK)", "    y_div = triton.cdiv(y_raw, 65535)"]
            grid = f"({gx}, 0 if y_div == 0 else triton.cdiv(y_raw, y_div), y_div)"
        lines.append(f"    grid = {grid}")
        lines.append("    if 0 in grid:\n        return")
        opts = [f"{b}={b}" for b in self.blocks] + [f'{o}=CONFIG["{k}{o}"]' for o in ("num_warps", "num_stages")
                                                     if k + o in self.config]
        lines.append(f"    {self.name}[grid]({', '.join(self.params + opts)})")
        return "\n".join(lines)


def _call_body(code: str, kernels: dict[str, _Kernel]) -> ast.FunctionDef:
    """Inductor's `call(args)` as `inductor_call(args, outs)`: buffers and views as torch calls,
    kernel launches through the launchers, a returned buffer allocated as the harness's output."""
    mod = ast.parse(code)
    calls = [n for n in ast.walk(mod) if isinstance(n, ast.FunctionDef) and n.name == "call"]
    if len(calls) != 1:
        raise SeedRefused(f"Inductor's wrapper has {len(calls)} call() functions")
    fn = calls[0]
    ret = [n for n in fn.body if isinstance(n, ast.Return)]
    returned = [e.id if isinstance(e, ast.Name) else None
                for e in (ret[-1].value.elts if ret and isinstance(ret[-1].value, ast.Tuple) else [])]
    assigned: dict[str, int] = {}
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    assigned[t.id] = assigned.get(t.id, 0) + 1

    class Rewrite(ast.NodeTransformer):
        def visit_Expr(self, node):
            c = node.value
            if isinstance(c, ast.Call):
                f = ast.unparse(c.func)
                if f in ("assert_size_stride", "assert_alignment", "args.clear"):
                    return None
            self.generic_visit(node)
            return node

        def visit_Assign(self, node):
            if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "get_raw_stream":
                return None
            target = node.targets[0].id if isinstance(node.targets[0], ast.Name) else None
            v = node.value
            if (isinstance(v, ast.Call) and ast.unparse(v.func).startswith("empty_strided_")
                    and target in returned and assigned.get(target) == 1):
                i = returned.index(target)
                node.value = ast.Call(func=ast.Name("output_or_new", ast.Load()),
                                      args=[ast.Name("outs", ast.Load()), ast.Constant(i), *v.args], keywords=[])
                return node
            self.generic_visit(node)
            return node

        def visit_Call(self, node):
            self.generic_visit(node)
            f = ast.unparse(node.func)
            if f.startswith("empty_strided_"):
                node.func = ast.parse("torch.empty_strided", mode="eval").body
                if len(node.args) == 3:
                    node.keywords.append(ast.keyword("dtype", node.args.pop()))
                node.keywords.append(ast.keyword("device", ast.Name("device", ast.Load())))
            elif f == "reinterpret_tensor":
                node.func = ast.parse("torch.as_strided", mode="eval").body
            elif f.startswith("extern_kernels."):
                op = f.split(".", 1)[1]
                if op not in _EXTERN:
                    raise SeedRefused(f"Inductor calls extern_kernels.{op}, which the rewrite does not map")
                node.func = ast.parse(f"torch.{op}", mode="eval").body
            elif f.endswith(".run") and f[:-4] in kernels:
                kern = kernels[f[:-4]]
                node.keywords = [k for k in node.keywords if k.arg != "stream"]
                if node.keywords or len(node.args) != len(kern.params):
                    raise SeedRefused(f"kernel {kern.name}: launched with {len(node.args)} arguments for "
                                      f"{len(kern.params)} parameters")
                node.func = ast.Name(f"launch_{kern.i}", ast.Load())
            return node

    fn = Rewrite().visit(fn)
    fn.name = "inductor_call"
    fn.args = ast.arguments(posonlyargs=[], args=[ast.arg("args"), ast.arg("outs"), ast.arg("device")],
                            kwonlyargs=[], kw_defaults=[], defaults=[])
    fn.decorator_list = []
    ast.fix_missing_locations(fn)
    # every name the body reads must be its own, an argument, or the file's header
    stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
    known = stored | {"args", "outs", "device", "output_or_new"} | _HEADER_NAMES | {f"launch_{k.i}" for k in kernels.values()}
    import builtins
    loose = sorted({n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                    and n.id not in known and not hasattr(builtins, n.id)})
    if loose:
        raise SeedRefused(f"Inductor's host code uses {', '.join(loose[:4])}, which the rewrite does not map")
    return fn


def rewrite(code: str, arg_exprs: list[str], ins: list[str], outs: list[str], out_order: list[int],
            title: str, interpret: bool = False) -> str:
    """Inductor's wrapper module `code` as an avo kernel file. `arg_exprs`: each graph input as an
    expression in `ins` (`x`, `x.size()[0]`); `out_order[j]`: the output that graph result j fills."""
    mod = ast.parse(code)
    kernels: dict[str, _Kernel] = {}
    for node in mod.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func).startswith("async_compile.")):
            kind = ast.unparse(node.value.func).split(".", 1)[1]
            name = node.targets[0].id
            if kind != "triton":
                raise SeedRefused(f"Inductor made a {kind} kernel ({name}); only Triton kernels are rewritten")
            kernels[name] = _Kernel(len(kernels), name, node.value.args[1].value, interpret)
    if not kernels:
        raise SeedRefused("Inductor made no Triton kernel for the reference (library calls only)")
    body = _call_body(code, kernels)
    config, tunables = {}, {}
    for k in kernels.values():
        config.update(k.config)
        tunables.update(k.tunables)
    helpers = _helpers(set().union(*(k.helpers for k in kernels.values())))
    first_tensor = next((e for e in arg_exprs if e.isidentifier()), ins[0] if ins else None)
    sig = ", ".join(ins + outs)
    outs_by_result = "[" + ", ".join(outs[j] for j in out_order) + "]"
    tun = "TUNABLES = dict(\n" + "".join(f"    {k}={v!r},\n" for k, v in tunables.items()) + ")"
    parts = [
        f'"""{title}"""',
        "from math import inf, nan\n\nimport torch\nimport triton\nimport triton.language as tl\n"
        "from triton.language.extra import libdevice\n\ntl_math = tl.math\naten = torch.ops.aten\n"
        + ("TH_LOG_2_E: tl.constexpr = tl.constexpr(1.4426950408889634)\n" if "TH_LOG_2_E" in helpers else ""),
        "# Launch configuration per kernel (K<i>_ = the i-th kernel below) and the values the offline\n"
        "# operator may try; Inductor's own autotuner is not used at call time.\n"
        f"CONFIG = dict({', '.join(f'{k}={v!r}' for k, v in config.items())})\n{tun}",
    ]
    if helpers:
        parts.append("# Inductor's triton_helpers these kernels call, copied in so the file stands alone.\n" + helpers)
    parts += [k.source for k in kernels.values()]
    parts += [k.launcher() for k in kernels.values()]
    parts.append('def output_or_new(outs, i, size, stride, dtype):\n'
                 '    """The harness\'s output buffer where Inductor allocates a returned buffer of the same layout."""\n'
                 '    o = outs[i] if i < len(outs) else None\n'
                 '    if o is not None and tuple(o.shape) == tuple(size) and tuple(o.stride()) == tuple(stride) and o.dtype == dtype:\n'
                 '        return o\n'
                 '    return torch.empty_strided(size, stride, dtype=dtype, device=outs[0].device if outs else "cpu")')
    parts.append("# Inductor's host code for the reference (its call()), with torch calls for its buffers.\n" + ast.unparse(body))
    run = [f"def run({sig}):",
           f"    results = inductor_call([{', '.join(arg_exprs)}], {outs_by_result}, {first_tensor}.device)"]
    if outs:
        run.append(f"    for o, r in zip({outs_by_result}, results):\n        if r is not o:\n            o.copy_(r)")
    parts.append("\n".join(run))
    return "\n\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- generation (subprocess side)

def _capture(task, workload, device: str) -> str:
    """Compile the reference with Inductor on one workload's inputs (var axes dynamic) and rewrite
    what it generated. Runs in the generator subprocess."""
    import torch
    import torch._dynamo
    import torch._inductor.config as icfg
    from torch._inductor.graph import GraphLowering
    from avo.harness import inputs as inp
    from avo.tasks import _ident

    d = task.definition
    dev = "cuda" if device == "cuda" else "cpu"
    if dev == "cpu":  # Inductor's Triton CPU path: code generation only (no driver to compile for)
        icfg.cpu_backend = "triton"
        import torch._inductor.codegen.triton as ct
        import torch.utils._triton as ut
        ct.triton_hash_with_backend = ut.triton_hash_with_backend = lambda: "avo-codegen"
    try:
        import torch.fx.experimental._config as fxc
        fxc.use_duck_shape = False  # two var axes with equal sample values stay two symbols
    except (ImportError, AttributeError):
        pass
    captured: list[str] = []
    codegen = GraphLowering.codegen

    def keep(self, *a, **k):
        r = codegen(self, *a, **k)
        code = r[0] if isinstance(r, tuple) else r
        captured.append(getattr(code, "value", code))
        return r

    GraphLowering.codegen = keep
    ns: dict = {}
    exec(compile(d.reference, f"<{d.name}/reference>", "exec"), ns)
    import inspect
    ref = inspect.unwrap(ns["run"])  # past @torch.no_grad() and the like: the capture runs under no_grad
    root = Path(task.root) if task.root else None
    x = inp.make_inputs(d, workload, 0, dev, ns.get("make_inputs"), root,
                        ns.get(d.custom_inputs_entrypoint) if d.custom_inputs_entrypoint else None)
    args = [x[n] for n in d.inputs]
    var = {k for k, a in d.axes.items() if a.type == "var"}
    for n, t in zip(d.inputs, args):
        for i, ax in enumerate(d.inputs[n].shape or []):
            if isinstance(t, torch.Tensor) and ax in var:
                torch._dynamo.maybe_mark_dynamic(t, i)
    ins = [_ident(n, f"in{i}") for i, n in enumerate(d.inputs)]
    outs = [_ident(n, f"out{i}") for i, n in enumerate(d.outputs)]
    # traced through a function whose arguments are the kernel's own names: graph inputs then
    # read L['<name>'] whatever the reference calls them (or however it is decorated)
    wrap_ns = {"reference_run": ref}
    exec(f"def traced({', '.join(ins)}):\n    return reference_run({', '.join(ins)})\n", wrap_ns)
    by_param = {n: n for n in ins}
    sources: list[str] = []

    def backend(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        sources.clear()
        captured.clear()
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                ga = node.meta.get("grapharg")
                src = ga.source.name if ga is not None else None
                src = src() if callable(src) else src
                m = re.fullmatch(r"L\['(\w+)'\](.*)", src or "")
                va = re.fullmatch(r"L\['args'\]\[(\d+)\](.*)", src or "")  # a *args frame Dynamo entered
                if va and int(va.group(1)) < len(ins):
                    m = re.fullmatch(r"(\w+)(.*)", ins[int(va.group(1))] + va.group(2))
                if not m or m.group(1) not in by_param:
                    raise SeedRefused(f"graph input {src!r} is not one of the reference's arguments")
                expr = by_param[m.group(1)] + m.group(2)
                if getattr(ga, "pass_arg_as_tensor", False):  # Dynamo passes a Python float as a 0-d tensor
                    expr = f"torch.tensor({expr}, dtype=torch.float64)"
                sources.append(expr)
        try:
            return compile_fx(gm, example_inputs)
        except Exception:
            if captured and dev == "cpu":  # generated, then not compilable without a driver: enough
                return gm.forward
            raise

    torch._dynamo.reset()
    with torch.no_grad():
        expect = ref(*args)
        try:
            compiled = torch.compile(wrap_ns["traced"], backend=backend, fullgraph=True)
            compiled(*args)
            # Dynamo bakes a Python scalar into the first graph; a second call with other values
            # recompiles with the scalars as graph inputs (its "automatic dynamic")
            if any(type(a) in (int, float) for a in args):
                compiled(*[a * 2 + 1 if type(a) in (int, float) else a for a in args])
        except SeedRefused:
            raise
        except Exception as e:
            if not captured:
                raise SeedRefused(f"torch.compile of the reference failed: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]}") from None
    if len(captured) != 1:
        raise SeedRefused(f"Inductor compiled {len(captured)} graphs for the reference (one is rewritten)")
    if isinstance(expect, dict):
        keys = list(expect)
        order = [list(d.outputs).index(k) for k in keys if k in d.outputs]
    else:
        n = len(expect) if isinstance(expect, (tuple, list)) else (0 if expect is None else 1)
        order = list(range(n))
    if len(order) != len(outs):
        raise SeedRefused(f"the reference returns {len(order)} results for {len(outs)} outputs")
    title = (f"Seed of {d.name}, made by avo from the task's reference with TorchInductor (torch "
             f"{torch.__version__.split('+')[0]}, generated for {'CUDA' if dev == 'cuda' else 'the CPU Triton path'}):\n"
             "Inductor's Triton kernels, rewritten to run without torch.compile. Launch knobs are in CONFIG.")
    return rewrite(captured[0], sources, ins, outs, order, title, interpret=dev == "cpu")


def main(argv: Optional[list[str]] = None) -> int:
    from avo.schema import Workload
    from avo.tasks import Task
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    task = Task.model_validate(job["task"])
    try:
        src = _capture(task, Workload.model_validate(job["workload"]), job["device"])
        ast.parse(src)
        result = {"source": src}
    except SeedRefused as e:
        result = {"refused": str(e)}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- orchestrator side

def cache_dir() -> Path:
    return Path(os.environ.get("AVO_CACHE", Path.home() / ".cache" / "avo")) / "inductor_seeds"


def make_inductor_seed(task, workloads: list, device: str, timeout_s: float = 300.0) -> tuple[Optional[str], str]:
    """(kernel source, "") or (None, why not). Cached by the reference, workloads, device and torch
    version, so a resumed run gets the same seed (its hash is part of the run's identity)."""
    import hashlib
    from importlib.metadata import version
    # a sample whose var axes are all >= 2: Dynamo specialises a size of 1 into the code
    var = [k for k, a in task.definition.axes.items() if a.type == "var"]
    w = next((x for x in workloads if all(x.axes.get(k, 2) >= 2 for k in var)), workloads[0])
    key = hashlib.sha256(json.dumps([task.definition.model_dump(mode="json"), w.model_dump(mode="json"),
                                     device, version("torch")], sort_keys=True).encode()).hexdigest()[:24]
    cached = cache_dir() / f"{key}.py"
    if cached.exists():
        return cached.read_text(), ""
    with tempfile.TemporaryDirectory(prefix="avo-inductor-") as tmp:
        jpath, rpath = Path(tmp) / "job.json", Path(tmp) / "result.json"
        jpath.write_text(json.dumps({"task": task.model_dump(mode="json"), "workload": w.model_dump(mode="json"),
                                     "device": device, "result": str(rpath)}))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        try:
            p = subprocess.run([sys.executable, "-m", "avo.evolve.inductor_seed", str(jpath)], env=env, cwd=tmp,
                               capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"Inductor took longer than {timeout_s:.0f} s"
        if not rpath.exists():
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
            return None, f"the Inductor generator failed: {tail[0][:200]}"
        result = json.loads(rpath.read_text())
    if "refused" in result:
        return None, result["refused"]
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(result["source"])
    return result["source"], ""


if __name__ == "__main__":
    sys.exit(main())
