"""Solutions in CUDA C++ (SOL-ExecBench `cuda_cpp` with binding torch; flashinfer-bench `cuda` with
binding tvm-ffi), fixtures written for avo after the upstream formats (NVIDIA/SOL-ExecBench 8d2237d
docs/solution.md + driver/templates/build_ext.py; flashinfer-bench 40e6ca7 compile/builders).

On this CPU machine a CUDA solution cannot run: `avo eval` compile-checks it (nvcc for sm_90, the
host compiler for the binding file) and says so with COMPILED_NOT_RUN, exit 0; a compile error is
COMPILE_ERROR naming the file and line; the check is cached by source hash. The `gpu` tests build
with torch.utils.cpp_extension.load, run and check it on a CUDA GPU (`make test-gpu`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avo.harness import build, guard
from avo.schema import EvaluationStatus, Solution
from avo.tasks import REPO_ROOT, load_solution, load_task

PROBLEM = Path(__file__).parent / "data" / "sol_execbench" / "vector_add_cuda"
GOOD, BROKEN = PROBLEM / "solution_cuda.json", PROBLEM / "solution_cuda_broken.json"
S = EvaluationStatus
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: no CUDA toolchain to compile with")

# flashinfer-bench's form: `language: cuda`, no binding (so tvm-ffi), the entry exported by tvm-ffi.
TVM_FFI_KERNEL = r"""#include <cuda_runtime.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

__global__ void vector_add_kernel(const float* a, const float* b, float* out, int64_t n) {
    int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

void run(tvm::ffi::TensorView a, tvm::ffi::TensorView b, tvm::ffi::TensorView out) {
    TVM_FFI_ICHECK(a.ndim() == 1 && b.ndim() == 1 && out.ndim() == 1) << "1-D tensors expected";
    int64_t n = a.size(0);
    auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(out.device().device_type, out.device().device_id));
    int64_t blocks = (n + 255) / 256;
    if (blocks > 0)
        vector_add_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
            static_cast<const float*>(a.data_ptr()), static_cast<const float*>(b.data_ptr()),
            static_cast<float*>(out.data_ptr()), n);
}

TVM_FFI_DLL_EXPORT_TYPED_FUNC(run, run);
"""

# The torch binding, value-returning (`destination_passing_style: false`): `run` allocates its result.
RETURNING_MAIN = r"""#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

void vector_add_launch(const float* a, const float* b, float* out, int64_t n, cudaStream_t stream);

torch::Tensor run(torch::Tensor a, torch::Tensor b) {
    TORCH_CHECK(a.is_cuda() && b.is_cuda(), "a and b must be CUDA tensors");
    auto out = torch::empty_like(a);
    vector_add_launch(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), a.numel(),
                      c10::cuda::getCurrentCUDAStream().stream());
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("run", &run, "returns a + b (CUDA)");
}
"""


def tvm_ffi_solution() -> Solution:
    return Solution.model_validate({
        "name": "vector_add_tvm_ffi", "definition": "vector_add_f32", "author": "avo-tests",
        "spec": {"language": "cuda", "target_hardware": ["cuda"], "entry_point": "kernel.cu::run"},
        "sources": [{"path": "kernel.cu", "content": TVM_FFI_KERNEL}]})


def returning_solution() -> Solution:
    raw = json.loads(GOOD.read_text())
    raw["name"] = "vector_add_cuda_returning"
    raw["spec"]["destination_passing_style"] = False
    raw["sources"] = [{"path": "kernel.cu", "content": (PROBLEM / "kernel.cu").read_text()},
                      {"path": "main.cpp", "content": RETURNING_MAIN}]
    return Solution.model_validate(raw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("avo_cache")


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "250", **(env or {})}
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], cwd=REPO_ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


# ---- the CPU machine: compile-check, not run ----
@needs_nvcc
def test_a_cuda_solution_compiles_and_is_reported_not_run_then_cached(cache, tmp_path):
    t0 = time.monotonic()
    r = cli("eval", str(PROBLEM), str(GOOD), "--device", "interpret", "--json", str(tmp_path / "t.jsonl"),
            env={"AVO_CACHE": str(cache)})
    first = time.monotonic() - t0
    out = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COMPILED_NOT_RUN: compiled, not run: no CUDA GPU on this machine (torch binding;" in out, out
    assert "nvcc -arch=sm_90 compiled kernel.cu" in out and "parsed main.cpp" in out and "checked in" in out, out
    traces = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(traces) == 2 and {t["evaluation"]["status"] for t in traces} == {"COMPILED_NOT_RUN"}
    assert traces[0]["evaluation"]["performance"] is None and "not run" in traces[0]["evaluation"]["log"]

    t0 = time.monotonic()
    r = cli("eval", str(PROBLEM), str(GOOD), "--device", "interpret", env={"AVO_CACHE": str(cache)})
    again = time.monotonic() - t0
    out = " ".join(r.stdout.split())
    assert r.returncode == 0 and "cached: checked in" in out, out
    build_s = float(out.split("build ")[-1].split()[0])  # "harness seconds: import 3.1 · build 0.0"
    assert build_s < 2.0 and again < first, (build_s, first, again)


@needs_nvcc
def test_a_compile_error_names_the_file_and_line(cache):
    r = cli("eval", str(PROBLEM), str(BROKEN), "--device", "interpret", env={"AVO_CACHE": str(cache)})
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert "COMPILE_ERROR" in out and 'kernel.cu(8): error: identifier "undefined_bias" is undefined' in out, out


@needs_nvcc
def test_the_compile_limit_stops_a_long_build(monkeypatch, tmp_path):
    """main.cpp (torch/extension.h) takes the host compiler well over 2 s: the build is stopped
    (its whole process group) and reported as a timeout naming the limit (TIMEOUT in the worker)."""
    monkeypatch.setenv("AVO_CACHE", str(tmp_path))  # nothing cached: the build must really run
    sol = load_solution(load_task(str(PROBLEM)), GOOD)
    t0 = time.monotonic()
    with pytest.raises(build.BuildError, match="ran past its limit of 2 s") as e:
        build.check(sol, limit_s=2)
    assert e.value.timeout and time.monotonic() - t0 < 10
    assert not list(tmp_path.rglob("checked.json"))  # nothing cached from a stopped build


@needs_nvcc
def test_a_tvm_ffi_solution_is_checked_with_tvm_ffi_headers(monkeypatch, tmp_path):
    pytest.importorskip("tvm_ffi", reason="the tvm-ffi binding needs the tvm_ffi package")
    monkeypatch.setenv("AVO_CACHE", str(tmp_path))
    sol = tvm_ffi_solution()
    assert build.binding(sol) == "tvm-ffi"  # flashinfer-bench's default for C++/CUDA
    note = build.check(sol)
    assert note.startswith("compiled, not run: no CUDA GPU on this machine (tvm-ffi binding; "
                           "nvcc -arch=sm_90 compiled kernel.cu; checked in"), note


def test_tvm_ffi_missing_is_one_compile_error_line(monkeypatch, tmp_path):
    monkeypatch.setenv("AVO_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "tvm_ffi", None)  # `import tvm_ffi` raises ImportError
    with pytest.raises(build.BuildError) as e:
        build.check(tvm_ffi_solution())
    assert e.value.log == ("binding 'tvm-ffi' is not available here: the tvm_ffi package (pip install "
                           "apache-tvm-ffi) is not installed; use binding 'torch' or install it")
    assert not e.value.timeout  # the worker reports it as COMPILE_ERROR


def test_no_nvcc_and_no_gpu_is_said_in_one_line(tmp_path):
    """Not the solution's failure: nothing could be checked, and the one line says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("c++", "g++", "cc", "gcc"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    r = cli("eval", str(PROBLEM), str(GOOD), "--device", "interpret",
            env={"AVO_CACHE": str(tmp_path / "c"), "PATH": str(bin_dir), "CUDA_HOME": "", "CUDA_PATH": ""})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: cannot check this CUDA solution here: no CUDA GPU (interpreter mode) and no nvcc on PATH"], r.stderr


# ---- what avo reads from the solution ----
def test_binding_and_compile_options_follow_upstream_defaults():
    task = load_task(str(PROBLEM))
    sol = load_solution(task, GOOD)
    assert sol.spec.language == "cuda" and sol.spec.languages == ["cuda_cpp"] and build.is_native(sol)
    assert build.compile_options(sol) == ([], ["-O3"], ["-lcuda"])  # fields left out take SOL-ExecBench's defaults
    raw = json.loads(GOOD.read_text())
    del raw["spec"]["binding"], raw["spec"]["compile_options"]
    for s in raw["sources"]:
        s["content"] = "// x"
    plain = Solution.model_validate(raw)
    assert build.binding(plain) == "torch" and build.compile_options(plain) == ([], [], [])  # SOL-ExecBench: torch
    assert build.binding(tvm_ffi_solution()) == "tvm-ffi"
    with pytest.raises(build.BuildError, match="binding 'pybind' is not one avo builds"):
        raw["spec"]["binding"] = "pybind"
        build.check(Solution.model_validate(raw))


def test_first_errors_keeps_the_compiler_lines_and_cuts_the_build_folder(tmp_path):
    log = (f"[1/3] /usr/local/cuda/bin/nvcc -c {tmp_path}/src/kernel.cu -o kernel.cuda.o\nFAILED: kernel.cuda.o\n"
           f"{tmp_path}/src/kernel.cu(8): error: identifier \"x\" is undefined\n"
           f"{tmp_path}/src/main.cpp:3:1: error: expected ';'\nninja: build stopped: subcommand failed.\n"
           "RuntimeError: Error building extension 'avo_x'\n")
    assert build.first_errors(log, tmp_path / "src") == \
        "kernel.cu(8): error: identifier \"x\" is undefined\nmain.cpp:3:1: error: expected ';'"


def test_the_static_guard_reads_cuda_sources_as_cuda_not_python():
    """No Python rule applies to .cu/.cpp (they would all misfire); a forbidden call does, outside comments."""
    task = load_task(str(PROBLEM))
    sol = load_solution(task, GOOD)
    srcs = {s.path: s.content for s in sol.sources}
    assert guard.scan_solution(srcs, ["matmul"]) is None
    odd = {"kernel.cu": "// import os; eval(x); torch.cuda.Stream()\n__global__ void k(float* p) { p[0] = 1; }\n",
           "main.cpp": "#include <torch/extension.h>\nvoid run(torch::Tensor a) { a.data_ptr(); }  /* at::matmul */\n"}
    assert guard.scan_solution(odd, ["matmul"]) is None
    odd["main.cpp"] += "torch::Tensor f(torch::Tensor a, torch::Tensor b) { return at::matmul(a, b); }\n"
    f = guard.scan_solution(odd, ["matmul"])
    assert f is not None and f.check == "library-call" and "main.cpp uses 'at::matmul'" in f.detail


# ---- a CUDA GPU: build, run, check ----
@pytest.mark.gpu
def test_cuda_solutions_build_run_and_pass_on_a_gpu(tmp_path, monkeypatch):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from avo.harness.runner import EvalConfig, Evaluator
    monkeypatch.setenv("AVO_CACHE", str(tmp_path))
    task = load_task(str(PROBLEM))
    good = load_solution(task, GOOD)
    with Evaluator(EvalConfig(device="cuda")) as ev:
        rep = ev.evaluate(task, good)
        assert rep.status == S.PASSED and len(rep.traces) == 2, rep.message
        assert "built kernel.cu, main.cpp in" in rep.message and rep.phase_s.get("build", 0) > 0, rep.message
        assert all(t.evaluation.performance.latency_ms > 0 for t in rep.traces)
        bad = ev.evaluate(task, load_solution(task, BROKEN))
        assert bad.status == S.COMPILE_ERROR and 'kernel.cu(8): error: identifier "undefined_bias"' in bad.message, \
            bad.message
        ret = ev.evaluate(task, returning_solution())  # destination_passing_style: false
        assert ret.status == S.PASSED, ret.message
    with Evaluator(EvalConfig(device="cuda")) as ev:  # a fresh worker: the build comes from the cache
        rep = ev.evaluate(task, good)
        assert rep.status == S.PASSED and "build cached" in rep.message, rep.message
        assert rep.phase_s.get("build", 99) < 5, rep.phase_s


@pytest.mark.gpu
def test_a_tvm_ffi_solution_builds_and_passes_on_a_gpu(tmp_path, monkeypatch):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("tvm_ffi", reason="the tvm-ffi binding needs the tvm_ffi package")
    from avo.harness.runner import EvalConfig, Evaluator
    monkeypatch.setenv("AVO_CACHE", str(tmp_path))
    task = load_task(str(PROBLEM))
    with Evaluator(EvalConfig(device="cuda")) as ev:
        rep = ev.evaluate(task, tvm_ffi_solution())
    assert rep.status == S.PASSED and "[tvm-ffi binding;" in rep.message, rep.message
