"""Reward-hack checks. Static: an AST scan of the candidate's sources before anything runs.
Runtime (in the worker): identity of timing/harness/torch functions, global torch settings, Python
threads, forbidden aten ops. Each check returns a short name that lands in the trace.

The static scan is the first line, not the only one: Python is too dynamic for an AST scan to be
complete, so every hack it misses must still trip a runtime check (tests/adversarial proves both
layers; peer mode runs the runtime layer alone). C/C++/CUDA sources are not Python: they get only
the forbidden-call rule (scan_native_source)."""
from __future__ import annotations

import _thread
import ast
import re
import sys
import threading
from typing import Any, Optional

# Modules a kernel may import. Everything else (os, sys, threading, ctypes, gc, inspect, time,
# subprocess, importlib, pickle, avo, ...) has no business in a kernel and opens a hack.
ALLOWED_MODULES = ("torch", "triton", "math", "functools", "typing", "itertools", "dataclasses",
                   "numpy", "operator", "collections", "enum", "__future__")
# Dotted paths inside the allowed packages that a kernel must not import or touch: process/thread
# spawning, native-code loading, pickle/file loaders, aten overrides, and global settings that
# would slow the baseline (which runs in the same process) or change numerics behind its back.
DENIED_PATHS = (
    "torch.multiprocessing", "torch.utils._python_dispatch", "torch.overrides", "torch._C",
    "torch.cuda.streams", "torch._dynamo", "triton.testing", "torch.utils.cpp_extension",
    "torch.utils.data", "torch.hub", "torch.package", "torch.library", "torch.distributed",
    "torch.load", "torch.save", "torch.from_file", "torch.classes", "torch.ops.load_library",
    "torch.jit.load", "torch.backends", "torch.set_num_threads", "torch.set_num_interop_threads",
    "torch.set_float32_matmul_precision", "torch.set_default_dtype", "torch.set_default_device",
    "torch.set_default_tensor_type", "torch.set_flush_denormal", "torch.use_deterministic_algorithms",
    "torch.set_deterministic_debug_mode", "torch.cuda.set_per_process_memory_fraction",
    "torch.cuda.memory", "torch.cuda.set_sync_debug_mode", "torch.cuda.set_stream",
    "numpy.load", "numpy.save", "numpy.fromfile", "numpy.memmap", "numpy.ctypeslib", "numpy.f2py",
    "numpy.distutils", "numpy.testing", "numpy.lib.format", "numpy.loadtxt", "numpy.genfromtxt",
    "numpy.DataSource", "triton.runtime.build", "triton.tools", "triton.knobs",
    "operator.attrgetter", "operator.methodcaller", "typing.get_type_hints", "typing.ForwardRef",
)
# Inside a denied path, what a kernel may still use: TMA's host-side descriptor is a plain record of
# pointer, shape, strides and block shape (triton.tools otherwise holds compilers and disassemblers).
ALLOWED_INSIDE_DENIED = ("triton.tools.tensor_descriptor",)
# Builtins that run or reach code by name. Flagged wherever they are referenced (called or passed
# as a value, e.g. functools.reduce(getattr, ...)) unless the module binds the name itself.
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "open", "setattr",
                   "delattr", "breakpoint", "input", "memoryview", "help", "exit", "quit", "__build_class__"}
# attribute -> why it is a hack vector
BANNED_ATTRS = {
    "Stream": "side-stream", "stream": "side-stream", "ExternalStream": "side-stream",
    "set_stream": "side-stream", "current_stream": "side-stream", "default_stream": "side-stream",
    "StreamContext": "side-stream", "default_capture_stream": "side-stream", "wait_stream": "side-stream",
    "Event": "timer", "elapsed_time": "timer", "record_stream": "side-stream",
    "synchronize": "timer", "_C": "internals", "do_bench": "timer",
    "data_ptr": "pointer-cache", "untyped_storage": "pointer-cache", "_cdata": "pointer-cache",
    "storage": "pointer-cache", "set_": "output-replaced",
    "as_subclass": "tensor-subclass", "_make_subclass": "tensor-subclass", "_make_wrapper_subclass": "tensor-subclass",
    "Thread": "thread", "Timer": "thread",
}
# Attribute names that lead out of the sandbox whatever object they hang on: banned modules
# re-exported by allowed ones (torch.sys, torch.os, dataclasses.inspect, ...), frames, code objects.
ESCAPE_ATTRS = {
    "sys", "_sys", "os", "time", "threading", "_thread", "ctypes", "ctypeslib", "gc", "inspect",
    "importlib", "builtins", "bltns", "subprocess", "signal", "multiprocessing", "mp",
    "python_multiprocessing", "reducer", "reduction", "socket", "pickle", "marshal", "shutil",
    "tempfile", "types", "modules", "environ", "getenv", "system", "popen", "settrace", "setprofile",
    "tb_frame", "tb_next", "gi_frame", "cr_frame", "ag_frame", "gi_code", "f_back", "f_globals",
    "f_locals", "f_builtins", "f_code", "co_code", "attrgetter", "methodcaller", "get_type_hints",
    "ForwardRef", "cpp_extension", "load_inline", "load_library", "CodeType", "FunctionType",
}
# Dunder attributes a kernel may use; every other one (__dict__, __class__, __globals__,
# __subclasses__, __code__, __traceback__, __wrapped__, ...) is introspection.
ALLOWED_DUNDERS = {"__init__", "__name__", "__doc__", "__qualname__", "__post_init__", "__len__",
                   "__enter__", "__exit__"}
# Hooks a class must not define: they let a value intercept torch calls, GC or class creation.
BANNED_HOOKS = {"__torch_function__", "__torch_dispatch__", "__del__", "__init_subclass__", "__set_name__",
                "__instancecheck__", "__subclasscheck__", "__subclasshook__", "__array_ufunc__",
                "__array_function__", "__array_finalize__", "__array_wrap__", "__reduce__", "__reduce_ex__",
                "__getattribute__", "__class_getitem__", "__cuda_array_interface__", "__dlpack__",
                "__array_interface__"}
# Names whose attributes a kernel may assign (its own objects); anything else is a patch.
OWN_OBJECTS = {"self", "cls"}


class StaticFinding(Exception):
    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


def _denied(path: str) -> Optional[str]:
    if any(path == a or path.startswith(a + ".") for a in ALLOWED_INSIDE_DENIED):
        return None
    return next((b for b in DENIED_PATHS if path == b or path.startswith(b + ".")), None)


def _module_ok(mod: str, local: tuple[str, ...] = ()) -> bool:
    """Allowed packages, and the solution's own source files (a multi-file solution)."""
    if mod in local:
        return True
    return not _denied(mod) and any(mod == a or mod.startswith(a + ".") for a in ALLOWED_MODULES)


def _dotted(node: ast.AST, aliases: dict[str, str]) -> Optional[str]:
    """`tl.foo.bar` -> 'triton.language.foo.bar' when the chain starts at a module alias."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the module binds itself (so `input` as a parameter is not the builtin)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path, from imports and plain `x = torch.foo` assignments."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    changed = True
    while changed:  # x = torch.cuda; y = x.foo  (to a fixpoint)
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                path = _dotted(node.value, aliases)
                name = node.targets[0].id
                if path and aliases.get(name) != path:
                    aliases[name] = path
                    changed = True
    return aliases


def scan_source(src: str, filename: str, forbidden_calls: list[str], local: tuple[str, ...] = ()) -> None:
    """Raise StaticFinding for the first hack vector in one source file (syntax errors pass through:
    the build step reports them as COMPILE_ERROR). `local`: module names of the solution's files."""
    try:
        tree = ast.parse(src, filename)
    except SyntaxError:
        return
    # Identifiers only (names, attributes, imports, string constants): docstrings may name a peer.
    idents = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            idents.add(node.id)
        elif isinstance(node, ast.Attribute):
            idents.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            idents.update(a.name for a in node.names)
            idents.add(getattr(node, "module", None) or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 80 \
                and " " not in node.value:
            idents.add(node.value)
    for word in forbidden_calls:
        hit = next((i for i in idents if word.lower() in i.lower()), None)
        if hit:
            raise StaticFinding("library-call", f"{filename} uses {hit!r}, which does the task itself")
    aliases = _aliases(tree)
    bound = _bound_names(tree)
    getattr_funcs = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id == "getattr" and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if not _module_ok(a.name, local):
                    raise StaticFinding("import", f"{where} imports {a.name!r}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level or not _module_ok(mod, local):
                raise StaticFinding("import", f"{where} imports from {mod or '.'!r}")
            for a in node.names:
                if _denied(f"{mod}.{a.name}"):
                    raise StaticFinding("import", f"{where} imports {mod}.{a.name}")
                _check_attr_name(a.name, where)
        elif isinstance(node, ast.Name):
            if node.id in ("__builtins__", "__loader__", "__spec__"):
                raise StaticFinding("introspection", f"{where} uses {node.id}")
            if node.id in BANNED_BUILTINS and node.id not in bound:
                raise StaticFinding("dynamic-code", f"{where} uses {node.id}")
            if node.id == "getattr" and "getattr" not in bound and id(node) not in getattr_funcs:
                raise StaticFinding("dynamic-code", f"{where} uses getattr with a computed name or as a value")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "getattr" and id(node.func) in getattr_funcs:
                _check_attr_name(str(node.args[1].value), where)
            if node.func.id == "type" and len(node.args) == 3:
                raise StaticFinding("dynamic-code", f"{where} builds a class with type()")
        elif isinstance(node, ast.Attribute):
            _check_attr_name(node.attr, where)
            path = _dotted(node, aliases)
            if path and _denied(path):
                raise StaticFinding("sandbox", f"{where} uses {path}")
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id in OWN_OBJECTS):
                    raise StaticFinding("monkey-patch", f"{where} assigns {ast.unparse(node)}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in BANNED_HOOKS:
            raise StaticFinding("tensor-subclass" if "torch" in node.name else "introspection",
                                f"{where} defines {node.name}")
        elif isinstance(node, ast.ClassDef):
            for b in node.bases:
                if "Tensor" in ast.unparse(b):
                    raise StaticFinding("tensor-subclass", f"{where} subclasses {ast.unparse(b)}")
            if node.keywords:
                raise StaticFinding("introspection", f"{where} class {node.name} sets a metaclass or class keywords")


def _check_attr_name(name: str, where: str) -> None:
    if name in BANNED_ATTRS:
        raise StaticFinding(BANNED_ATTRS[name], f"{where} uses .{name}")
    if name in ESCAPE_ATTRS:
        raise StaticFinding("sandbox", f"{where} uses .{name}")
    if name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
        raise StaticFinding("introspection", f"{where} uses .{name}")


# C, C++ and CUDA sources of a native solution (avo/harness/build.py); headers too.
NATIVE_SUFFIXES = (".cu", ".cuh", ".cpp", ".cc", ".cxx", ".c", ".h", ".hpp", ".hh", ".hxx", ".inl")
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_C_IDENT = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*")


def scan_native_source(src: str, filename: str, forbidden_calls: list[str]) -> None:
    """A C/C++/CUDA source gets the one static rule that is about the task, not about Python: it
    must not name a forbidden call (at::scaled_dot_product_attention in an attention kernel).
    The Python rules (imports, builtins, attributes, hooks) have no meaning here, and compiled
    code can do anything a process can, so the rest is left to the runtime layer once it runs on
    a GPU (poisoned outputs, input snapshots, timed-output probes, the side-stream wall check)."""
    code = _C_COMMENT.sub(" ", src)
    idents = set(_C_IDENT.findall(code))
    for word in forbidden_calls:
        hit = next((i for i in sorted(idents) if word.lower() in i.lower()), None)
        if hit:
            raise StaticFinding("library-call", f"{filename} uses {hit!r}, which does the task itself")


def scan_solution(sources: dict[str, str], forbidden_calls: list[str]) -> Optional[StaticFinding]:
    """Python files get the AST scan, C/C++/CUDA files `scan_native_source`, other files
    (data, docs) nothing."""
    local = tuple(p[:-3].replace("/", ".") for p in sources if p.endswith(".py"))
    for path, src in sources.items():
        try:
            if path.endswith(".py"):
                scan_source(src, path, forbidden_calls, local)
            elif path.endswith(NATIVE_SUFFIXES):
                scan_native_source(src, path, forbidden_calls)
        except StaticFinding as f:
            return f
    return None


# ---- runtime checks (used inside the worker) ----

def _harness_modules() -> list:
    import avo.harness.channel as channel
    import avo.harness.check as check
    import avo.harness.inputs as inputs
    import avo.harness.timing as timing
    mods = [channel, check, inputs, timing, sys.modules[__name__]]
    for name in ("avo.harness.worker", "__main__"):  # the worker runs as __main__ (python -m)
        if name in sys.modules:
            mods.append(sys.modules[name])
    return mods


def watched_namespaces() -> dict[str, Any]:
    """Namespaces a hack would edit to fake time or correctness, or to slow the baseline (which
    runs in the same process): label -> the live dict (module globals or class __dict__)."""
    import time

    import torch
    import torch.nn.functional as F
    ns: dict[str, Any] = {"time": vars(time), "threading": vars(threading), "threading.Thread": vars(threading.Thread),
                          "torch": vars(torch), "torch.Tensor": vars(torch.Tensor), "torch.nn.functional": vars(F),
                          "torch.cuda": vars(torch.cuda), "torch.cuda.Event": vars(torch.cuda.Event),
                          "torch.linalg": vars(torch.linalg), "torch.special": vars(torch.special)}
    for mod in _harness_modules():
        ns[mod.__name__] = vars(mod)
        for k, v in list(vars(mod).items()):
            if isinstance(v, type) and v.__module__ == mod.__name__:
                ns[f"{mod.__name__}.{k}"] = vars(v)
    return ns


def _kept(v: Any) -> bool:
    """Values whose identity matters: code and types (flags and caches change legitimately)."""
    return callable(v) or isinstance(v, (type, staticmethod, classmethod, property))


def global_state() -> dict[str, Any]:
    """Process-wide torch settings a candidate could flip to slow the baseline or change numerics."""
    import torch
    s: dict[str, Any] = {"num_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                         "matmul_precision": torch.get_float32_matmul_precision(),
                         "default_dtype": str(torch.get_default_dtype()),
                         "deterministic": torch.are_deterministic_algorithms_enabled(),
                         "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                         "fp16_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
                         "bf16_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                         "cudnn": (torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32,
                                   torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
                         "sdp": (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled())}
    return s


class RuntimeGuard:
    """Taken before the candidate is imported; `verify()` after each call returns a finding.
    The snapshot holds the objects themselves, so identity is exact (no id reuse)."""

    def __init__(self) -> None:
        import io

        import torch
        # What the harness does once before any candidate, so its side effects are in the snapshot:
        # a dispatch mode imports torch._dynamo (which rewraps torch.manual_seed); pickling a tensor
        # for the channel adds torch.Tensor.__slotnames__.
        with aten_monitor():
            torch.zeros(1).add_(1)
        torch.save(torch.zeros(1), io.BytesIO())
        self.namespaces = watched_namespaces()
        self.snap = {label: {k: v for k, v in d.items() if _kept(v)} for label, d in self.namespaces.items()}
        self.keys = {label: set(d) for label, d in self.namespaces.items()}
        self.classes = {label for label, d in self.namespaces.items() if "__module__" in d}
        self.state = global_state()
        self.thread_count = _thread._count()
        self.threads = {t.ident for t in threading.enumerate()}
        self.started: list[str] = []
        # Every Python thread started through threading runs this once at start, even one that
        # ends before the next check: a call may not hand work to a thread.
        threading.setprofile(self._thread_started)

    def _thread_started(self, frame, event, arg):
        self.started.append(threading.current_thread().name)
        sys.setprofile(None)

    def verify(self) -> Optional[tuple[str, str]]:
        for label, snap in self.snap.items():
            live = self.namespaces[label]
            for k, v in snap.items():
                now = live.get(k, _MISSING)
                if now is not v:
                    return "monkey-patch", f"{label}.{k} was {'removed' if now is _MISSING else 'replaced'}"
            if label in self.classes:
                added = set(live) - self.keys[label]
                if added:  # a class attribute that shadows a base-class (C) method
                    return "monkey-patch", f"{label}.{sorted(added)[0]} was added"
        state = global_state()
        for k, v in self.state.items():
            if state[k] != v:
                return "global-state", f"torch setting {k} changed from {v} to {state[k]}"
        if self.started:
            return "thread", f"candidate started thread {self.started[0]!r}"
        extra = [t for t in threading.enumerate() if t.ident not in self.threads and t.is_alive()]
        if extra:
            return "thread", f"candidate left thread {extra[0].name!r} running"
        if _thread._count() > self.thread_count:
            return "thread", "candidate left a low-level thread running"
        return None


_MISSING = object()


def aten_monitor():
    """A dispatch mode that records the aten ops a call runs (to catch library calls that do the
    task, e.g. SDPA inside an 'attention kernel'). Triton launches do not pass through it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class AtenRecorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    return AtenRecorder()


def forbidden_op(ops: set[str], forbidden: list[str]) -> Optional[str]:
    for op in sorted(ops):
        for word in forbidden:
            if word.lower() in op.lower():
                return op
    return None
