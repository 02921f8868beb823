"""The candidate worker's sandbox: known cheats made impossible by the kernel rather than unspelled
in the source. Stdlib only (ctypes and raw syscalls; no compiled dependency), Linux only; each
layer is detected at run time and what could not be set up is reported, never assumed.

In the candidate worker, after torch (and CUDA) are initialised and before any candidate code
loads (`confine`):

* `TMPDIR` and `tempfile.tempdir` point at the worker's scratch folder, so the compilers Triton
  and the CUDA C++ build start (ptxas, gcc, nvcc) write their temporaries there.
* caps: every capability dropped (effective, permitted, inheritable, ambient, bounding set), then
  no_new_privs. A root worker without CAP_SYS_PTRACE cannot read another process's
  /proc/PID/environ or /proc/PID/mem unless that process is dumpable and holds no more
  capabilities than it does.
* fs (Landlock, kernel 5.13+): writes (create, write, truncate, remove, rename, link) only under
  the scratch folder, the runner's bulk folder for this worker, the compile caches (Triton's cache,
  CUDA's JIT cache, avo's CUDA C++ build cache), a few device files (/dev/null, /dev/nvidia*) and,
  where outputs go by CUDA IPC, /dev/shm (torch keeps the IPC reference counts there). Landlock
  also refuses ptrace-attach access (/proc/PID/mem) to any process outside the worker.
* net: seccomp refuses socket(AF_INET / AF_INET6) and io_uring (whose requests would bypass the
  filter); Landlock ABI 4 (kernel 6.7+) also refuses TCP bind/connect.
* procs: seccomp refuses ptrace, process_vm_readv/writev and pidfd_getfd; Landlock ABI 6
  (kernel 6.12+) scopes signals and abstract unix sockets to the worker and its children.
* open: the builtin open() refuses a file descriptor (the worker's channel to the runner is one)
  and, where Landlock is missing, a write outside the writable folders above.

Trusted processes (the runner, the reference worker, operator actors that hold API keys) call
`protect_self`: PR_SET_DUMPABLE 0 makes their /proc/PID/{environ,mem} unreadable, and
un-ptraceable, to a process without CAP_SYS_PTRACE."""
from __future__ import annotations

import builtins
import ctypes
import errno
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 4, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Syscall numbers and the seccomp audit arch, per machine (<asm/unistd.h>, <linux/audit.h>).
SYSCALLS = {
    "x86_64": dict(arch=0xC000003E, seccomp=317, capset=126, socket=41, ptrace=101, process_vm_readv=310,
                   process_vm_writev=311, pidfd_getfd=438, io_uring_setup=425, landlock_create_ruleset=444,
                   landlock_add_rule=445, landlock_restrict_self=446),
    "aarch64": dict(arch=0xC00000B7, seccomp=277, capset=91, socket=198, ptrace=117, process_vm_readv=270,
                    process_vm_writev=271, pidfd_getfd=438, io_uring_setup=425, landlock_create_ruleset=444,
                    landlock_add_rule=445, landlock_restrict_self=446),
}

# <linux/landlock.h>
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG, FS_MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM, FS_REFER, FS_TRUNCATE = 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
FS_WRITES_V1 = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
                | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)

# <linux/filter.h>, <linux/seccomp.h>
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
X32_SYSCALL_BIT = 0x40000000
AF_INET, AF_INET6 = 2, 10

LAYERS = ("caps", "fs", "net", "procs", "open")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _table() -> Optional[dict]:
    return SYSCALLS.get(platform.machine()) if sys.platform.startswith("linux") else None


def _syscall(libc, nr: int, *args) -> tuple[int, int]:
    """(result, errno) of a raw syscall; ints passed as C longs (syscall() is variadic)."""
    conv = [a if isinstance(a, ctypes._SimpleCData) or not isinstance(a, int) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return r, (ctypes.get_errno() if r < 0 else 0)


def _prctl(libc, option: int, arg: int = 0) -> tuple[int, int]:
    ctypes.set_errno(0)
    r = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    return r, (ctypes.get_errno() if r < 0 else 0)


# ---- trusted processes ----

def protect_self() -> bool:
    """PR_SET_DUMPABLE 0 for this (trusted) process: its /proc/PID/environ and /proc/PID/mem become
    root's, and a process without CAP_SYS_PTRACE can neither read them nor ptrace it (the candidate
    worker drops its capabilities). Reset by execve, so each trusted process calls it itself."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _prctl(_libc(), PR_SET_DUMPABLE, 0)[0] == 0
    except (OSError, AttributeError):
        return False


def dumpable() -> Optional[bool]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return bool(_libc().prctl(ctypes.c_int(3), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                                  ctypes.c_ulong(0)))  # PR_GET_DUMPABLE
    except (OSError, AttributeError):
        return None


# ---- detection ----

def landlock_abi() -> tuple[int, str]:
    """(ABI version, '') where Landlock can be used, else (0, why not)."""
    t = _table()
    if t is None:
        return 0, f"no syscall table for {sys.platform}/{platform.machine()}"
    try:
        r, e = _syscall(_libc(), t["landlock_create_ruleset"], None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError) as ex:
        return 0, f"cannot call syscall() ({ex})"
    if r > 0:
        return int(r), ""
    kernel = platform.release()
    if e == errno.EOPNOTSUPP:
        return 0, f"landlock disabled at boot (kernel {kernel}; lsm= lacks landlock)"
    if e == errno.ENOSYS:
        try:
            recent = tuple(int(x) for x in kernel.split("-")[0].split(".")[:2]) >= (5, 13)
        except ValueError:
            recent = False
        return 0, (f"landlock unavailable (kernel {kernel}: not built in, or its syscalls blocked by a "
                   "container's seccomp profile)" if recent else
                   f"landlock unavailable (kernel {kernel}; needs 5.13+ with CONFIG_SECURITY_LANDLOCK)")
    return 0, f"landlock unavailable (kernel {kernel}: {os.strerror(e) if e else 'no version'})"


def writes_confined(info: Optional[dict]) -> bool:
    """Whether the kernel confines the worker's file writes (the static guard's file rules are then
    warnings, not errors)."""
    return bool(info and info.get("layers", {}).get("fs", {}).get("on"))


def disabled() -> Optional[dict]:
    """The sandbox info when AVO_SANDBOX=off turns it off (diagnosing a machine), else None."""
    if os.environ.get("AVO_SANDBOX", "").lower() in ("0", "off", "no", "false"):
        return {"off": "AVO_SANDBOX=off"}
    return None


def expected(device: str) -> dict:
    """What `confine` will set up in a candidate worker on this machine, without setting it up (the
    runner scans a candidate before its worker has said what it got)."""
    off = disabled()
    if off:
        return off
    abi, why = landlock_abi()
    return {"layers": {"fs": {"on": abi > 0, "detail": f"landlock ABI {abi}" if abi else why}}}


# ---- the candidate worker ----

def confine(scratch: Path, bulk: Optional[Path], device: str, ipc: bool) -> dict:
    """Set up every layer this kernel allows, in the calling (main) thread; returns
    {"layers": {name: {"on": bool, "detail": str}}} for the worker's "ready" message. Never raises:
    a layer that cannot be set up is reported off with the reason."""
    layers: dict[str, dict[str, Any]] = {}
    t = _table()
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    if t is None:
        why = f"not available on {sys.platform}/{platform.machine()}"
        for name in ("caps", "fs", "net", "procs"):
            layers[name] = {"on": False, "detail": why}
        layers["open"] = _guard_open([], confined=False)
        return {"layers": layers}
    libc = _libc()
    layers["caps"] = _drop_caps(libc, t)
    nnp = _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)[0] == 0
    writable = _writable(scratch, bulk, device, ipc)
    abi, why = landlock_abi()
    ll = _landlock(libc, t, abi, writable) if abi and nnp else \
        {"fs": why or "no_new_privs could not be set", "net": None, "scope": None}
    layers["fs"] = {"on": isinstance(ll["fs"], list), "detail":
                    f"landlock ABI {abi}: writes only under {', '.join(ll['fs'])}" if isinstance(ll["fs"], list)
                    else ll["fs"]}
    sc = _seccomp(libc, t) if nnp else "no_new_privs could not be set"
    net = [x for x in ("seccomp: no AF_INET/AF_INET6 sockets" if sc is True else None,
                       "landlock: no TCP bind/connect" if ll["net"] is True else None) if x]
    layers["net"] = {"on": bool(net), "detail": "; ".join(net) if net else
                     f"not restricted (seccomp: {sc}; landlock: {ll['net'] or why or 'ABI < 4'})"}
    procs = [x for x in ("seccomp: no ptrace, process_vm_*, pidfd_getfd, io_uring" if sc is True else None,
                         "landlock: no ptrace-attach or /proc/PID/mem outside" if layers["fs"]["on"] else None,
                         "landlock: signals and abstract unix sockets scoped" if ll["scope"] is True else None) if x]
    layers["procs"] = {"on": bool(procs), "detail": "; ".join(procs) if procs else
                       f"not restricted (seccomp: {sc}; landlock: {why or 'failed'})"}
    layers["open"] = _guard_open([str(p) for p in writable if p.is_dir()], confined=layers["fs"]["on"])
    return {"layers": layers}


def _drop_caps(libc, t: dict) -> dict:
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):  # needs CAP_SETPCAP: a root worker has it, a user's has nothing to drop
        _prctl(libc, PR_CAPBSET_DROP, cap)
    _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    r, e = _syscall(libc, t["capset"], ctypes.byref(hdr), data)
    eff = _cap_eff()
    if eff == 0:
        return {"on": True, "detail": "no capabilities"}
    return {"on": False, "detail": f"capabilities kept (CapEff {eff:x}; capset: {os.strerror(e) if e else 'ok'})"}


def _cap_eff() -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def _writable(scratch: Path, bulk: Optional[Path], device: str, ipc: bool) -> list[Path]:
    """Folders the worker (and the compilers it starts) must write; caches are created first, since
    a Landlock rule needs an existing path."""
    dirs = [scratch] + ([bulk] if bulk else [])
    caches: list[Path] = []
    try:
        from avo.harness import build
        caches.append(build.cache_root())
    except Exception:
        pass
    if device == "cuda":
        try:
            from triton import knobs
            caches.append(Path(knobs.cache.dir))
        except Exception:
            caches.append(Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache"))
        caches.append(Path(os.environ.get("CUDA_CACHE_PATH") or Path.home() / ".nv" / "ComputeCache"))
        caches.append(Path(os.environ.get("PYTORCH_KERNEL_CACHE_PATH") or Path.home() / ".cache" / "torch" / "kernels"))
        if ipc:
            dirs.append(Path("/dev/shm"))
    for c in caches:
        try:
            c.mkdir(parents=True, exist_ok=True)
            dirs.append(c)
        except OSError:
            pass
    return dirs


def _device_files() -> list[Path]:
    out = [Path(p) for p in ("/dev/null", "/dev/zero", "/dev/full", "/dev/dxg")]
    try:
        out += sorted(p for p in Path("/dev").glob("nvidia*") if not p.is_dir())
        caps = Path("/dev/nvidia-caps")
        if caps.is_dir():
            out += sorted(caps.iterdir())
    except OSError:
        pass
    return [p for p in out if p.exists()]


def _landlock(libc, t: dict, abi: int, writable: list[Path]) -> dict:
    """{"fs": [folders] or why not, "net": True or why not, "scope": True or why not}."""
    fs = FS_WRITES_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scope = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scope)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd, e = _syscall(libc, t["landlock_create_ruleset"], ctypes.byref(attr), size, 0)
    if fd < 0:
        return {"fs": f"landlock_create_ruleset failed ({os.strerror(e)})", "net": None, "scope": None}
    allowed: list[str] = []
    try:
        file_rights = FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
        for p in [*writable, *_device_files()]:
            try:
                pfd = os.open(str(p), os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = _PathBeneath(fs if p.is_dir() else file_rights, pfd)
                r, e = _syscall(libc, t["landlock_add_rule"], ctypes.c_int(fd), LANDLOCK_RULE_PATH_BENEATH,
                                ctypes.byref(rule), 0)
                if r == 0 and p.is_dir():
                    allowed.append(str(p))
            finally:
                os.close(pfd)
        r, e = _syscall(libc, t["landlock_restrict_self"], ctypes.c_int(fd), 0)
        if r != 0:
            return {"fs": f"landlock_restrict_self failed ({os.strerror(e)})", "net": None, "scope": None}
    finally:
        os.close(fd)
    return {"fs": allowed, "net": True if net else f"ABI {abi} < 4 (kernel 6.7+)",
            "scope": True if scope else f"ABI {abi} < 6 (kernel 6.12+)"}


def seccomp_program(t: dict) -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k): a foreign syscall ABI (x32, i386 on x86_64) gets ENOSYS;
    ptrace, process_vm_readv/writev, pidfd_getfd and io_uring_setup EPERM; socket(AF_INET or
    AF_INET6) EACCES; everything else is allowed."""
    denied = [t[n] for n in ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "io_uring_setup")]
    ins: list = [("ld", 4), ("jeq", t["arch"], None, "enosys"), ("ld", 0)]
    if t is SYSCALLS["x86_64"]:
        ins.append(("jge", X32_SYSCALL_BIT, "enosys", None))
    ins += [("jeq", nr, "eperm", None) for nr in denied]
    ins += [("jeq", t["socket"], None, "allow"), ("ld", 16),  # args[0], low 32 bits (little endian)
            ("jeq", AF_INET, "eacces", None), ("jeq", AF_INET6, "eacces", None)]
    labels = {"allow": len(ins), "eacces": len(ins) + 1, "eperm": len(ins) + 2, "enosys": len(ins) + 3}
    out = []
    for i, x in enumerate(ins):
        if x[0] == "ld":
            out.append((BPF_LD_W_ABS, 0, 0, x[1]))
        else:
            jt = 0 if x[2] is None else labels[x[2]] - i - 1
            jf = 0 if x[3] is None else labels[x[3]] - i - 1
            out.append((BPF_JEQ_K if x[0] == "jeq" else BPF_JGE_K, jt, jf, x[1]))
    out += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EACCES),
            (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS)]
    return out


def _seccomp(libc, t: dict):
    """True, or why the filter is not installed. TSYNC: every thread of the worker gets it."""
    prog = seccomp_program(t)
    arr = (_SockFilter * len(prog))(*[_SockFilter(*x) for x in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    r, e = _syscall(libc, t["seccomp"], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog))
    if r == 0:
        return True
    return f"seccomp unavailable ({os.strerror(e)})" if r < 0 else f"seccomp: thread {r} could not be synced"


def _guard_open(roots: list[str], confined: bool) -> dict:
    """builtins.open for everything that runs in the worker after this: a file descriptor is refused
    (the worker's channel to the runner is one; io.open, which the standard library uses, is
    unchanged), and so, where the kernel does not confine writes, is a write outside `roots`."""
    real = builtins.open

    def open(file, mode="r", *args, **kwargs):  # noqa: A001 (the builtin's own name and signature)
        if isinstance(file, int):
            raise PermissionError(errno.EPERM, "sandbox: open() of a file descriptor is refused in the "
                                  "candidate worker (its channel to the runner is one)")
        if kwargs.get("opener") is not None or len(args) >= 6:
            raise PermissionError(errno.EPERM, "sandbox: open() with an opener is refused in the candidate worker")
        if not confined and isinstance(mode, str) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fspath(file))
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                raise PermissionError(errno.EACCES, f"sandbox: writes only under the worker's folders, not {path}")
        return real(file, mode, *args, **kwargs)

    open.__doc__ = real.__doc__
    builtins.open = open
    return {"on": True, "detail": "open() refuses file descriptors" +
            ("" if confined else f" and writes outside {', '.join(roots)}")}


# ---- reporting ----

def summary(info: Optional[dict], peers: Optional[bool] = None) -> str:
    """One line: which layers are on, and why the others are off."""
    if info and info.get("off"):
        return f"sandbox: off ({info['off']})"
    if not info or "layers" not in info:
        return "sandbox: none reported by the worker"
    L = info["layers"]
    on = lambda k: L.get(k, {}).get("on")
    parts = []
    parts.append("landlock fs" if on("fs") else L.get("fs", {}).get("detail", "fs not confined"))
    parts.append("network off" if on("net") else "network: not restricted")
    if on("caps"):
        parts.append("no capabilities")
    if on("procs"):
        parts.append("other processes closed")
    if peers is not None:
        parts.append("no-dumpable peers" if peers else "peers dumpable")
    return "sandbox: " + ", ".join(parts)


def denial(exc: BaseException) -> Optional[str]:
    """The sandbox's refusal in an exception raised by candidate code (an EACCES or EPERM
    PermissionError somewhere in its chain), as a sentence; None for other errors."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM)):
            return str(e)
        e = e.__cause__ or e.__context__
    return None
