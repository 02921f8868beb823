"""Workers never outlive the run (issue 23): a runner killed with kill -9 takes its workers with it
(PR_SET_PDEATHSIG), what runner and workers leave in the temp dir is swept once its owning pid is
gone, a worker removes its own folder on SIGTERM, and the derived run limit scales with the
candidate's measured calls. Real processes, the tiny task of test_harness.py."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from avo.harness import channel
from avo.harness.runner import FIXED_RUN_S, RUN_FACTOR, RUN_FLOOR_S, EvalConfig, Evaluator, derived_run_limit

from test_harness import HONEST, REFERENCE

REPO = Path(__file__).resolve().parents[1]

RUNNER = '''
import sys
from avo.harness.runner import EvalConfig, Evaluator
from avo.schema import BuildSpec, Solution, SourceFile
from avo.tasks import load_task

HANG = "def run(x, out):\\n    while True:\\n        pass\\n"
task = load_task(sys.argv[1])
sol = Solution(name="cand", definition="tiny_double", author="test",
               spec=BuildSpec(language="triton", target_hardware=["cuda"], entry_point="k.py::run"),
               sources=[SourceFile(path="k.py", content=open(sys.argv[2]).read())])
ev = Evaluator(EvalConfig(device="interpret"))
rep = ev.evaluate(task, sol)
print(rep.status.value, ev.cand.proc.pid, ev.ref.proc.pid, flush=True)
# now a kernel that hangs: the candidate worker is busy, not reading its socket, when the runner dies
ev.evaluate(task, sol.model_copy(update={"sources": [SourceFile(path="k.py", content=HANG)]}))
'''


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, write_tiny_double) -> Path:
    root = write_tiny_double(tmp_path_factory.mktemp("tiny_double"), REFERENCE)
    (root / "k.py").write_text(HONEST)
    return root


def workers_of(parent: int) -> list[int]:
    """Live worker processes started by `parent` (their command line names it with --parent)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"avo.harness.worker" in argv and b"--parent" in argv and \
                argv[argv.index(b"--parent") + 1:argv.index(b"--parent") + 2] == [str(parent).encode()]:
            found.append(int(d.name))
    return found


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def leftovers(runner: int, workers: list[int]) -> list[Path]:
    """What the runner (bulk folders, worker logs) and its workers (own folders) left, anywhere sweep looks."""
    out = []
    for root in {Path(tempfile.gettempdir()), Path("/dev/shm")}:
        out += list(root.glob(f"avo-bulk-{runner}-*")) + list(root.glob(f"avo-worker-*-{runner}-*.log"))
        for pid in workers:
            out += list(root.glob(f"avo-candidate-{pid}-*")) + list(root.glob(f"avo-reference-{pid}-*"))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_runner_group_leaves_no_worker_and_the_sweep_cleans_up(tiny_root):
    p = subprocess.Popen([sys.executable, "-c", RUNNER, str(tiny_root), str(tiny_root / "k.py")], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)
        line = p.stdout.readline() if ready else ""
        assert line, f"the runner did not report: {p.poll()} {p.stderr.read() if p.poll() is not None else ''}"
        status, cand, ref = line.split()
        assert status == "PASSED"
        workers = sorted(workers_of(p.pid))
        assert workers == sorted([int(cand), int(ref)])  # the check below can see them
        deadline, busy = time.monotonic() + 30, 0
        while busy < 10 and time.monotonic() < deadline:  # the candidate worker spins in the hang
            busy = busy + 1 if state(int(cand)) == "R" else 0
            time.sleep(0.05)
        assert busy == 10, "the candidate worker never got busy with the hanging kernel"
        left = leftovers(p.pid, workers)
        assert any(f"avo-candidate-{cand}-" in x.name for x in left) and any(x.name.endswith(".log") for x in left)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the runner's group: workers lead their own sessions
        p.wait()
    deadline = time.monotonic() + 5
    while (workers_of(p.pid) or any(channel._alive(w) for w in workers)) and time.monotonic() < deadline:
        time.sleep(0.05)  # (an exiting process loses its command line before it is a zombie)
    assert workers_of(p.pid) == [], "a worker outlived its runner"
    assert [w for w in workers if channel._alive(w)] == []  # gone, or a zombie waiting for pid 1 to reap it
    assert leftovers(p.pid, workers), "nothing to sweep: the test proves nothing"
    channel.sweep()
    assert leftovers(p.pid, workers) == []


def test_a_worker_removes_its_folder_on_sigterm_and_close_removes_the_rest(tiny_root):
    ev = Evaluator(EvalConfig(device="interpret"))
    try:
        ev.cand.ensure()
        ev.ref.ensure()
        cand, ref = ev.cand.proc.pid, ev.ref.proc.pid
        own = list(Path(tempfile.gettempdir()).glob(f"avo-candidate-{cand}-*"))
        assert len(own) == 1 and own[0].is_dir()
        os.kill(cand, signal.SIGTERM)
        assert ev.cand.proc.wait(timeout=30) == 128 + signal.SIGTERM
        # the worker's own doing (the runner has not looked yet): everything inside; the folder
        # itself too unless Landlock confines the worker's writes to it (removing it is a write to
        # the temp dir), and then the runner removes it below
        assert not own[0].exists() or not any(own[0].iterdir())
        rest = [ev.cand.log_path, ev.ref.log_path, ev.cand.bulk, ev.ref.bulk,
                *Path(tempfile.gettempdir()).glob(f"avo-reference-{ref}-*")]
        assert len(rest) == 5 and all(x.exists() for x in rest)
    finally:
        ev.close()
    assert not own[0].exists()
    assert not [x for x in rest if x.exists()]  # logs, bulk folders, the killed reference worker's folder


def test_the_sweep_spares_what_a_live_pid_owns(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone, live = int(dead.stdout), os.getpid()
    names = ["avo-candidate-{}-abc_12", "avo-reference-{}-x9", "avo-bulk-{}-candidate-q1", "avo-worker-reference-{}-0a1b2c.log"]
    for n in names:
        for pid in (gone, live):
            if n.endswith(".log"):
                (tmp_path / n.format(pid)).write_text("x")
            else:
                (tmp_path / n.format(pid)).mkdir()
    (tmp_path / f"avo-profile-{gone}-x").mkdir()  # not the harness's: never touched
    removed = channel.sweep(tmp_path)
    assert sorted(x.name for x in removed) == sorted(n.format(gone) for n in names)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([n.format(live) for n in names] + [f"avo-profile-{gone}-x"])


def test_derived_run_limit_scales_with_the_measured_calls():
    timing = {"warmup": 1, "iters": 5, "wall_reps": 20, "probes": 8}
    # a correctness call: bounded by the workload's first call
    assert derived_run_limit("check:w", {"compile:w": 0.2}, {}, timing, 4, False) == RUN_FLOOR_S
    assert derived_run_limit("check:w", {"compile:w": 12.0}, {}, timing, 4, False) == RUN_FACTOR * 12.0
    # timing: (warmup + iters + sets) calls of candidate and baseline, the probes called again (at
    # most max(sets, probes)), refresh calls (at most sets), wall calls on CUDA
    slow = {"compile:w": 9.0, "check:w": 2.0}
    assert derived_run_limit("time:w", slow, {"w": 0.5}, timing, 4, False) == RUN_FACTOR * ((10 + 8 + 4) * 2.0 + 10 * 0.5)
    assert derived_run_limit("time:w", slow, {"w": 0.5}, timing, 4, True) == \
        RUN_FACTOR * ((10 + 8 + 4 + 20) * 2.0 + 10 * 0.5)
    assert derived_run_limit("time:w", {"check:w": 0.01}, {"w": 0.01}, timing, 4, True) == RUN_FLOOR_S
    assert derived_run_limit("time:v", slow, {}, timing, 4, False) == FIXED_RUN_S  # nothing measured on v


def test_a_restart_promotes_the_spare_worker_and_starts_the_next():
    """A spare (on a GPU by default) is started once its worker is up; a restart puts it in the
    killed worker's place, ready, and starts another; close ends all of them and their logs."""
    from avo.harness.workerproc import WorkerProc
    w = WorkerProc("interpret", "candidate", spare=True)
    try:
        w.restart()  # the first start (ensure_workers' way)
        w.wait_ready()
        first, spare = w.proc.pid, w.spare.proc.pid
        w.spare.wait_ready()  # the spare says ready on its own; the promoted worker keeps that
        w.restart()
        assert w.proc.pid == spare and w.ready and w.info.get("pid") == spare
        assert w.spare.proc is not None and w.spare.proc.pid not in (first, spare)
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        logs = [w.log_path, w.spare.log_path]
        w.send({"op": "nothing"})  # the promoted worker serves: an unknown op is a worker error, answered
        assert w.recv(60)[0] == "fail"
    finally:
        w.close()
    assert w.spare.proc is None and not [x for x in logs if x.exists()]
