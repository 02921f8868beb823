"""The Ray cluster a distributed run uses: join it (or start one on this machine), and plan the
actors' resources against what it offers (docs/distributed.md). Every problem is a ClusterError
with a one-line message, before any actor starts."""
from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Optional

from avo.config import RunConfig
from avo.ray.actors import NAMESPACE

EVAL_RESOURCE = "avo_evaluator"  # custom resource: interpreter evaluator slots of a CPU-only cluster


class ClusterError(Exception):
    """The cluster cannot run this config (unreachable, too small); one line for the user."""


@dataclass
class ClusterPlan:
    device: str  # cuda | interpret
    evaluators: int
    eval_options: dict
    operator_options: dict
    nodes: int = 1


def plan_cluster(cfg: RunConfig, n_islands: int, res: dict) -> ClusterPlan:
    """Evaluator count and actor resources for this cluster; refuses a plan that would leave
    actors waiting forever for resources the cluster does not have."""
    gpus, cpus, slots = int(res.get("GPU", 0)), float(res.get("CPU", 0)), int(res.get(EVAL_RESOURCE, 0))
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus else "interpret")
    want = cfg.ray.evaluators
    if device == "cuda":
        if not gpus:
            raise ClusterError("device: cuda but the Ray cluster has no GPU (start nodes with `ray start --num-gpus N`)")
        n = want or gpus
        if n > gpus:
            raise ClusterError(f"ray.evaluators: {n} evaluators need {n} GPUs; the cluster has {gpus}")
        eval_opts, eval_cpus = {"num_gpus": 1, "num_cpus": 1}, 1.0
    elif slots:
        n = want or slots
        if n > slots:
            raise ClusterError(f"ray.evaluators: {n} evaluators need {n} `{EVAL_RESOURCE}` slots; the cluster has {slots}")
        eval_opts, eval_cpus = {"num_cpus": 0, "resources": {EVAL_RESOURCE: 1}}, 0.0
    else:
        n = want or 1
        eval_opts, eval_cpus = {"num_cpus": 1}, 1.0
    need = n_islands * cfg.ray.operator_cpus + n * eval_cpus
    if need > cpus + 1e-9:
        raise ClusterError(f"the cluster has {cpus:g} CPUs; {n_islands} operator actors x {cfg.ray.operator_cpus:g} "
                           f"(ray.operator_cpus) + {n} evaluators x {eval_cpus:g} need {need:g}: add nodes, lower "
                           f"ray.operator_cpus, or give evaluators `{EVAL_RESOURCE}` slots")
    return ClusterPlan(device=device, evaluators=n, eval_options=eval_opts,
                       operator_options={"num_cpus": cfg.ray.operator_cpus})


def connect(cfg: RunConfig, address: Optional[str], n_islands: int) -> bool:
    """Join the cluster at `address`, or start a local one (address None); True when this
    call started Ray (and the caller shuts it down)."""
    import ray
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.ERROR, namespace=NAMESPACE)
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, as `ray` commands read it
    if address is None:
        device = cfg.device if cfg.device != "auto" else None
        resources, cpus = {}, os.cpu_count() or 1
        if device != "cuda":
            gpu = _local_gpus()
            if gpu == 0 or device == "interpret":
                resources[EVAL_RESOURCE] = cfg.ray.evaluators or 1
        need = math.ceil(n_islands * cfg.ray.operator_cpus) + (0 if resources else (cfg.ray.evaluators or 1))
        ray.init(num_cpus=max(cpus, need), resources=resources, include_dashboard=False, **quiet)
        return True
    if address.startswith("ray://"):
        raise ClusterError("ray:// (Ray Client) addresses are not supported: run `avo evolve` on the cluster's "
                           "head node with --address auto (the lineage lives where the driver runs)")
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {e}") from None
    try:
        ray.init(address=address, **quiet)
    except Exception as e:  # ConnectionError, RuntimeError, ...: one line
        msg = " ".join(str(e).split())[:300]
        raise ClusterError(f"cannot join the Ray cluster at {address}: {msg}") from None
    return False


def _local_gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0
