"""The supervisor's LLM trajectory review: when an island stagnates, a model reads its recent
attempts (status, gain, note, error) and its best kernel and proposes new directions, which the
supervisor puts into `view.directions` for the next steps. One call, no tools; the exchange is
written to a JSONL transcript like an agentic step's. Wired through `AgenticOperator.review`
(the `TrajectoryReview` hook of avo/operators/base.py, called by avo/evolve/supervision.py)."""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from avo.operators.base import LineageView, Review
from avo.operators.llm import CostMeter, LLMClient, LLMError, Message, Transcript
from avo.operators.prompting import fmt, format_directions, format_recent, render, task_summary

log = logging.getLogger("avo.review")
MAX_DIRECTIONS = 5
SOURCE_CHARS = 8000


def review_prompt(view: LineageView, n: int = 3) -> str:
    b = view.best
    src = b.source if len(b.source) <= SOURCE_CHARS else b.source[:SOURCE_CHARS] + "\n# [... cut]"
    stagnant = 0
    for a in reversed(view.recent):
        if a.accepted:
            break
        stagnant += 1
    return render("review", task=view.task, island=view.island, stagnant=stagnant, task_summary=task_summary(view.task),
                  best_commit=b.commit[:10], best_note=b.note or "(seed)", best_vs_seed=fmt(b.speedup_vs_seed, ".3f", "x"),
                  best_vs_baseline=fmt(b.speedup_vs_baseline, ".3f", "x"),
                  best_sol=fmt(b.sol_fraction and 100 * b.sol_fraction, ".1f", "%"), best_source=src,
                  recent=format_recent(view, n=20), directions=format_directions(view), n=n)


def parse_directions(text: str, limit: int = MAX_DIRECTIONS) -> list[str]:
    """Lines that start with '- ', '* ' or '1. '; else non-empty lines. Whitespace collapsed."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    bullets = [re.sub(r"^([-*]|\d+[.)])\s+", "", l) for l in lines if re.match(r"^([-*]|\d+[.)])\s+", l)]
    picked = bullets or lines
    return [" ".join(d.split())[:600] for d in picked if d][:limit]


def review_trajectory(client: LLMClient, meter: CostMeter, view: LineageView, transcript: Path,
                      n: int = 3, secrets: tuple[str, ...] = ()) -> Review:
    """Ask for directions; an LLM failure or an exhausted budget gives no directions, never an
    exception (the supervisor's deterministic ladder goes on without them)."""
    tr = Transcript(transcript, list(secrets))
    prompt = review_prompt(view, n)
    tr.write("review_start", task=view.task, island=view.island, provider=client.spec.provider,
             model=client.spec.model, prompt=prompt)
    t0 = time.monotonic()
    try:
        meter.check()
        turn = client.chat([Message(role="system", text="You review the trajectory of a kernel-evolution island."),
                            Message(role="user", text=prompt)], [])
    except LLMError as e:
        log.warning("trajectory review of %s island %d failed: %s", view.task, view.island, e)
        tr.write("review_error", error=str(e))
        tr.close()
        return Review(transcript=str(transcript), error=str(e))
    meter.add(turn)
    dirs = parse_directions(turn.text)
    tr.write("review_end", text=turn.text, directions=dirs, usage=turn.usage.model_dump(), cost_usd=turn.cost_usd,
             retries=[r.model_dump() for r in turn.retries], seconds=round(time.monotonic() - t0, 3))
    tr.close()
    log.info("trajectory review of %s island %d: %d directions", view.task, view.island, len(dirs))
    return Review(directions=dirs, cost_usd=turn.cost_usd, tokens=turn.usage.total, transcript=str(transcript))
