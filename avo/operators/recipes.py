"""Knowledge-base recipes for the heuristic operator: `knowledge_base/recipes/*.md`, each a
markdown note whose YAML front matter says which kernels it applies to (`task` or `family`),
when (`when`: knob -> value or list of values the current CONFIG must hold) and what to set
(`set`: knob -> value, or "max"/"min" of the knob's allowed values). The body explains why;
agents read the same files. Format: docs/lineage.md#recipes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from avo.tasks import task_family
from avo.operators.knobs import Knobs


class RecipeError(Exception):
    """A recipe file that cannot be used; one line naming the file."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    title: str = ""  # the knowledge base's keys: agents find recipes with kb_search too
    applies_to: list[str] = Field(default_factory=list)
    task: Optional[str] = None
    family: Optional[str] = None  # task name prefix before the first '_' (grammar, attention)
    tags: list[str] = Field(default_factory=list)
    when: dict[str, Union[list[Any], Any]] = Field(default_factory=dict)
    set: dict[str, Any] = Field(min_length=1)
    priority: int = 0  # higher first among applicable recipes
    path: str = ""
    body: str = ""

    @model_validator(mode="after")
    def _scope(self) -> "Recipe":
        if not self.task and not self.family:
            raise ValueError("a recipe needs `task:` or `family:`")
        return self

    def fits_task(self, task: str) -> bool:
        return (self.task is None or self.task == task) and (self.family is None or self.family == task_family(task))

    def matches(self, config: dict[str, Any]) -> bool:
        for k, want in self.when.items():
            if k not in config:
                return False
            allowed = want if isinstance(want, list) else [want]
            if not any(type(config[k]) is type(v) and config[k] == v for v in allowed):
                return False
        return True

    def target(self, knobs: Knobs) -> Optional[dict[str, Any]]:
        """The CONFIG this recipe sets from the current one; None when a value is not allowed."""
        new = dict(knobs.config)
        for k, v in self.set.items():
            allowed = knobs.tunables.get(k)
            if allowed is None or k not in new:
                return None
            if v in ("max", "min"):
                nums = [a for a in allowed if isinstance(a, (int, float)) and not isinstance(a, bool)]
                if not nums:
                    return None
                v = max(nums) if v == "max" else min(nums)
            if not any(type(a) is type(v) and a == v for a in allowed):
                return None
            new[k] = v
        return new


def parse_recipe(path: Path) -> Recipe:
    text = path.read_text()
    if not text.startswith("---\n"):
        raise RecipeError(f"{path}: a recipe starts with YAML front matter between '---' lines")
    front, sep, body = text[4:].partition("\n---")
    if not sep:
        raise RecipeError(f"{path}: front matter is not closed by a '---' line")
    try:
        raw = yaml.safe_load(front) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: malformed front matter: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: front matter must be a mapping")
    try:
        return Recipe.model_validate({**raw, "path": str(path), "body": body.lstrip("-\n").strip()})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        what = f"unknown key {loc!r}" if err["type"] == "extra_forbidden" else f"{loc}: {err['msg']}"
        raise RecipeError(f"{path}: {what}") from None


def load_recipes(folder: Path) -> list[Recipe]:
    """Every recipe in a folder, sorted by priority (high first) then name."""
    if not folder.is_dir():
        return []
    recipes = [parse_recipe(p) for p in sorted(folder.glob("*.md")) if p.name.lower() != "readme.md"]
    return sorted(recipes, key=lambda r: (-r.priority, r.name))
