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
    assert pk["check_topological"](_table(pk, G3)[0]) is None
    pk["run"](*args, 37, *outs)
    assert _close(outs, want)


@pytest.mark.parametrize("queue", [True, False])
@pytest.mark.parametrize("consumer,producer", [("O", "COMBINE"), ("COMBINE", "ATTN"), ("DOWN", "MLP")])
def test_wrong_order_raises_naming_the_task(task, pk, queue, consumer, producer):
    pk["CONFIG"].update(QUEUE=queue, ATTN_SPLIT_MIN=16)
    args, outs, _ = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3)
    bad, at = _swap_first(table, pk, consumer, producer)
    assert pk["check_topological"](bad) == at  # the host-side check finds it too
    with pytest.raises(RuntimeError, match=rf"order violation at task {at} \({consumer}:"):
        pk["launch"](bad, n_ctrl, splits, *args, 37, *outs)


def test_count_never_reached_raises(task, pk):
    args, outs, _ = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3)
    last = len(table) - 1  # a DOWN task that waits for one MLP tile more than exist
    table[last, 7] += 1
    with pytest.raises(RuntimeError, match=rf"order violation at task {last} \(DOWN:"):
        pk["launch"](table, n_ctrl, splits, *args, 37, *outs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the O projection of uninitialised scratch
def test_wrong_order_without_waits_is_a_wrong_answer(task, pk):
    # The counters are what turn the wrong order into an error: with every wait count 0 the same
    # table runs to the end and the O projection reads attention output that is not there yet.
    args, outs, want = _inputs(task, G3, 37)
    table, n_ctrl, splits = _table(pk, G3)
    pk["launch"](table, n_ctrl, splits, *args, 37, *outs)
    assert _close(outs, want)  # the right order (the control)
    bad, _ = _swap_first(table, pk, "O", "COMBINE")
    bad[:, 7] = 0
    outs = [torch.full_like(o, float("nan")) for o in outs]
    pk["launch"](bad, n_ctrl, splits, *args, 37, *outs)
    assert not _close(outs, want)


def test_one_cached_plan_serves_every_kv_length(task, pk):
    """run() builds the plan (task table, counters, scratch) once per batch: the same table then serves
    every KV length, given as an int or as a one-element int32 tensor the kernel reads (the form a
    CUDA graph replays without re-capture), with split bounds the kernel computes."""
    pk["CONFIG"].update(ATTN_SPLIT_MIN=8, ATTN_TASKS_PER_SM=8)  # 6 splits a pair: several non-empty
    for i, kv_len in enumerate((37, 0, 19, 40, 8)):
        args, outs, want = _inputs(task, G3, kv_len, seed=i)
        pk["run"](*args, torch.tensor([kv_len], dtype=torch.int32) if i % 2 else kv_len, *outs)
        assert _close(outs, want), kv_len
    assert len(pk["_PLANS"]) == 1
    (plan,) = pk["_PLANS"].values()
    assert (plan.table[plan.table[:, 0] == pk["ATTN"], 4] == 6).all()
