"""Building a solution written in CUDA C++ / C++ (`language` cuda or cpp; SOL-ExecBench's cuda_cpp,
cutlass, cudnn and cublas map to cuda). Called by the worker, never by the orchestrator.

As upstream builds them (read 2026-12: NVIDIA/SOL-ExecBench 8d2237d `driver/templates/build_ext.py`,
flashinfer-bench 40e6ca7 `compile/builders/{torch,tvm_ffi}_builder.py`):
- binding `torch`: every .cu/.cpp/.cc/.cxx/.c source goes to `torch.utils.cpp_extension.load`, the
  sources' folder on the include path, SOL-ExecBench's `compile_options` (cflags, cuda_cflags,
  ld_flags) passed on; the entry symbol is an attribute of the module (PYBIND11_MODULE).
- binding `tvm-ffi`: `tvm_ffi.cpp.build` + `tvm_ffi.load_module`, the symbol exported with
  TVM_FFI_DLL_EXPORT_TYPED_FUNC. Built only where the tvm_ffi package is installed (not a dependency).
- no binding: SOL-ExecBench (a `languages` list) means torch, flashinfer-bench (`language`) tvm-ffi.

A build lives in a folder named by the source hash of everything that shapes it (sources, language,
binding, flags, torch / CUDA / GPU) under $AVO_CACHE/cuda_builds (default ~/.cache/avo/cuda_builds):
the same solution is compiled once. It runs in a child process group under a time limit.

On a machine with no CUDA GPU (the interpreter device mode) nothing can run: `check` compiles each
.cu with nvcc (-arch=sm_90 unless the flags name one) and syntax-checks each C++ file with the host
compiler, with the same defines and include paths the real build uses. The caller reports that as
COMPILED_NOT_RUN; a machine that cannot even do that (no nvcc) raises Unavailable."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from avo.schema import Solution
from avo.tasks import source_hash

NATIVE_LANGUAGES = ("cuda", "cpp")
CUDA_EXT = (".cu",)
CXX_EXT = (".cpp", ".cc", ".cxx", ".c")
CHECK_ARCH = "sm_90"  # what a compile check targets: the Hopper GPUs avo runs on
DEFAULT_LIMIT_S = 300.0
ARCH_FLAGS = ("-arch", "--gpu-architecture", "-gencode", "--generate-code", "-code", "--gpu-code")
# Toolkit libraries whose headers a minimal CUDA install may lack: a file that needs one is not
# checked here, which is the machine's gap, not the solution's error.
TOOLKIT_LIBS = ("cublas", "cusparse", "cusolver", "cufft", "curand", "cudnn", "cutlass", "cute", "nccl",
                "nvshmem", "cutensor", "nvrtc", "nvToolsExt", "nvtx3", "cupti", "nvjitlink")


class BuildError(Exception):
    """The solution does not build: COMPILE_ERROR (TIMEOUT when `timeout`); the message holds the
    compiler's first errors, paths relative to the solution."""

    def __init__(self, log: str, timeout: bool = False):
        super().__init__(log)
        self.log, self.timeout = log, timeout


class Unavailable(Exception):
    """This machine cannot build or check the solution (no nvcc, no ninja): not the solution's fault."""


class NotRun(Exception):
    """Compile-checked, but this machine has no CUDA GPU to run it on."""

    def __init__(self, log: str):
        super().__init__(log)
        self.log = log


def is_native(sol: Solution) -> bool:
    return sol.spec.language in NATIVE_LANGUAGES


def _extra(sol: Solution) -> dict:
    return sol.spec.model_extra or {}


def binding(sol: Solution) -> str:
    b = _extra(sol).get("binding")
    if b:
        return str(b)
    return "torch" if "languages" in _extra(sol) else "tvm-ffi"


def compile_options(sol: Solution) -> tuple[list[str], list[str], list[str]]:
    """(cflags, cuda_cflags, ld_flags) as SOL-ExecBench reads them: none without `compile_options`,
    its defaults (-O3 --use_fast_math; -lcuda) for the fields an object leaves out."""
    co = _extra(sol).get("compile_options")
    if co is None:
        return [], [], []
    if not isinstance(co, dict):
        raise BuildError("spec.compile_options must be an object (cflags, cuda_cflags, ld_flags)")
    try:
        return ([str(x) for x in co.get("cflags", [])], [str(x) for x in co.get("cuda_cflags", ["-O3", "--use_fast_math"])],
                [str(x) for x in co.get("ld_flags", ["-lcuda"])])
    except TypeError:
        raise BuildError("spec.compile_options: cflags, cuda_cflags and ld_flags are lists of strings") from None


def cache_root() -> Path:
    base = os.environ.get("AVO_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "avo") / "cuda_builds"


def _sources(sol: Solution) -> tuple[list[str], list[str]]:
    cu = [s.path for s in sol.sources if Path(s.path).suffix in CUDA_EXT]
    cxx = [s.path for s in sol.sources if Path(s.path).suffix in CXX_EXT]
    if not cu and not cxx:
        raise BuildError(f"no source to compile: a {sol.spec.language} solution needs a .cu or .cpp/.cc/.cxx/.c file")
    return cu, cxx


def _key(sol: Solution, mode: str, **extra: Any) -> str:
    import torch
    payload = {"sources": sorted([s.path, s.content] for s in sol.sources), "language": sol.spec.language,
               "binding": binding(sol), "compile_options": _extra(sol).get("compile_options"),
               "target_hardware": sol.spec.target_hardware, "mode": mode, "torch": torch.__version__,
               "python": list(sys.version_info[:2]), **extra}
    return source_hash(json.dumps(payload, sort_keys=True, default=str))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One build of a folder at a time (workers of several runs share the cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _once(folder: Path, done: Path, make) -> bool:
    """Run `make` (which writes `done`) unless `done` exists, checked again under the folder's
    lock; True when it was already there (cached)."""
    if done.exists():
        return True
    with _locked(folder):
        if done.exists():
            return True
        make()
    return False


def _write_sources(sol: Solution, src: Path) -> None:
    for s in sol.sources:
        p = src / s.path
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text() != s.content:
            p.write_text(s.content)


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def _run(cmds: list[tuple[str, list[str]]], cwd: Path, logs: Path, deadline: float, env: Optional[dict] = None,
         fatal: Callable[[str], bool] = lambda out: True) -> list[tuple[str, int, str]]:
    """Run the commands at once, each in its own process group, output to a file (no pipe to fill).
    Stops the rest when one fails with an output `fatal` judges so; every process group is killed
    at the deadline (BuildError). Returns (label, exit code, output) of those that finished."""
    logs.mkdir(parents=True, exist_ok=True)
    running = []
    try:
        for i, (label, cmd) in enumerate(cmds):
            log = logs / f"{i}.log"
            with open(log, "w") as out:
                running.append((label, log, subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                                             env=env)))
        while any(p.poll() is None for _, _, p in running):
            if any(p.returncode not in (None, 0) and fatal(log.read_text(errors="replace"))
                   for _, log, p in running):
                break
            if time.monotonic() > deadline:
                raise BuildError("", timeout=True)
            time.sleep(0.05)
    finally:
        for _, _, p in running:
            if p.poll() is None:
                _kill(p)
    return [(label, p.returncode, log.read_text(errors="replace")) for label, log, p in running
            if p.returncode is not None and p.returncode >= 0]


_LOC = re.compile(r"^(?P<file>[^\s:()]+)(?:\((?P<l1>\d+)\)|:(?P<l2>\d+)(?::\d+)?):\s*(?:fatal )?error\b", re.I)
_MISSING = re.compile(r"^(?P<file>[^\s:]+):\d+(?::\d+)?:\s*fatal error:\s*(?P<hdr>\S+): No such file or directory")


def first_errors(output: str, root: Optional[Path] = None, n: int = 4) -> str:
    """The compiler's first error lines (`kernel.cu(12): error: ...`, `main.cpp:7:3: error: ...`),
    the build folder cut from paths; without such lines, other lines that say error, else the tail."""
    text = output.replace(f"{root}/", "") if root else output
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    hits = [ln.strip() for ln in lines if _LOC.match(ln.strip())]
    if not hits:
        hits = [ln.strip() for ln in lines if re.search(r"\berror\b", ln, re.I) and len(ln) < 400
                and not ln.lstrip().startswith(("FAILED:", "ninja:", "[", "Traceback", "File \""))
                and "Error building extension" not in ln and "CalledProcessError" not in ln]
    hits = list(dict.fromkeys(hits)) or lines[-6:]
    more = len(hits) - n
    return "\n".join(hits[:n]) + (f"\n(and {more} more error lines)" if more > 0 else "")


def _limit_text(limit_s: float) -> str:
    return f"the build ran past its limit of {limit_s:.0f} s (eval compile_timeout_s) and was stopped"


def _cuda_home() -> Optional[Path]:
    nvcc = shutil.which("nvcc")
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             str(Path(os.path.realpath(nvcc)).parent.parent) if nvcc else None, "/usr/local/cuda"]
    return next((Path(c) for c in cands if c and (Path(c) / "include" / "cuda_runtime.h").exists()), None)


def _cutlass_includes() -> list[str]:
    # SOL-ExecBench puts $CUTLASS_DIR (default /usr/local/cutlass) on every C++ build's include path
    d = Path(os.environ.get("CUTLASS_DIR", "/usr/local/cutlass"))
    return [str(p) for p in (d / "include", d / "tools" / "util" / "include") if p.is_dir()]


def _has_arch(flags: list[str]) -> bool:
    return any(f.split("=")[0] in ARCH_FLAGS or f.startswith(("-arch", "-gencode")) for f in flags)


# ---------------------------------------------------------------- compile check (no CUDA GPU here)
def _torch_shim(root: Path) -> Optional[str]:
    """A CPU build of torch ships c10/cuda without its generated cuda_cmake_macros.h: supply it
    (CUDA builds define C10_CUDA_BUILD_SHARED_LIBS there) so c10/cuda and ATen/cuda headers parse."""
    from torch.utils.cpp_extension import include_paths
    if any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        return None
    shim = root / "_shim"
    hdr = shim / "c10/cuda/impl/cuda_cmake_macros.h"
    if not hdr.exists():
        hdr.parent.mkdir(parents=True, exist_ok=True)
        hdr.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return str(shim)


def _check_flags(sol: Solution, name: str, root: Path) -> tuple[list[str], list[str], list[str]]:
    """(include flags + defines for both compilers, nvcc-only flags, host-compiler-only flags),
    as the real build would pass them."""
    cflags, cuda_cflags, _ = compile_options(sol)
    cuda = _cuda_home()
    inc = ["-I."]
    if binding(sol) == "torch":
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
        system = include_paths() + [sysconfig.get_paths()["include"]]
        shim = _torch_shim(root)
        system += [shim] if shim else []
        defs = [f"-DTORCH_EXTENSION_NAME={name}", "-DTORCH_API_INCLUDE_EXTENSION_H"]
        nvcc_extra, std = list(COMMON_NVCC_FLAGS), "-std=c++20"
    else:
        import tvm_ffi.libinfo
        system, defs, nvcc_extra, std = list(tvm_ffi.libinfo.include_paths()), [], [], "-std=c++17"
    system += _cutlass_includes() + ([str(cuda / "include")] if cuda else [])
    common = inc + [f for p in system for f in ("-isystem", p)] + defs
    targets = {h.upper() for h in sol.spec.target_hardware}
    arch = [] if _has_arch(cuda_cflags) else \
        ["-arch=sm_100a"] if targets == {"B200"} else [f"-arch={CHECK_ARCH}"]  # SOL-ExecBench: B200 -> sm_100a
    nvcc = nvcc_extra + arch + ["-Xcompiler", "-fPIC"] + cuda_cflags
    if not any(f.startswith("-std") for f in nvcc):
        nvcc.append(std)
    host = ["-fPIC", std] + cflags
    return common, nvcc, host


def _missing_toolkit_header(out: str, own: set[str]) -> Optional[str]:
    """A header the toolkit here lacks: included from torch's / the toolkit's own headers, or a
    library header (cublas_v2.h, cutlass/...) that a full CUDA install has."""
    for ln in out.splitlines():
        m = _MISSING.match(ln.strip())
        if m:
            hdr, where = m["hdr"], m["file"]
            lib = hdr.split("/")[0].split(".")[0]
            if where not in own or any(lib.startswith(t) for t in TOOLKIT_LIBS):
                return hdr
    return None


def check(sol: Solution, limit_s: float = DEFAULT_LIMIT_S) -> str:
    """Compile-check the solution for a GPU this machine lacks; returns what was checked (one
    line). Raises BuildError (the compiler's first errors) or Unavailable (no nvcc here)."""
    cu, cxx = _sources(sol)
    b = binding(sol)
    _require_binding(b)
    nvcc = shutil.which("nvcc")
    if cu and not nvcc:
        raise Unavailable("cannot check this CUDA solution here: no CUDA GPU (interpreter mode) and no nvcc on PATH")
    key = _key(sol, "check", nvcc=nvcc)
    folder = cache_root() / key[:32]
    done = folder / "checked.json"
    cached = _once(folder, done, lambda: _check_into(sol, folder, key, cu, cxx, nvcc, limit_s))
    info = json.loads(done.read_text())
    took = f"cached: checked in {info['seconds']:.1f} s on {info['when']}" if cached else \
        f"checked in {info['seconds']:.1f} s"
    parts = []
    if info["nvcc"]:
        parts.append(f"nvcc {' '.join(info['arch'])} compiled {', '.join(info['nvcc'])}")
    if info["host"]:
        parts.append(f"{info['cxx']} parsed {', '.join(info['host'])}")
    skipped = [f"{f} (this toolkit has no {h})" for f, h in info["skipped"].items()]
    skipped += [f"{f} (no host C++ compiler)" for f in info.get("no_cxx", [])]
    return (f"compiled, not run: no CUDA GPU on this machine ({b} binding; {'; '.join(parts)}"
            + (f"; not checked: {', '.join(skipped)}" if skipped else "") + f"; {took}; cache {folder})")


def _check_into(sol: Solution, folder: Path, key: str, cu: list[str], cxx: list[str], nvcc: Optional[str],
                limit_s: float) -> None:
    t0 = time.monotonic()
    src = folder / "src"
    _write_sources(sol, src)
    (folder / "obj").mkdir(exist_ok=True)
    name = f"avo_{key[:16]}"
    common, nvcc_flags, host_flags = _check_flags(sol, name, cache_root())
    cxx_bin = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    cc_bin = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    cmds = [(p, [nvcc, "-c", p, "-o", str(folder / "obj" / (p.replace("/", "_") + ".o")), *common, *nvcc_flags])
            for p in cu]
    no_cxx = []
    for p in cxx:
        compiler = cc_bin if p.endswith(".c") else cxx_bin
        if not compiler:
            no_cxx.append(p)
            continue
        flags = [f for f in host_flags if not f.startswith("-std=c++")] if p.endswith(".c") else host_flags
        cmds.append((p, [compiler, "-fsyntax-only", p, *common, *flags]))
    try:
        own = {s.path for s in sol.sources}
        results = _run(cmds, src, folder / "logs", t0 + limit_s,
                       fatal=lambda out: _missing_toolkit_header(out, own) is None)
    except BuildError:
        raise BuildError(_limit_text(limit_s), timeout=True) from None
    skipped: dict[str, str] = {}
    by_label = {label: (rc, out) for label, rc, out in results}
    for label, _ in cmds:  # source order: the first failing file is the one reported
        rc, out = by_label.get(label, (None, ""))
        if rc not in (None, 0):
            hdr = _missing_toolkit_header(out, own)
            if hdr is None:
                raise BuildError(first_errors(out, src))
            skipped[label] = hdr
    if len(skipped) + len(no_cxx) == len(cu) + len(cxx):
        why = ", ".join(f"{f} needs {h}" for f, h in skipped.items()) or "no host C++ compiler"
        raise Unavailable(f"cannot check this CUDA solution here: no CUDA GPU, and this machine's toolkit falls "
                          f"short ({why})")
    arch = [f for f in nvcc_flags if _has_arch([f])] or [f"-arch={CHECK_ARCH}"]
    info = {"seconds": round(time.monotonic() - t0, 2), "when": time.strftime("%Y-%m-%d %H:%M"),
            "nvcc": [p for p in cu if p not in skipped], "arch": arch,
            "host": [p for p in cxx if p not in skipped and p not in no_cxx],
            "cxx": Path(cxx_bin).name if cxx_bin else "", "skipped": skipped, "no_cxx": no_cxx}
    (folder / "checked.json").write_text(json.dumps(info))


# ---------------------------------------------------------------- real build (a CUDA GPU here)
def _require_binding(b: str) -> None:
    if b == "torch":
        return
    if b != "tvm-ffi":
        raise BuildError(f"binding {b!r} is not one avo builds (torch, tvm-ffi)")
    try:
        import tvm_ffi  # noqa: F401
    except ImportError:
        raise BuildError("binding 'tvm-ffi' is not available here: the tvm_ffi package (pip install "
                         "apache-tvm-ffi) is not installed; use binding 'torch' or install it") from None


_LOADED: dict[str, Any] = {}


def load(sol: Solution, limit_s: float = DEFAULT_LIMIT_S) -> tuple[Callable, str]:
    """Build (or find in the cache) and load the solution; (entry callable, one-line note with
    the build time). Raises BuildError or Unavailable."""
    import torch
    cu, cxx = _sources(sol)
    b = binding(sol)
    _require_binding(b)
    if b == "torch":
        from torch.utils.cpp_extension import CUDA_HOME
        if not shutil.which("ninja"):
            raise Unavailable("torch.utils.cpp_extension.load needs the ninja build tool, not found on PATH "
                              "(pip install ninja)")
        if cu and not CUDA_HOME:
            raise Unavailable("torch.utils.cpp_extension finds no CUDA toolkit (nvcc / CUDA_HOME) to build .cu files")
    cap = list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
    key = _key(sol, "load", cuda=torch.version.cuda, capability=cap)
    folder = cache_root() / key[:32]
    name = f"avo_{key[:16]}"
    done = folder / "built.json"
    t0 = time.monotonic()
    cached = _once(folder, done, lambda: _build_into(sol, folder, name, cu, cxx, b, limit_s))
    info = json.loads(done.read_text())
    lib = info["lib"]
    try:
        if lib not in _LOADED:
            if b == "torch":
                import importlib.util
                spec = importlib.util.spec_from_file_location(name, lib)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            else:
                import tvm_ffi
                mod = tvm_ffi.load_module(lib)
            _LOADED[lib] = mod
        mod = _LOADED[lib]
    except Exception as e:  # undefined symbols, a missing PyInit (no PYBIND11_MODULE)
        raise BuildError(f"the built module does not load: {type(e).__name__}: {e}") from None
    try:
        fn = getattr(mod, sol.entry_symbol)
    except AttributeError:
        how = 'PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("%s", &%s); }' if b == "torch" else \
            "TVM_FFI_DLL_EXPORT_TYPED_FUNC(%s, %s);"
        raise BuildError(f"{sol.spec.entry_point}: the built module exports no {sol.entry_symbol!r} "
                         f"(expose it: {how % (sol.entry_symbol, sol.entry_symbol)})") from None
    what = ", ".join(cu + cxx)
    note = (f"build cached ({what} built in {info['seconds']:.1f} s on {info['when']}; loaded in "
            f"{time.monotonic() - t0:.2f} s)") if cached else f"built {what} in {info['seconds']:.1f} s"
    return fn, f"{note} [{b} binding; cache {folder}]"


def _build_into(sol: Solution, folder: Path, name: str, cu: list[str], cxx: list[str], b: str, limit_s: float) -> None:
    t0 = time.monotonic()
    src = folder / "src"
    _write_sources(sol, src)
    out = folder / "build"
    out.mkdir(exist_ok=True)
    cflags, cuda_cflags, ld_flags = compile_options(sol)
    job = {"binding": b, "name": name, "sources": [str(src / p) for p in cu + cxx], "cu": [str(src / p) for p in cu],
           "cxx": [str(src / p) for p in cxx], "cflags": cflags, "cuda_cflags": cuda_cflags, "ld_flags": ld_flags,
           "include": [str(src)] + _cutlass_includes(), "build_dir": str(out),
           "with_cuda": bool(cu) or sol.spec.language == "cuda"}
    (folder / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "avo.harness.build", str(folder / "job.json")]
    here = str(Path(__file__).resolve().parents[2])  # the child runs in the cache folder: find avo from anywhere
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (here, os.environ.get("PYTHONPATH")) if x)}
    try:
        results = _run([("build", cmd)], folder, folder / "logs", t0 + limit_s, env=env)
    except BuildError:
        raise BuildError(_limit_text(limit_s), timeout=True) from None
    _, rc, log = results[0]
    lib = next((ln[len("AVO_BUILT "):] for ln in log.splitlines() if ln.startswith("AVO_BUILT ")), None)
    if rc != 0 or not lib:
        raise BuildError(first_errors(log, src))
    info = {"lib": lib, "seconds": round(time.monotonic() - t0, 2), "when": time.strftime("%Y-%m-%d %H:%M")}
    (folder / "built.json").write_text(json.dumps(info))


def _child(job_path: str) -> None:
    """The build itself, in its own process (python -m avo.harness.build JOB.json): the worker's
    time limit kills its whole process group, compilers included."""
    job = json.loads(Path(job_path).read_text())
    if job["binding"] == "torch":
        from torch.utils.cpp_extension import load as torch_load
        mod = torch_load(name=job["name"], sources=job["sources"], extra_cflags=job["cflags"],
                         extra_cuda_cflags=job["cuda_cflags"], extra_ldflags=job["ld_flags"],
                         extra_include_paths=job["include"], build_directory=job["build_dir"],
                         with_cuda=job["with_cuda"], verbose=True, is_python_module=True)
        lib = mod.__file__
    else:
        import tvm_ffi.cpp
        ld = list(job["ld_flags"])
        if job["cu"] and not ld:  # flashinfer-bench's TVMFFIBuilder links these for CUDA sources
            ld = ["-lcuda", "-lcublas"]
        lib = tvm_ffi.cpp.build(name=job["name"], cpp_files=job["cxx"], cuda_files=job["cu"],
                                extra_cflags=job["cflags"], extra_cuda_cflags=job["cuda_cflags"], extra_ldflags=ld,
                                extra_include_paths=job["include"], build_directory=job["build_dir"])
    print(f"AVO_BUILT {lib}", flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
