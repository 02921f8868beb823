"""@avo.apply functions as torch.library custom ops (issue 25 part 2), on CPU with the probe task of
test_apply.py (python kernels stamping a tag output with their identity):

* torch.compile (aot_eager here; inductor on CPU costs ~25 s a graph) puts one opaque avo op in
  the graph, no graph break, and the op serves the artifact at run time;
* reload() swaps what a compiled graph runs at its next call, without recompiling; disable()
  sends it to the original function, also without recompiling (a captured CUDA graph keeps the
  kernel it captured: tests marked gpu);
* the fake implementation gives the outputs' shapes and dtypes (symbolic sizes too); opcheck
  passes for an out-of-place and an in-place op;
* every loaded task gets an op over its own reference: torch.ops.avo.<task>."""
from __future__ import annotations

import pytest
import torch
from test_apply import clean_runtime, passed_trace, probe, probe_workload, write_probe  # noqa: F401 (clean_runtime: autouse)

import avo
from avo.apply import ArtifactMeta, write_artifact
from avo.schema import BuildSpec, Definition, Solution, SourceFile, TensorSpec




class Graphs:
    """A torch.compile backend that keeps every graph's call targets, then runs it eagerly."""

    def __init__(self):
        self.graphs: list[list[str]] = []

    def __call__(self, gm, inputs):
        self.graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward


def test_compiled_graph_calls_the_op_and_reload_swaps_its_kernel_without_recompiling(tmp_path):
    write_probe(tmp_path / "a", 1, [8, 9], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    assert str(probe._op) == "avo.apply_probe__probe"
    backend = Graphs()

    @torch.compile(backend=backend, fullgraph=True)
    def f(x):
        y, tag = probe(x * 1.0, 2.0)
        return y + 1, tag

    x = torch.arange(8, dtype=torch.float32)
    y, tag = f(x)
    assert int(tag) == 1 and torch.equal(y, x * 2 + 1)
    assert len(backend.graphs) == 1 and "avo.apply_probe__probe" in backend.graphs[0]
    write_probe(tmp_path / "a", 11, [8, 9], 1, 64)  # a new export of the same task
    avo.apply.reload()
    assert int(f(x)[1]) == 11 and len(backend.graphs) == 1  # the new kernel, same graph
    avo.apply.disable()
    assert int(f(x)[1]) == 0 and len(backend.graphs) == 1  # the original, same graph
    s = avo.apply.stats()["apply_probe"]
    assert s["hits"] == 2 and s["artifacts"] == {"probe1": 1, "probe11": 1}


def test_fake_outputs_follow_the_inputs_and_dynamic_shapes(tmp_path):
    write_probe(tmp_path / "a", 1, [8, 9, 10], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    backend = Graphs()
    f = torch.compile(lambda x: probe(x, 2.0), backend=backend, dynamic=True, fullgraph=True)
    for n in (8, 9, 10):
        y, tag = f(torch.ones(n))
        assert y.shape == (n,) and y.dtype == torch.float32 and tag.dtype == torch.int32 and int(tag) == 1
    assert len(backend.graphs) == 1  # one graph over a symbolic n
    torch.library.opcheck(probe._op, (torch.arange(8, dtype=torch.float32), 2.0))


INPLACE_REFERENCE = """import torch


def run(x, scale):
    x.mul_(scale)
"""


def test_inplace_task_op_mutates_its_input_under_compile(tmp_path):
    d = Definition(name="apply_probe_inplace", op_type="probe", reference=INPLACE_REFERENCE,
                   axes={"n": {"type": "var"}}, inplace=["x"], outputs={},
                   inputs={"x": TensorSpec(shape=["n"], dtype="float32"), "scale": TensorSpec(shape=None, dtype="float32")})
    src = "import torch\n\n\ndef run(x, scale):\n    x.mul_(scale)\n    x.add_(0.5)\n"  # + 0.5: we see it ran
    sol = Solution(name="inplace_1", definition=d.name, author="test",
                   spec=BuildSpec(language="python", target_hardware=["cpu"], entry_point="k.py::run"),
                   sources=[SourceFile(path="k.py", content=src)])
    write_artifact(tmp_path / "i", d, sol, [passed_trace(d.name, sol.name, probe_workload(8), 1.0)],
                   ArtifactMeta(name="inplace1"))
    ns: dict = {}
    exec(INPLACE_REFERENCE, ns)
    scale_ = avo.apply("apply_probe_inplace")(ns["run"])
    avo.apply.enable(tmp_path, require_faster=False)
    assert "Tensor(a!) x" in str(scale_._op.default._schema)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(x):
        scale_(x, 2.0)
        return x * 1

    x = torch.ones(8)
    assert torch.equal(f(x), torch.full((8,), 2.5)) and torch.equal(x, torch.full((8,), 2.5))
    torch.library.opcheck(scale_._op, (torch.ones(8), 2.0))
    assert avo.apply.stats()["apply_probe_inplace"]["hits"] >= 1


def test_every_loaded_task_has_an_op_over_its_reference(tmp_path):
    write_probe(tmp_path / "a", 1, [8], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    y, tag = torch.ops.avo.apply_probe(torch.ones(8), 2.0)  # the artifact
    assert int(tag) == 1 and torch.equal(y, torch.full((8,), 2.0))
    y, tag = torch.ops.avo.apply_probe(torch.ones(5), 2.0)  # a miss: the task's reference
    assert int(tag) == 0 and avo.apply.op("apply_probe").original.__code__.co_filename == "<apply_probe/reference>"
    with pytest.raises(KeyError, match="no such loaded task"):
        avo.apply.op("no_such_task")


@pytest.mark.gpu
def test_cuda_graph_keeps_the_captured_kernel_until_recaptured(tmp_path):
    """What reload() means for a captured CUDA graph: the replay runs the kernel captured; a new
    capture takes the reloaded one. (Python probe kernels: capturable torch ops.)"""
    write_probe(tmp_path / "a", 1, [8], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    x = torch.arange(8, dtype=torch.float32, device="cuda")
    probe(x, 2.0)  # warm up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, tag = probe(x, 2.0)
    write_probe(tmp_path / "a", 11, [8], 1, 64)
    avo.apply.reload()
    g.replay()
    torch.cuda.synchronize()
    assert int(tag) == 1  # the captured kernel
    assert int(probe(x, 2.0)[1]) == 11  # eager calls: the reloaded one
    g2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g2):
        y2, tag2 = probe(x, 2.0)
    g2.replay()
    torch.cuda.synchronize()
    assert int(tag2) == 11  # re-captured: the reloaded kernel


def test_two_functions_of_one_task_get_their_own_ops(tmp_path):
    write_probe(tmp_path / "a", 1, [8], 1, 64)
    avo.apply.enable(tmp_path, require_faster=False)
    twin = avo.apply("apply_probe")(probe.original)  # same task, same function name: another op
    # a suffix _2, _3...: an Applied of an earlier test over the same function may still hold _2
    name = str(twin._op)
    assert name.startswith("avo.apply_probe__probe_") and str(probe._op) == "avo.apply_probe__probe"
    avo.apply.reload()
    assert str(twin._op) == name and str(probe._op) == "avo.apply_probe__probe"
    assert int(getattr(torch.ops.avo, name.split(".", 1)[1])(torch.ones(8), 2.0)[1]) == 1


def test_every_shipped_task_has_an_op_whose_fake_outputs_match_its_workloads():
    """enable() on the shipped winners registers torch.ops.avo.<task> for each; the fake
    implementation gives the shapes and dtypes the evaluator allocates on every CPU workload."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from avo.apply.ops import FakeOutputs
    from avo.harness.inputs import alloc_outputs, make_inputs
    from avo.tasks import REPO_ROOT, load_task
    loaded = avo.apply.enable(REPO_ROOT / "kernels", require_faster=False)
    assert len(loaded) >= 6
    for task in loaded:
        op = getattr(torch.ops.avo, task)
        t = load_task(task)
        fake = FakeOutputs(t.definition)
        ns: dict = {}
        exec(t.definition.reference, ns)
        for w in t.select("cpu"):
            args = tuple(make_inputs(t.definition, w, 0, "cpu", custom=ns.get("make_inputs")).values())
            want = alloc_outputs(t.definition, w, "cpu")
            with FakeTensorMode(allow_non_fake_inputs=True):
                got = op.default(*args) if t.definition.outputs else None
            got = [] if got is None else [got] if isinstance(got, torch.Tensor) else list(got)
            assert [(tuple(g.shape), g.dtype) for g in got] == [(tuple(x.shape), x.dtype) for x in want.values()], \
                (task, w.uuid)
            assert fake.ok
