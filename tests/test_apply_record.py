"""avo.apply.record (issue 25 part 5), in process: the keys @avo.apply calls see, deduplicated, as
a problem folder `load_task` (so `avo eval` / `avo evolve`) takes; calls that do not fit are counted,
not recorded; a second recording adds to the folder; it records with avo disabled, and through
the custom op inside a compiled graph. (tests/test_apply_transformers.py records a real model and
runs `avo eval` on the result.)"""
from __future__ import annotations

import json

import pytest
import torch
from test_apply import call, clean_runtime, probe, write_probe  # noqa: F401 (clean_runtime: autouse)

import avo
from avo.apply import RecordError
from avo.tasks import load_task




@avo.apply("attention_gqa_decode")
def decode(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True).squeeze(2)


def test_record_keys_dedupe_and_merge(tmp_path):
    write_probe(tmp_path / "a", 1, [8], 1, 64)  # the probe task's definition comes from its artifact
    avo.apply.enable(tmp_path / "a", require_faster=False)
    out = tmp_path / "rec"
    with avo.apply.record(out) as rec:
        for n in (8, 8, 12, 8):
            call(n)
        call(12, scale=3.0)
        probe(torch.ones(2, 3), 2.0)  # rank 2: not the definition's shape
        avo.apply.apply("apply_probe")(lambda a, b: None)(torch.ones(3), 2.0)  # wrong parameter names
    s = rec.summary["apply_probe"]
    assert (s["calls"], s["keys"], s["workloads_added"]) == (5, 3, 3)
    assert set(s["not_recorded"]) == {"arguments do not map onto the definition's inputs",
                                      "shape does not fit the definition (input 'x' has rank 2, the definition says 1)"}
    task = load_task(str(out / "apply_probe"))
    got = sorted((w.axes["n"], w.inputs["scale"].value, w.label) for w in task.workloads)
    assert got == [(8, 2.0, "recorded: 3 calls"), (12, 2.0, "recorded: 1 call"), (12, 3.0, "recorded: 1 call")]
    assert all(w.target == "cpu" and w.dtypes == {"x": "float32", "y": "float32", "tag": "int32"} for w in task.workloads)
    assert json.loads((out / "record.json").read_text())["apply_probe"]["keys"] == 3
    with avo.apply.record(out) as rec:  # again: only new keys are added
        call(8)
        call(16)
    assert rec.summary["apply_probe"]["workloads_added"] == 1 and len(load_task(str(out / "apply_probe")).workloads) == 4
    with pytest.raises(RuntimeError, match="already recording"):
        with avo.apply.record(out):
            avo.apply.record(tmp_path / "other")
    (out / "apply_probe" / "definition.json").write_text(
        (out / "apply_probe" / "definition.json").read_text().replace('"float32"', '"float16"', 1))
    with pytest.raises(RecordError, match="another definition"):
        with avo.apply.record(out):
            call(8)


def test_record_without_enable_and_inside_a_compiled_graph(tmp_path):
    """Not enabled: the definition comes from evaluators/<task>/ (and its baseline.py is copied);
    under torch.compile the op records at run time, each call."""
    q, k = torch.randn(2, 4, 16), torch.randn(2, 2, 9, 16)
    f = torch.compile(lambda q, k: decode(q, k, k) * 2, backend="aot_eager", fullgraph=True)
    with avo.apply.record(tmp_path) as rec:
        decode(q, k, k)
        for _ in range(3):
            f(q, k)
        f(q, torch.randn(2, 2, 10, 16))
    s = rec.summary["attention_gqa_decode"]
    assert (s["calls"], s["keys"]) == (5, 2)
    task = load_task(str(tmp_path / "attention_gqa_decode"))
    assert task.baseline and sorted(w.axes["kv_len"] for w in task.workloads) == [9, 10]
    assert task.workloads[0].dtypes["o"] == "float32"  # o follows q, as the fake op and the reference do
