"""The candidate worker's sandbox (avo/harness/sandbox.py) through the real worker processes:
legitimate host code (import os / time, reading its own files, writing into its own folder) PASSES
with the static guard's warnings recorded, and what the static guard now lets through is refused
by the kernel or caught by the runtime guard, with the check that fired: another process's
/proc files, writes outside the scratch folder, network sockets, harness statistics, the
environment. A test skips only where this machine's kernel lacks the feature it needs, and says
which."""
from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from avo.harness import sandbox
from avo.harness.runner import EvalConfig, Evaluator
from avo.schema import BuildSpec, EvaluationStatus, Solution, SourceFile
from avo.tasks import load_task

S = EvaluationStatus
LINUX = sys.platform.startswith("linux")
LANDLOCK_ABI, LANDLOCK_WHY = sandbox.landlock_abi()

KERNEL = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _double(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


def _launch(x, out):
    _double[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), BLOCK=64)
'''

# Host code as real solutions and generated files have it: os for paths and the environment, time,
# a table read from the solution's own folder, a file written next to it (inside the scratch folder).
LEGIT = KERNEL + '''
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = float(open(os.path.join(HERE, "scale.txt")).read())
DEBUG = os.environ.get("AVO_KERNEL_DEBUG", "0") == "1"


def run(x, out):
    t0 = time.perf_counter()
    _launch(x, out)
    with open(os.path.join(HERE, "calls.log"), "a") as f:
        f.write(f"{time.perf_counter() - t0:.6f}\\n")
    assert SCALE == 2.0 and not DEBUG
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_tiny_double):
    return load_task(str(write_tiny_double(tmp_path_factory.mktemp("tiny_double_sbx"), "def run(x):\n    return x * 2\n")))


def sol(code: str, extra: dict[str, str] | None = None, name: str = "cand") -> Solution:
    files = [SourceFile(path="k.py", content=textwrap.dedent(code))]
    files += [SourceFile(path=p, content=c) for p, c in (extra or {}).items()]
    return Solution(name=name, definition="tiny_double", author="test",
                    spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point="k.py::run"),
                    sources=files)


@pytest.fixture(scope="module")
def ev():
    with Evaluator(EvalConfig(device="interpret", iters=3, warmup=1)) as e:
        yield e


@pytest.fixture(scope="module")
def peer_ev():
    """Static guard off: the sandbox and the runtime guard alone."""
    with Evaluator(EvalConfig(device="interpret", iters=3, warmup=1, peer=True)) as e:
        yield e


def layers(e: Evaluator) -> dict:
    e.cand.ensure()
    return e.cand.info.get("sandbox", {}).get("layers", {})


def refused(rep, fragment: str = "") -> None:
    assert rep.status == S.RUNTIME_ERROR and rep.hack_check == "sandbox", (rep.status, rep.hack_check, rep.message)
    assert "refused by the worker's sandbox" in rep.message and fragment in rep.message, rep.message


def test_legitimate_host_code_passes_with_warnings(ev, tiny):
    """import os, import time, open(...).read() of its own file and a write into its own folder:
    PASSED, each runtime-covered rule listed as a warning, and the sandbox line says what ran."""
    rep = ev.evaluate(tiny, sol(LEGIT, {"scale.txt": "2.0\n"}))
    assert rep.status == S.PASSED, rep.message
    text = "\n".join(rep.warnings)
    assert "imports 'os'" in text and "imports 'time'" in text and "uses open" in text, text
    assert rep.sandbox.startswith("sandbox: "), rep.sandbox
    if LANDLOCK_ABI:
        assert "landlock fs" in rep.sandbox
    else:
        assert "landlock unavailable" in rep.sandbox or "landlock disabled" in rep.sandbox


def test_sandbox_layers_reported(ev):
    """Which layers this machine's kernel gave the candidate worker; none claimed that is not on."""
    if not LINUX:
        pytest.skip("the sandbox is Linux-only (prctl, Landlock, seccomp)")
    got = layers(ev)
    assert set(got) >= {"caps", "fs", "net", "procs", "open"}, got
    assert got["fs"]["on"] == bool(LANDLOCK_ABI), (got["fs"], LANDLOCK_WHY)
    assert got["open"]["on"]
    assert ev.protected and ev.ref.info.get("dumpable") is False  # runner and reference not dumpable


PEEK_RUNNER = KERNEL + '''
import os


def run(x, out):
    secret = open(f"/proc/{os.getppid()}/environ", "rb").read()  # the runner's environment
    _launch(x, out)
'''

PEEK_REFERENCE = KERNEL + '''
import os


def _reference_pid():
    me, runner = os.getpid(), str(os.getppid())
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != me:
            try:
                argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")
            except OSError:
                continue
            if b"avo.harness.worker" in argv and b"reference" in argv and runner.encode() in argv:
                return int(p)
    raise LookupError("no reference worker")


def run(x, out):
    with open(f"/proc/{_reference_pid()}/mem", "rb") as f:  # the reference worker's memory
        f.read(1)
    _launch(x, out)
'''


@pytest.mark.skipif(not LINUX, reason="needs Linux (prctl PR_SET_DUMPABLE, capabilities)")
@pytest.mark.parametrize("code,what", [(PEEK_RUNNER, "environ"), (PEEK_REFERENCE, "mem")], ids=["runner", "reference"])
def test_other_processes_are_closed(ev, tiny, code, what):
    """The static guard lets these through (os and reading files are allowed); the runner and the
    reference worker are not dumpable and the candidate worker holds no capabilities (Landlock
    also refuses ptrace access outside the worker), so the read fails and the verdict names the
    sandbox. Were the read to succeed the kernel would be right and the test would fail (PASSED)."""
    assert layers(ev)["caps"]["on"] or os.geteuid() != 0, layers(ev)["caps"]
    refused(ev.evaluate(tiny, sol(code)), what)


def test_writes_outside_the_scratch_folder_are_refused(ev, tiny, tmp_path):
    if not LANDLOCK_ABI:
        pytest.skip(f"the kernel cannot confine writes: {LANDLOCK_WHY}")
    target = tmp_path / "outside.txt"
    code = KERNEL + f'''

def run(x, out):
    with open({str(target)!r}, "w") as f:
        f.write("written by the candidate")
    _launch(x, out)
'''
    refused(ev.evaluate(tiny, sol(code)), str(target))
    assert not target.exists()


def test_os_level_writes_are_refused_too(peer_ev, tiny, tmp_path):
    """Without the static guard: os.open/os.write and a rename over a file of the repository's
    kind, which the worker's open() never sees; only the kernel can stop them."""
    if not LANDLOCK_ABI:
        pytest.skip(f"the kernel cannot confine writes: {LANDLOCK_WHY}")
    victim = tmp_path / "timing.py"
    victim.write_text("# harness code\n")
    code = KERNEL + f'''
import os


def run(x, out):
    fd = os.open({str(victim)!r}, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"patched")
    _launch(x, out)
'''
    refused(peer_ev.evaluate(tiny, sol(code)), str(victim))
    assert victim.read_text() == "# harness code\n"


def test_network_is_off(peer_ev, tiny):
    net = layers(peer_ev).get("net", {})
    if not net.get("on"):
        pytest.skip(f"this kernel gives the worker no network restriction: {net.get('detail')}")
    code = KERNEL + '''
import socket


def run(x, out):
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9))
    _launch(x, out)
'''
    refused(peer_ev.evaluate(tiny, sol(code)))


def test_file_descriptor_open_is_refused(peer_ev, tiny):
    """open(fd) would wrap the worker's channel to the runner and forge its messages."""
    code = KERNEL + '''

def run(x, out):
    for fd in range(3, 64):
        try:
            open(fd, "wb", closefd=False).write(b"forged")
        except OSError as e:
            if "file descriptor is refused" in str(e):
                raise
    _launch(x, out)
'''
    refused(peer_ev.evaluate(tiny, sol(code)), "file descriptor")


@pytest.mark.parametrize("patch,check,fragment", [
    ("import statistics\nstatistics.median = lambda xs: 1e-9", "monkey-patch", "statistics.median"),
    ("import time\ntime.monotonic = lambda: 0.0", "monkey-patch", "time.monotonic"),
    ("import random\nrandom.SystemRandom.sample = lambda self, p, k: list(p)[:k]", "monkey-patch",
     "random.SystemRandom.sample"),
    ("import os\nos.environ['OMP_NUM_THREADS'] = '1'", "global-state", "OMP_NUM_THREADS"),
], ids=["statistics", "monotonic", "random", "environment"])
def test_runtime_guard_watches_what_the_harness_uses(peer_ev, tiny, patch, check, fragment):
    """Patches the static guard refuses as monkey-patches (or misses: a subscript store on
    os.environ), caught by the runtime guard alone."""
    code = KERNEL + "\n" + patch + "\n\n\ndef run(x, out):\n    _launch(x, out)\n"
    rep = peer_ev.evaluate(tiny, sol(code))
    assert (rep.status, rep.hack_check) == (S.REWARD_HACK, check), rep.message
    assert fragment in rep.message, rep.message


def test_seccomp_program_shape():
    """The BPF filter's jumps land inside the program and every path ends in a return."""
    for table in sandbox.SYSCALLS.values():
        prog = sandbox.seccomp_program(table)
        assert len(prog) < 64
        for i, (code, jt, jf, _k) in enumerate(prog):
            if code in (sandbox.BPF_JEQ_K, sandbox.BPF_JGE_K):
                assert i + 1 + max(jt, jf) < len(prog)
        assert prog[-4][0] == sandbox.BPF_RET_K and prog[-4][3] == sandbox.SECCOMP_RET_ALLOW


def test_sandbox_off_turns_file_rules_back_into_errors(tiny, monkeypatch):
    """AVO_SANDBOX=off (diagnosing a machine): nothing is confined, the report says so, and a file
    write the kernel no longer stops is refused by the static guard instead of warned about."""
    monkeypatch.setenv("AVO_SANDBOX", "off")
    writer = LEGIT.replace("import time\n", "import time\nos.makedirs(os.path.join(HERE, 'cache'), exist_ok=True)\n")
    with Evaluator(EvalConfig(device="interpret", iters=3, warmup=1)) as e:
        rep = e.evaluate(tiny, sol(writer, {"scale.txt": "2.0\n"}))
        assert (rep.status, rep.hack_check) == (S.REWARD_HACK, "static:file-write"), rep.message
        assert "Landlock" in rep.message
        rep = e.evaluate(tiny, sol(LEGIT, {"scale.txt": "2.0\n"}))  # reads and open() stay allowed
        assert rep.status == S.PASSED, rep.message
        assert rep.sandbox == "sandbox: off (AVO_SANDBOX=off)"


FALLBACK = r'''
import json, os, sys, tempfile
from pathlib import Path
from avo.harness import sandbox
sandbox.landlock_abi = lambda: (0, "landlock unavailable (simulated)")
scratch, outside = Path(tempfile.mkdtemp()), Path(sys.argv[1])
info = sandbox.confine(scratch, None, "interpret", False)
out = {"summary": sandbox.summary(info), "fs": info["layers"]["fs"], "open": info["layers"]["open"]}
open(scratch / "ok.txt", "w").write("inside")
try:
    open(outside, "w").write("outside")
    out["outside"] = "written"
except PermissionError as e:
    out["outside"] = str(e)
print(json.dumps(out))
'''


@pytest.mark.skipif(not LINUX, reason="the sandbox is Linux-only")
def test_without_landlock_the_worker_open_confines_writes(tmp_path):
    """On a kernel without Landlock (simulated), the fs layer reports off with the reason, and the
    worker's open() refuses writes outside its folders itself (os-level writes are then left to
    the static guard, whose file rules turn into errors)."""
    import subprocess
    target = tmp_path / "outside.txt"
    r = subprocess.run([sys.executable, "-c", FALLBACK, str(target)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["fs"] == {"on": False, "detail": "landlock unavailable (simulated)"}
    assert "landlock unavailable (simulated)" in out["summary"]
    assert "writes only under the worker's folders" in out["outside"] and not target.exists()
