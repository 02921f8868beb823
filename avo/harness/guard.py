"""Reward-hack checks. Static: an AST scan of the candidate's sources before anything runs.
Runtime (in the worker): identity of timing/harness/torch functions, global torch settings and the
environment, Python threads, forbidden aten ops, frames and gc walks asked for by candidate code
(an audit hook); around them the worker's sandbox
(avo/harness/sandbox.py: Landlock, seccomp, no capabilities). Each check returns a short name
that lands in the trace.

The static scan is the first line, not the only one: Python is too dynamic for an AST scan to be
complete, so every hack it misses must still trip a runtime check (tests/adversarial proves both
layers; peer mode runs the runtime layer alone). A rule whose hack the runtime layer catches by
construction is a warning, not an error (`RUNTIME_COVERED_MODULES`, the layer in `BANNED_ATTRS`):
`import time`, `import threading`, `import os` (its path, environment and file-system calls),
`open(...)`, `.elapsed_time`, subclassing torch.Tensor. Rules with no runtime counterpart stay errors and say why. Writes to
files are warnings only where the kernel confines them (`writes_confined`: Landlock).
C/C++/CUDA sources are not Python: they get only the forbidden-call rule (scan_native_source)."""
from __future__ import annotations

import _thread
import ast
import os
import re
import sys
import threading
from typing import Any, Optional

# Modules a kernel may import without a word.
ALLOWED_MODULES = ("torch", "triton", "math", "functools", "typing", "itertools", "dataclasses",
                   "numpy", "operator", "collections", "enum", "__future__", "json", "re", "warnings",
                   "contextlib", "abc", "copy", "string", "textwrap", "heapq", "bisect", "struct", "numbers")
# Modules a kernel may import with a warning: what they could do to the evaluation is caught at run
# time. module -> (layer, why). Layer "runtime": always caught; "fs": caught where the kernel
# confines the worker's writes (Landlock), else an error.
RUNTIME_COVERED_MODULES = {
    "time": ("runtime", "the harness's timers are checked by identity after every call"),
    "threading": ("runtime", "a thread started during a call is caught at run time"),
    "os": ("runtime", "only os's path, environment and file-system calls (OS_ALLOWED); the environment "
                      "holds no secrets and a change to it is caught at run time"),
    "statistics": ("runtime", "the harness's statistics are checked by identity"),
    "random": ("runtime", "the harness's random generators are checked by identity"),
    "pathlib": ("fs", "writes are confined to the worker's scratch folder"),
    "tempfile": ("fs", "temporary files go to the worker's scratch folder"),
    "shutil": ("fs", "writes are confined to the worker's scratch folder"),
}
# Why other modules stay refused (default: NOT_ALLOWED).
MODULE_REASONS = {
    "ctypes": "native memory access has no runtime check",
    "sys": "frames and sys.modules reach the harness's own objects; no runtime check covers them",
    "gc": "gc reaches every object in the process, the harness's included; no runtime check",
    "inspect": "frames and code objects reach the harness's own objects; no runtime check",
    "subprocess": "a child process can work after the call returns; no runtime check",
    "multiprocessing": "a child process can work after the call returns; no runtime check",
    "concurrent": "a process pool can work after the call returns; no runtime check",
    "socket": "a socket object reaches the worker's channel to the runner; no runtime check",
    "signal": "a signal handler interrupts the harness; no runtime check",
    "io": "raw file descriptors reach the worker's channel to the runner; no runtime check",
    "_io": "raw file descriptors reach the worker's channel to the runner; no runtime check",
    "fcntl": "raw file descriptors reach the worker's channel to the runner; no runtime check",
    "mmap": "raw file descriptors reach the worker's channel to the runner; no runtime check",
    "importlib": "loads code the scan never sees",
    "builtins": "rebinding builtins changes the harness's own code",
    "pickle": "unpickling runs code the scan never sees",
    "marshal": "loads code objects the scan never sees",
    "types": "builds functions and code objects the scan never sees",
    "avo": "the harness is not the candidate's to call or change",
    "evaluators": "the task's reference is not the candidate's to call",
}
NOT_ALLOWED = "outside the allow-list (guard.ALLOWED_MODULES)"
# What a kernel may use of os: paths, the environment (scrubbed, and watched), file-system calls.
OS_ALLOWED = {"path", "environ", "getenv", "getpid", "getppid", "cpu_count", "sched_getaffinity", "sep",
              "pathsep", "linesep", "curdir", "pardir", "extsep", "altsep", "name", "devnull", "listdir",
              "scandir", "walk", "stat", "lstat", "fspath", "fsencode", "fsdecode", "getcwd", "access",
              "PathLike", "error", "strerror", "urandom", "get_terminal_size", "F_OK", "R_OK", "W_OK", "X_OK"}
OS_WRITES = {"makedirs", "mkdir", "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
             "symlink", "link", "chmod", "utime", "truncate"}
OS_REFUSED = "process, file-descriptor and process-state calls have no runtime check (the worker's " \
             "channel to the runner is a file descriptor in this process)"
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
DENIED_WHY = "loaders, native code, process spawning and global settings have no runtime check " \
             "beyond a few torch settings"
# Inside a denied path, what a kernel may still use: TMA's host-side descriptor is a plain record of
# pointer, shape, strides and block shape (triton.tools otherwise holds compilers and disassemblers).
ALLOWED_INSIDE_DENIED = ("triton.tools.tensor_descriptor",)
# Builtins that run or reach code by name. Flagged wherever they are referenced (called or passed
# as a value, e.g. functools.reduce(getattr, ...)) unless the module binds the name itself.
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__", "globals", "locals", "vars", "setattr",
                   "delattr", "breakpoint", "input", "memoryview", "help", "exit", "quit", "__build_class__"}
DYNAMIC_WHY = "code reached by name or built at run time is code the scan never sees; no runtime check"
# The builtin open: reads anywhere; in the worker it refuses file descriptors, and writes outside the
# scratch folder are refused by Landlock (or by the worker's open where the kernel lacks Landlock).
OPEN_WHY = "open() reads; in the worker it refuses file descriptors and writes outside the scratch folder"
# attribute -> (check, layer or None, why). Layer "runtime": a warning; None: an error.
BANNED_ATTRS = {
    **{a: ("side-stream", None, "the runtime wall-clock check has a tolerance a small side-stream gain fits in")
       for a in ("Stream", "stream", "ExternalStream", "set_stream", "current_stream", "default_stream",
                 "StreamContext", "default_capture_stream", "wait_stream", "record_stream")},
    **{a: ("timer", "runtime", "the harness binds its timers before the candidate loads and checks them by identity")
       for a in ("Event", "elapsed_time", "synchronize", "do_bench")},
    **{a: ("pointer-cache", "runtime", "a cache keyed by pointer is caught on refreshed buffers and perturbed inputs")
       for a in ("data_ptr", "untyped_storage", "storage")},
    "set_": ("output-replaced", "runtime", "the class and memory of every tensor argument are checked after each call"),
    **{a: ("tensor-subclass", "runtime", "the class and memory of every tensor argument are checked after each call")
       for a in ("as_subclass", "_make_subclass", "_make_wrapper_subclass")},
    **{a: ("thread", "runtime", "a thread started during a call is caught at run time") for a in ("Thread", "Timer")},
    "_C": ("internals", None, "torch._C bypasses every Python-level check"),
    "_cdata": ("internals", None, "a raw object pointer is only useful to native code"),
}
# Attribute names that lead out of the sandbox whatever object they hang on: banned modules
# re-exported by allowed ones (torch.sys, torch.os, dataclasses.inspect, ...), frames, code objects,
# process spawning and raw file descriptors (os's, whatever alias reaches them).
ESCAPE_ATTRS = {
    "sys", "_sys", "os", "_thread", "ctypes", "ctypeslib", "gc", "inspect",
    "importlib", "builtins", "bltns", "subprocess", "signal", "multiprocessing", "mp",
    "python_multiprocessing", "reducer", "reduction", "socket", "pickle", "marshal",
    "types", "modules", "shutil", "tempfile", "pathlib", "system", "popen", "settrace", "setprofile",
    "tb_frame", "tb_next", "gi_frame", "cr_frame", "ag_frame", "gi_code", "f_back", "f_globals",
    "f_locals", "f_builtins", "f_code", "co_code", "attrgetter", "methodcaller", "get_type_hints",
    "ForwardRef", "cpp_extension", "load_inline", "load_library", "CodeType", "FunctionType",
    "fork", "forkpty", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn",
    "posix_spawnp", "fdopen", "dup", "dup2", "sendfile", "writev", "pwrite", "pwritev", "openpty", "pipe",
    "pipe2", "memfd_create", "putenv", "unsetenv", "killpg", "register_at_fork", "_exit",
    # attributes and code named by a string: string.Formatter().get_field("0.__globals__[sys]", ...),
    # typing's ForwardRef evaluation (eval of any expression)
    "get_field", "_evaluate", "_eval_type",
}
ESCAPE_WHY = "it reaches modules, frames, processes or file descriptors the scan cannot follow; no runtime check"
# Dunder attributes a kernel may use; every other one (__dict__, __class__, __globals__,
# __subclasses__, __code__, __traceback__, __wrapped__, ...) is introspection.
ALLOWED_DUNDERS = {"__init__", "__name__", "__doc__", "__qualname__", "__post_init__", "__len__",
                   "__enter__", "__exit__", "__file__"}
INTROSPECTION_WHY = "introspection reaches the harness's own objects; no runtime check"
# Hooks a class must not define: they let a value intercept torch calls, GC or class creation.
BANNED_HOOKS = {"__torch_function__", "__torch_dispatch__", "__del__", "__init_subclass__", "__set_name__",
                "__instancecheck__", "__subclasscheck__", "__subclasshook__", "__array_ufunc__",
                "__array_function__", "__array_finalize__", "__array_wrap__", "__reduce__", "__reduce_ex__",
                "__getattribute__", "__class_getitem__", "__cuda_array_interface__", "__dlpack__",
                "__array_interface__"}
HOOK_WHY = "a hook runs inside the harness's own torch calls; no runtime check"
# Names whose attributes a kernel may assign (its own objects); anything else is a patch.
OWN_OBJECTS = {"self", "cls"}
PATCH_WHY = "the runtime identity checks cover the harness's timers and torch, not every object a patch can reach"
# Layers that are always on in the worker (the others depend on the kernel: see avo/harness/sandbox.py).
ALWAYS = ("runtime",)


class StaticFinding(Exception):
    """One hit of the static scan: an error (the candidate is refused) or, with `warning`, a rule
    whose hack the runtime layer catches (the candidate runs; the report lists it)."""

    def __init__(self, check: str, detail: str, warning: bool = False):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail, self.warning = check, detail, warning


class _Scan:
    """Where a rule's hit goes: a warning when its layer is active, else raised as an error."""

    def __init__(self, warnings: Optional[list], writes_confined: bool):
        self.warnings = warnings if warnings is not None else []
        self.active = set(ALWAYS) | ({"fs"} if writes_confined else set())

    def hit(self, check: str, detail: str, layer: Optional[str], why: str) -> None:
        if layer in self.active:
            if not any(w.check == check and w.detail.startswith(detail) for w in self.warnings):
                self.warnings.append(StaticFinding(check, f"{detail} (allowed: {why})", warning=True))
            return
        if layer == "fs":
            why = "file writes have a runtime check only where the kernel confines them (Landlock), " \
                  "and this worker's kernel does not"
        raise StaticFinding(check, f"{detail} ({why})")


def _denied(path: str) -> Optional[str]:
    if any(path == a or path.startswith(a + ".") for a in ALLOWED_INSIDE_DENIED):
        return None
    return next((b for b in DENIED_PATHS if path == b or path.startswith(b + ".")), None)


def _import(scan: _Scan, mod: str, where: str, local: tuple[str, ...], what: str) -> None:
    """An imported module: allowed, the solution's own file (a multi-file solution), covered at
    run time (a warning), or refused with the reason."""
    if mod in local:
        return
    top = mod.split(".")[0]
    if _denied(mod):
        raise StaticFinding("import", f"{where} imports {what} ({DENIED_WHY})")
    if top in ALLOWED_MODULES:
        return
    if top in RUNTIME_COVERED_MODULES and (top != "os" or mod in ("os", "os.path")):
        layer, why = RUNTIME_COVERED_MODULES[top]
        scan.hit("import", f"{where} imports {what}", layer, why)
        return
    raise StaticFinding("import", f"{where} imports {what} ({MODULE_REASONS.get(top, NOT_ALLOWED)})")


def _os_use(scan: _Scan, name: str, where: str, path: str) -> None:
    """os.<name>: the os allow-list (paths, environment, file-system calls), else refused."""
    if name in OS_ALLOWED:
        return
    if name in OS_WRITES:
        scan.hit("file-write", f"{where} uses {path}", "fs", "writes are confined to the worker's scratch folder")
        return
    raise StaticFinding("sandbox", f"{where} uses {path} ({OS_REFUSED})")


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


def _path_rules(scan: _Scan, path: str, where: str) -> None:
    """A dotted path that an alias, an import or a constant getattr resolves to."""
    if _denied(path):
        raise StaticFinding("sandbox", f"{where} uses {path} ({DENIED_WHY})")
    parts = path.split(".")
    if parts[0] == "os" and len(parts) > 1:
        _os_use(scan, parts[1], where, path)


def scan_source(src: str, filename: str, forbidden_calls: list[str], local: tuple[str, ...] = (),
                warnings: Optional[list] = None, writes_confined: bool = False) -> None:
    """Raise StaticFinding for the first hack vector in one source file that the runtime layer does
    not catch (syntax errors pass through: the build step reports them as COMPILE_ERROR); append
    the hits it does catch to `warnings`. `local`: module names of the solution's files;
    `writes_confined`: the worker's file writes are confined by the kernel (sandbox.writes_confined)."""
    try:
        tree = ast.parse(src, filename)
    except SyntaxError:
        return
    scan = _Scan(warnings, writes_confined)
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
    bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # x in x.attr
    first = len(scan.warnings)
    try:
        _walk(scan, tree, filename, local, aliases, bound, getattr_funcs, bases)
        for expr in _string_annotations(tree):  # evaluated by typing.get_type_hints (functools.singledispatch)
            _walk(scan, expr, filename, local, aliases, bound, getattr_funcs, bases)
    finally:  # in line order (the walk is breadth-first)
        scan.warnings[first:] = sorted(scan.warnings[first:], key=lambda w: _line(w.detail))


def _string_annotations(tree: ast.AST) -> list[ast.AST]:
    """Annotations written as strings, parsed as the expressions typing evaluates them as (at their
    own line); one that is not an expression is left alone (typing fails on it too)."""
    out = []
    for node in ast.walk(tree):
        anns = [node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) else \
            [node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        for a in anns:
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                try:
                    expr = ast.parse(a.value.strip(), mode="eval")
                except SyntaxError:
                    continue
                out.append(ast.increment_lineno(expr, a.lineno - 1))
    return out


def _line(detail: str) -> int:
    m = re.match(r"[^:\s]*:(\d+)", detail)
    return int(m.group(1)) if m else 0


def _walk(scan: _Scan, tree: ast.AST, filename: str, local: tuple[str, ...], aliases: dict[str, str],
          bound: set[str], getattr_funcs: set[int], bases: set[int]) -> None:
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                _import(scan, a.name, where, local, repr(a.name))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                raise StaticFinding("import", f"{where} imports from {'.' * node.level + mod!r} (relative "
                                    "imports reach outside the solution; import its files by name)")
            _import(scan, mod, where, local, f"from {mod!r}")
            for a in node.names:
                full = f"{mod}.{a.name}"
                if a.name == "*" and mod.split(".")[0] in RUNTIME_COVERED_MODULES:
                    raise StaticFinding("import", f"{where} imports * from {mod} (a star import hides which "
                                        "names are used)")
                if mod not in local and _denied(full):
                    raise StaticFinding("import", f"{where} imports {full} ({DENIED_WHY})")
                if mod == "os":
                    _os_use(scan, a.name, where, full)
                _check_attr_name(scan, a.name, where)
        elif isinstance(node, ast.Name):
            if node.id in ("__builtins__", "__loader__", "__spec__"):
                raise StaticFinding("introspection", f"{where} uses {node.id} ({INTROSPECTION_WHY})")
            if node.id in BANNED_BUILTINS and node.id not in bound:
                raise StaticFinding("dynamic-code", f"{where} uses {node.id} ({DYNAMIC_WHY})")
            if node.id == "open" and "open" not in bound:
                scan.hit("open", f"{where} uses open", "runtime", OPEN_WHY)
            if node.id == "getattr" and "getattr" not in bound and id(node) not in getattr_funcs:
                raise StaticFinding("dynamic-code", f"{where} uses getattr with a computed name or as a value "
                                    f"({DYNAMIC_WHY})")
            if aliases.get(node.id) == "os" and isinstance(node.ctx, ast.Load) and id(node) not in bases:
                raise StaticFinding("sandbox", f"{where} passes the os module as a value (the os allow-list "
                                        "holds only where os.<name> is written out)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "getattr" and id(node.func) in getattr_funcs:
                name = str(node.args[1].value)
                _check_attr_name(scan, name, where)
                base = _dotted(node.args[0], aliases)
                if base:
                    _path_rules(scan, f"{base}.{name}", where)
            if node.func.id == "type" and len(node.args) == 3:
                raise StaticFinding("dynamic-code", f"{where} builds a class with type() ({DYNAMIC_WHY})")
        elif isinstance(node, ast.Attribute):
            _check_attr_name(scan, node.attr, where)
            path = _dotted(node, aliases)
            if path:
                _path_rules(scan, path, where)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id in OWN_OBJECTS):
                    raise StaticFinding("monkey-patch", f"{where} assigns {ast.unparse(node)} ({PATCH_WHY})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in BANNED_HOOKS:
            raise StaticFinding("tensor-subclass" if "torch" in node.name else "introspection",
                                f"{where} defines {node.name} ({HOOK_WHY})")
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:  # a hook bound by assignment in the class body, not by def
                targets = stmt.targets if isinstance(stmt, ast.Assign) else \
                    [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in BANNED_HOOKS:
                        raise StaticFinding("tensor-subclass" if "torch" in t.id else "introspection",
                                            f"{where} binds {t.id} in class {node.name} ({HOOK_WHY})")
            for b in node.bases:
                if "Tensor" in ast.unparse(b):
                    scan.hit("tensor-subclass", f"{where} subclasses {ast.unparse(b)}", "runtime",
                             "the class and memory of every tensor argument are checked after each call, "
                             "and torch hooks stay refused")
            if node.keywords:
                raise StaticFinding("introspection", f"{where} class {node.name} sets a metaclass or class "
                                    f"keywords ({INTROSPECTION_WHY})")


def _check_attr_name(scan: _Scan, name: str, where: str) -> None:
    if name in BANNED_ATTRS:
        check, layer, why = BANNED_ATTRS[name]
        scan.hit(check, f"{where} uses .{name}", layer, why)
    elif name in ESCAPE_ATTRS:
        raise StaticFinding("sandbox", f"{where} uses .{name} ({ESCAPE_WHY})")
    elif name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDERS:
        raise StaticFinding("introspection", f"{where} uses .{name} ({INTROSPECTION_WHY})")


# C, C++ and CUDA sources of a native solution (avo/harness/build.py); headers too.
NATIVE_SUFFIXES = (".cu", ".cuh", ".cpp", ".cc", ".cxx", ".c", ".h", ".hpp", ".hh", ".hxx", ".inl")
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_C_IDENT = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*")


def scan_native_source(src: str, filename: str, forbidden_calls: list[str]) -> None:
    """A C/C++/CUDA source gets the one static rule that is about the task, not about Python: it
    must not name a forbidden call (at::scaled_dot_product_attention in an attention kernel).
    The Python rules (imports, builtins, attributes, hooks) have no meaning here, and compiled
    code can do anything a process can, so the rest is left to the runtime layer once it runs on
    a GPU (poisoned outputs, input snapshots, timed-output probes, the side-stream wall check)
    and to the worker's sandbox."""
    code = _C_COMMENT.sub(" ", src)
    idents = set(_C_IDENT.findall(code))
    for word in forbidden_calls:
        hit = next((i for i in sorted(idents) if word.lower() in i.lower()), None)
        if hit:
            raise StaticFinding("library-call", f"{filename} uses {hit!r}, which does the task itself")


def scan_solution(sources: dict[str, str], forbidden_calls: list[str], warnings: Optional[list] = None,
                  writes_confined: bool = False) -> Optional[StaticFinding]:
    """The first error, or None. Python files get the AST scan, C/C++/CUDA files
    `scan_native_source`, other files (data, docs) nothing. Warnings (rules the runtime layer
    covers) are appended to `warnings` when given."""
    local = tuple(p[:-3].replace("/", ".") for p in sources if p.endswith(".py"))
    for path, src in sources.items():
        try:
            if path.endswith(".py"):
                scan_source(src, path, forbidden_calls, local, warnings, writes_confined)
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
    runs in the same process): label -> the live dict (module globals or class __dict__). The
    timers (time.perf_counter, time.monotonic, torch.cuda.Event, torch.cuda.synchronize), the
    statistics and random generators the harness uses, numpy's functions, and the builtins (the worker's open
    included) are among them; the harness also binds its own references at import (timing.py)."""
    import builtins
    import random
    import statistics
    import time

    import torch
    import torch.nn.functional as F
    ns: dict[str, Any] = {"time": vars(time), "threading": vars(threading), "threading.Thread": vars(threading.Thread),
                          "statistics": vars(statistics), "random": vars(random),
                          "random.Random": vars(random.Random), "random.SystemRandom": vars(random.SystemRandom),
                          "builtins": vars(builtins),
                          "torch": vars(torch), "torch.Tensor": vars(torch.Tensor), "torch.nn.functional": vars(F),
                          "torch.cuda": vars(torch.cuda), "torch.cuda.Event": vars(torch.cuda.Event),
                          "torch.linalg": vars(torch.linalg), "torch.special": vars(torch.special)}
    try:  # numpy's reductions (median, percentile, mean) are what a statistics patch would aim at next
        import numpy
        ns["numpy"] = vars(numpy)
    except ImportError:
        pass
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
                                 torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled()),
                         "environment": dict(os.environ)}
    return s


# Audit events (PEP 578) that hand out frames or every object of the process: what a walk for the
# harness's locals or a tensor holding the answer needs, however the static guard was got round.
INTROSPECTION_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions",
                                  "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                                  "sys.settrace", "sys.setprofile"})
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})  # audited as object.__getattr__
# Standard-library functions that hand a frame (or an attribute named by a string) to their caller:
# the caller decides. Any other standard-library caller (namedtuple, TypeVar, enum asking for their
# caller's module name) keeps the frame to itself.
FRAME_GETTERS = frozenset({"currentframe", "stack", "trace", "getouterframes", "getinnerframes", "walk_stack",
                           "walk_tb", "get_field", "<lambda>"})
_STDLIB = None


def _stdlib() -> str:
    global _STDLIB
    if _STDLIB is None:
        import sysconfig
        _STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
    return _STDLIB


def candidate_caller(frame, roots: tuple[str, ...], depth: int = 12) -> Optional[str]:
    """'file:line' of the candidate code that made an audited call, starting at the Python frame
    that made it: candidate code itself, or through code built from a string ('<string>') and the
    standard-library functions that evaluate such code or hand frames on. None when the call is
    the harness's, a library's (torch, triton) or the standard library's own."""
    dynamic = False
    for _ in range(depth):
        if frame is None:
            return None
        code = frame.f_code
        name = code.co_filename
        if name.startswith(roots):
            return f"{os.path.basename(name)}:{frame.f_lineno}"
        if name.startswith("<"):
            dynamic = True
        elif not (name.startswith(_stdlib()) and (dynamic or code.co_name in FRAME_GETTERS)):
            return None
        frame = frame.f_back
    return None


class RuntimeGuard:
    """Taken before the candidate is imported; `verify()` after each call returns a finding.
    The snapshot holds the objects themselves, so identity is exact (no id reuse). With
    `code_roots` (the folders candidate code is loaded from) an audit hook also refuses frames and
    gc's object walks to that code (INTROSPECTION_EVENTS), and records the attempt."""

    def __init__(self, code_roots: tuple[str, ...] = ()) -> None:
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
        self.introspected: list[str] = []
        self.code_roots = tuple(dict.fromkeys(p.rstrip(os.sep) + os.sep for r in code_roots
                                              for p in (str(r), os.path.realpath(r))))
        if self.code_roots:
            _stdlib()
            self._busy = threading.local()
            sys.addaudithook(self._audit)  # for the life of the process (a hook cannot be removed)

    def _audit(self, event: str, args: tuple) -> None:
        if event not in INTROSPECTION_EVENTS and not (event == "object.__getattr__" and len(args) > 1
                                                      and args[1] in FRAME_ATTRS):
            return
        if getattr(self._busy, "on", False):  # our own sys._getframe below
            return
        self._busy.on = True
        try:
            where = candidate_caller(sys._getframe(1), self.code_roots)
        finally:
            self._busy.on = False
        if where is None:
            return
        what = f"{args[1]} of a {type(args[0]).__name__}" if event == "object.__getattr__" else event
        self.introspected.append(f"{where} asked for {what}")
        raise RuntimeError(f"refused by the runtime guard: {what} (frames and gc's object walks reach the "
                           "harness's own objects)")

    def _thread_started(self, frame, event, arg):
        self.started.append(threading.current_thread().name)
        sys.setprofile(None)

    def verify(self) -> Optional[tuple[str, str]]:
        if self.introspected:
            return "introspection", f"candidate code {self.introspected[0]}"
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
                if k == "environment":
                    name = sorted(n for n in set(v) | set(state[k]) if v.get(n) != state[k].get(n))[0]
                    return "global-state", f"environment variable {name} was changed"
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
