"""Build operators from their config specs: an explicit if/elif on `kind`. The agentic and
external operators are imported only when a config uses them (they pull in LLM SDKs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from avo.config import AgenticSpec, ConfigError, ExternalSpec, HeuristicSpec, RunConfig
from avo.operators.base import Operator, TrajectoryReview


def make_operator(spec, knowledge_dir: Optional[Path] = None, device: str = "auto", meter: Any = None) -> Operator:
    """One operator per spec. `meter` (avo.operators.llm.CostMeter) is shared by every agentic
    and external operator of a run so `budget.llm_usd` caps their sum. Per-step context (workdir, evaluate
    tool, lineage) comes in StepContext."""
    if isinstance(spec, HeuristicSpec):
        from avo.operators.heuristic import HeuristicOperator
        return HeuristicOperator(spec, knowledge_dir=knowledge_dir)
    elif isinstance(spec, AgenticSpec):
        from avo.operators.agentic import AgenticOperator
        return AgenticOperator(spec, meter=meter, device=device, knowledge_dir=knowledge_dir)
    elif isinstance(spec, ExternalSpec):
        from avo.operators.external import ExternalOperator
        return ExternalOperator(spec, device=device, knowledge_dir=knowledge_dir, meter=meter)
    raise ConfigError(f"unknown operator kind {getattr(spec, 'kind', spec)!r}")


def make_meter(cfg: RunConfig, spent_usd: float = 0.0) -> Any:
    """The run's LLM cost meter (None when no agentic or external operator is configured); a
    resumed run starts it at what the earlier sessions spent."""
    if not any(isinstance(o, (AgenticSpec, ExternalSpec)) for o in cfg.operators):
        return None
    from avo.operators.llm import CostMeter
    meter = CostMeter(cfg.budget.llm_usd)
    meter.spent_usd = spent_usd
    return meter


def make_operators(cfg: RunConfig, knowledge_dir: Optional[Path] = None, device: str = "auto",
                   meter: Any = None) -> dict[str, Operator]:
    """The operators the config's islands use (and the review operator), by name."""
    used = {isl.operator for isl in cfg.island_specs()} | {cfg.supervisor.review_operator} - {None}
    return {o.name: make_operator(o, knowledge_dir, device, meter) for o in cfg.operators if o.name in used}


def review_hook(cfg: RunConfig, operators: dict[str, Operator]) -> Optional[TrajectoryReview]:
    """The supervisor's trajectory review: the `review` method of the named agentic operator."""
    name = cfg.supervisor.review_operator
    if name is None:
        return None
    review = getattr(operators[name], "review", None)
    if not callable(review):
        raise ConfigError(f"supervisor.review_operator {name!r}: that operator has no trajectory review (review method)")
    return review
