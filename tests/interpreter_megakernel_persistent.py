"""The persistent decode megakernel called in-process in the Triton interpreter: run by
tests/test_megakernel_persistent.py::test_task_graph_runs_in_the_interpreter in a pytest of its own
started with TRITON_INTERPRET=1 (not collected by the suite: the name has no test_ prefix).

Every order policy and schedule matches the reference; a table whose order breaks a dependency, or
whose count is never reached, raises an error naming the task; without the waits the same wrong
order is a wrong answer (the counters are what catch it)."""
from __future__ import annotations

import os

import pytest
import torch

from test_megakernel_persistent import G3, POINTS, _close, _inputs, _swap_first, _table, pk, task  # noqa: F401 (fixtures)

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 set before triton loads"


@pytest.mark.parametrize("i", range(len(POINTS)))
def test_persistent_order_policy_and_schedule_match_reference(task, pk, i):
    pk["CONFIG"].update(POINTS[i])
    args, outs, want = _inputs(task, G3, 37, seed=i)
    assert pk["check_topological"](_table(pk, G3, 37)[0]) is None
    pk["run"](*args, 37, *outs)
    assert _close(outs, want)


@pytest.mark.parametrize("queue", [True, False])
@pytest.mark.parametrize("consumer,producer", [("O", "COMBINE"), ("COMBINE", "ATTN"), ("DOWN", "MLP")])
def test_wrong_order_raises_naming_the_task(task, pk, queue, consumer, producer):
    pk["CONFIG"].update(QUEUE=queue, ATTN_SPLIT_MIN=16)
    args, outs, _ = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3, 37)
    bad, at = _swap_first(table, pk, consumer, producer)
    assert pk["check_topological"](bad) == at  # the host-side check finds it too
    with pytest.raises(RuntimeError, match=rf"order violation at task {at} \({consumer}:"):
        pk["launch"](bad, n_ctrl, splits, *args, *outs)


def test_count_never_reached_raises(task, pk):
    args, outs, _ = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3, 37)
    last = len(table) - 1  # a DOWN task that waits for one MLP tile more than exist
    table[last, 7] += 1
    with pytest.raises(RuntimeError, match=rf"order violation at task {last} \(DOWN:"):
        pk["launch"](table, n_ctrl, splits, *args, *outs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the O projection of uninitialised scratch
def test_wrong_order_without_waits_is_a_wrong_answer(task, pk):
    # The counters are what turn the wrong order into an error: with every wait count 0 the same
    # table runs to the end and the O projection reads attention output that is not there yet.
    args, outs, want = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3, 37)
    pk["launch"](table, n_ctrl, splits, *args, *outs)
    assert _close(outs, want)  # the right order (the control)
    bad, _ = _swap_first(table, pk, "O", "COMBINE")
    bad[:, 7] = 0
    outs = [torch.full_like(o, float("nan")) for o in outs]
    pk["launch"](bad, n_ctrl, splits, *args, *outs)
    assert not _close(outs, want)
