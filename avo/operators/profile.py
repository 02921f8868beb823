"""The agent's `profile` tool: Nsight Compute on one workload of the candidate, summarised in a
few lines (duration, SOL throughput, occupancy, registers, launch shape per kernel).

The candidate runs in a child process under `ncu` with the evaluator's scrubbed environment
(no keys), never in the orchestrator. Only the calls inside an NVTX range `avo_profile` are
profiled, so input generation and the reference stay out of the report. Registered only where
a CUDA GPU and `ncu` exist (`make_profiler` returns None otherwise)."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

NCU_TIMEOUT_S = 300
KEEP_METRICS = ("Duration", "Memory Throughput", "DRAM Throughput", "Compute (SM) Throughput",
                "L1/TEX Cache Throughput", "L2 Cache Throughput", "Achieved Occupancy", "Theoretical Occupancy",
                "Registers Per Thread", "Dynamic Shared Memory Per Block", "Static Shared Memory Per Block",
                "Waves Per SM", "Block Limit Registers", "Block Limit Shared Mem")

DRIVER = '''
import importlib.util, sys, torch
from avo.tasks import load_task
from avo.harness import inputs
task = load_task({task!r})
d = task.definition
w = next(x for x in task.workloads if x.uuid == {uuid!r})
ns = {{}}
exec(compile(d.reference, "<reference>", "exec"), ns)
args = inputs.make_inputs(d, w, 1234, "cuda", ns.get("make_inputs"), task.root)
outs = inputs.alloc_outputs(d, w, "cuda")
spec = importlib.util.spec_from_file_location("avo_profiled", {kernel!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
for _ in range(2):  # compile and warm up outside the profiled range
    mod.run(*args.values(), *outs.values())
torch.cuda.synchronize()
with torch.cuda.nvtx.range("avo_profile"):
    mod.run(*args.values(), *outs.values())
torch.cuda.synchronize()
'''


def ncu_available() -> bool:
    if shutil.which("ncu") is None:
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def summarize_ncu_csv(text: str, max_kernels: int = 4) -> str:
    """ncu --csv --page details output -> one block per kernel with the metrics that matter."""
    start = text.find('"ID"')
    if start < 0:
        return "ncu produced no report:\n" + text[-1500:]
    rows = list(csv.DictReader(io.StringIO(text[start:])))
    kernels: dict[str, list[dict]] = {}
    for r in rows:
        kernels.setdefault(r.get("ID", "?"), []).append(r)
    out = []
    for kid, rs in list(kernels.items())[:max_kernels]:
        r0 = rs[0]
        out.append(f"kernel {kid}: {r0.get('Kernel Name', '?')[:80]} grid {r0.get('Grid Size', '?')} block {r0.get('Block Size', '?')}")
        seen = set()
        for r in rs:
            name = r.get("Metric Name", "")
            if name in KEEP_METRICS and name not in seen:
                seen.add(name)
                out.append(f"  {name}: {r.get('Metric Value', '')} {r.get('Metric Unit', '')}".rstrip())
    if len(kernels) > max_kernels:
        out.append(f"({len(kernels) - max_kernels} more kernels not shown)")
    return "\n".join(out)


def make_profiler(task_name: str) -> Optional[Callable[[str, Optional[str]], str]]:
    if not ncu_available():
        return None
    from avo.harness import sol
    from avo.harness.workerproc import scrubbed_env
    from avo.tasks import REPO_ROOT, load_task
    task = load_task(task_name)
    wls = task.select("gpu") or list(task.workloads)

    def profiler(source: str, workload: Optional[str]) -> str:
        from avo.operators.tools import ToolError
        if workload:
            w = next((x for x in task.workloads if x.uuid == workload), None)
            if w is None:
                raise ToolError(f"unknown workload {workload!r}; known: {', '.join(x.uuid for x in task.workloads)}")
        else:
            w = max(wls, key=lambda x: sol.io_bytes(task.definition, x))
        tmp = Path(tempfile.mkdtemp(prefix="avo-profile-"))
        try:
            kernel = tmp / "kernel.py"
            kernel.write_text(source)
            driver = tmp / "driver.py"
            driver.write_text(DRIVER.format(task=str(task.root or task.name), uuid=w.uuid, kernel=str(kernel)))
            # --clock-control none: ncu otherwise locks the clocks, and avo never changes clocks on a shared GPU.
            cmd = ["ncu", "--csv", "--page", "details", "--clock-control", "none", "--nvtx", "--nvtx-include", "avo_profile/",
                   "--section", "SpeedOfLight", "--section", "Occupancy", "--section", "LaunchStats",
                   "--launch-count", "8", sys.executable, str(driver)]
            env = scrubbed_env("cuda")
            env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=NCU_TIMEOUT_S, cwd=tmp, env=env)
            except subprocess.TimeoutExpired:
                raise ToolError(f"ncu timed out after {NCU_TIMEOUT_S}s") from None
            if r.returncode != 0 and '"ID"' not in r.stdout:
                raise ToolError(f"ncu failed (exit {r.returncode}): {(r.stderr or r.stdout)[-1200:]}")
            return f"workload {w.uuid}\n" + summarize_ncu_csv(r.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return profiler
