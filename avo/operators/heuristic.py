"""The heuristic operator: offline, no key. It moves the kernel's declared knobs (`TUNABLES`)
from the island best: neighbouring values first, wider jumps and multi-knob moves as the
supervisor raises `view.widen` (or when the neighbourhood is used up), knowledge-base recipes
and supervisor directions ahead of plain moves. It learns from the island's recent attempts: a
knob direction that was rejected costs more next time, one that was accepted costs less, and a
knob value that broke the kernel is avoided. Deterministic for a given step seed and view;
never proposes a source whose hash was already tried on the task."""
from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any, Optional

from avo.config import HeuristicSpec
from avo.operators.base import GiveUp, LineageView, Proposal, StepContext
from avo.operators.knobs import KnobError, Knobs, describe_move, parse_knobs, rewrite_config
from avo.operators.recipes import Recipe, load_recipes
from avo.tasks import REPO_ROOT, source_hash

MOVE_RE = re.compile(r"(\w+) ([^\s,]+)->([^\s,]+)")
DIRECTION_RE = re.compile(r"\b([A-Za-z_]\w*)\s*=\s*([^\s,;)]+)")
FULL_SPACE_CAP = 20000  # enumerate the whole space below this many configs
BROKEN = ("COMPILE_ERROR", "RUNTIME_ERROR", "TIMEOUT", "INCORRECT_NUMERICAL", "INCORRECT_SHAPE",
          "INCORRECT_DTYPE", "REWARD_HACK")


class HeuristicOperator:
    def __init__(self, spec: Optional[HeuristicSpec] = None, knowledge_dir: Optional[Path] = None):
        self.spec = spec or HeuristicSpec()
        self.name = self.spec.name
        self.recipes: list[Recipe] = []
        if self.spec.recipes:
            self.recipes = load_recipes(Path(knowledge_dir or REPO_ROOT / "knowledge_base") / "recipes")

    # ---- learning from the island's attempts ----
    @staticmethod
    def _history(view: LineageView, knobs: Knobs) -> tuple[dict, dict, set]:
        """(knob, direction) -> failures / successes, and (knob, value index) that broke the kernel."""
        fails: dict[tuple[str, int], float] = {}
        wins: dict[tuple[str, int], float] = {}
        broken: set[tuple[str, int]] = set()
        for a in view.recent:
            for k, old, new in MOVE_RE.findall(a.note):
                if k not in knobs.tunables:
                    continue
                reprs = [repr(v) for v in knobs.tunables[k]]
                if old not in reprs or new not in reprs:
                    continue
                i, j = reprs.index(old), reprs.index(new)
                d = (k, (j > i) - (j < i))
                if a.accepted:
                    wins[d] = wins.get(d, 0) + 1
                elif a.status in BROKEN:
                    broken.add((k, j))
                else:
                    fails[d] = fails.get(d, 0) + 1
        return fails, wins, broken

    # ---- candidate configs ----
    @staticmethod
    def _neighbourhood(knobs: Knobs, cur: dict[str, int], max_dist: float, max_knobs: int) -> list[dict[str, int]]:
        keys = knobs.mutable
        out: list[dict[str, int]] = []

        def rec(i: int, dist: int, changed: int, acc: dict[str, int]) -> None:
            if i == len(keys):
                if dist > 0:
                    out.append(dict(acc))
                return
            k = keys[i]
            for j in range(len(knobs.tunables[k])):
                d = abs(j - cur[k])
                if dist + d > max_dist or (d > 0 and changed + 1 > max_knobs):
                    continue
                acc[k] = j
                rec(i + 1, dist + d, changed + (d > 0), acc)
            acc.pop(k, None)

        rec(0, 0, 0, {})
        return out

    def _level_bounds(self, knobs: Knobs, level: int) -> tuple[float, int]:
        space = math.prod(len(knobs.tunables[k]) for k in knobs.mutable)
        if level >= 3 and space <= FULL_SPACE_CAP:
            return math.inf, len(knobs.mutable)  # random jumps anywhere: the whole space, nearest first
        return 1 + level, 1 + level

    def propose(self, view: LineageView, ctx: StepContext) -> Proposal | GiveUp:
        src = view.best.source
        try:
            knobs = parse_knobs(src)
        except KnobError as e:
            return GiveUp(operator=self.name, reason=str(e))
        if not knobs.mutable:
            return GiveUp(operator=self.name, reason="no knob in CONFIG has more than one allowed value in TUNABLES")
        rng = random.Random(f"{ctx.seed}:{view.task}:{view.island}")
        fails, wins, broken = self._history(view, knobs)
        cur = {k: knobs.index(k, knobs.config[k]) for k in knobs.mutable}

        def cost(idx: dict[str, int], level: int) -> float:
            """Prefer moves of total size 1 + level (level = widen: bigger jumps as it grows),
            few knobs at once (less so as the level grows), directions that won before, none
            that lost or broke."""
            c, dist = 0.0, 0
            for k, j in idx.items():
                d = j - cur[k]
                if d:
                    dist += abs(d)
                    dirn = (k, (d > 0) - (d < 0))
                    c += 0.5 / (1 + level) + 1.0 * fails.get(dirn, 0) - 1.5 * wins.get(dirn, 0)
                    c += 10.0 if (k, j) in broken else 0.0
            return c + abs(dist - (1 + level)) + rng.random() * 0.3  # jitter: islands diverge

        tried = set(view.seen_hashes) | {source_hash(src)}
        # 1) supervisor directions ("try BLOCK_SIZE=4096") and recipes, before plain moves
        for label, target in self._guided(view, knobs):
            new_src = rewrite_config(src, knobs, target)
            if source_hash(new_src) not in tried:
                return self._proposal(view, knobs, target, new_src, label)
        # 2) knob moves: the neighbourhood at the island's exploration level, widened when used up
        level = max(view.widen, 0)
        while True:
            max_dist, max_knobs = self._level_bounds(knobs, level)
            cands = sorted((cost(c, level), n, c) for n, c in enumerate(self._neighbourhood(knobs, cur, max_dist, max_knobs)))
            for _, _, idx in cands:
                target = dict(knobs.config)
                target.update({k: knobs.tunables[k][j] for k, j in idx.items()})
                new_src = rewrite_config(src, knobs, target)
                if source_hash(new_src) not in tried:
                    return self._proposal(view, knobs, target, new_src, "")
            if max_dist == math.inf or level > 12:
                return GiveUp(operator=self.name, reason="every knob setting reachable from the island best was tried")
            level += 1

    def _guided(self, view: LineageView, knobs: Knobs) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for text in view.directions:
            target = dict(knobs.config)
            for k, raw in DIRECTION_RE.findall(text):
                if k in knobs.tunables and k in target:
                    match = [v for v in knobs.tunables[k] if repr(v) == raw or str(v) == raw]
                    if match:
                        target[k] = match[0]
            if target != knobs.config:
                out.append(("direction", target))
        for r in self.recipes:
            if r.fits_task(view.task) and r.matches(knobs.config):
                target = r.target(knobs)
                if target is not None and target != knobs.config:
                    out.append((f"recipe {r.name}", target))
        return out

    def _proposal(self, view: LineageView, knobs: Knobs, target: dict[str, Any], new_src: str, label: str) -> Proposal:
        move = describe_move(knobs.config, target)
        return Proposal(source=new_src, parent=view.best.commit, operator=self.name,
                        note=f"{label}: {move}" if label else move)
