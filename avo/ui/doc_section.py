"""Marked sections of a markdown file that a script owns and rewrites (docs/benchmarks.md).

A marker counts only on a line of its own, so prose that names a section's marker inline is
never taken for it; absent markers append the section at the end.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence


def task_set_markers(name: str, tasks: Optional[Sequence[str]], all_tasks: Sequence[str]) -> tuple[str, str]:
    """The begin/end markers of a bench script's section: `<!-- name -->` for a run over every task,
    `<!-- name T1,T2 -->` for a subset, so a run on a subset owns its own section and leaves the full
    table in place."""
    tag = "" if tasks is None or sorted(tasks) == sorted(all_tasks) else " " + ",".join(sorted(tasks))
    return f"<!-- {name}{tag} -->", f"<!-- /{name}{tag} -->"


def replace_marked_section(text: str, begin: str, end: str, body: str) -> str:
    """text with the lines from `begin` to `end` replaced by begin, body, end."""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    b = re.search(rf"^{re.escape(begin)}$", text, re.M)
    e = re.search(rf"^{re.escape(end)}$", text[b.end():], re.M) if b else None
    if b and e:
        return text[:b.start()] + block + text[b.end() + e.end():]
    return text.rstrip("\n") + "\n\n" + block + "\n"
