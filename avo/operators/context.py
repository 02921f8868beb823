"""How big an agentic step's conversation is, and how it is cut to fit the model's context.

Size: the provider's own count. After each turn the conversation's size is what the last call
reported (`LLMTurn.context_tokens`: its prompt, cached or not, plus its visible output); what was
appended since (tool results) is added at that call's own tokens-per-character ratio. Before
the first usage (or from a server that reports none) 3.5 characters count as one token.

Compaction: above `COMPACT_AT` of the context window, whole old turns are removed from a cut
point forward and replaced by one short notice of what they did, until the size is under
`COMPACT_TO` (the gap between the two means a compaction is rare, not one per turn). The cut
starts right after the stable prefix (the system prompt, the step prompt and earlier notices:
`Message.pinned`) and ends before an assistant turn, so each tool call keeps its result; the
newest assistant turn and what follows it are never removed. Nothing before the cut is edited:
the prefix stays byte-identical, so the provider's prompt cache of it (Anthropic's breakpoint
after the last pinned message, OpenAI's automatic prefix cache) still hits after a compaction,
and the conversation after the cut is cached again from the next call on. Editing old messages
in place (the earlier design: stubbing old tool results one by one) changed the prompt at an
old position on every compaction, which invalidated the cache from there on each time.
Only when removing every old turn is not enough are the newest turn's large tool results (not
sent yet, so not cached) cut to a head and a tail."""
from __future__ import annotations

import json
from typing import Any, Optional

from avo.operators.llm import Message

COMPACT_AT = 0.6  # fraction of context_tokens above which old turns are removed
COMPACT_TO = 0.35  # ... down to this fraction
CHARS_PER_TOKEN = 3.5  # estimate for code-heavy text, until the provider has reported usage
NOTICE_LINES = 30  # lines of the compaction notice (the most recent removed calls)
MAX_NOTICES = 3  # notices kept in the prefix; at this many the next compaction merges them into its own
NOTICE = "[context compacted"


def chars(messages: list[Message]) -> int:
    n = 0
    for m in messages:
        if m.opaque:
            n += len(json.dumps(m.opaque))
        else:
            n += len(m.text) + sum(len(json.dumps(c.arguments)) for c in m.tool_calls)
    return n


def estimate_tokens(messages: list[Message]) -> int:
    return int(chars(messages) / CHARS_PER_TOKEN)


class ContextWindow:
    """The conversation's size in tokens, from the provider's usage where it has reported one."""

    def __init__(self, context_tokens: int):
        self.context_tokens = context_tokens
        self.anchor: Optional[tuple[int, int]] = None  # (tokens reported after the last turn, chars then)

    def observe(self, messages: list[Message], context_tokens: int) -> None:
        """After a turn is appended: its reported size (0 = the server reported none)."""
        if context_tokens > 0:
            self.anchor = (context_tokens, max(1, chars(messages)))

    @property
    def tokens_per_char(self) -> float:
        return self.anchor[0] / self.anchor[1] if self.anchor else 1 / CHARS_PER_TOKEN

    def size(self, messages: list[Message]) -> tuple[int, str]:
        """(tokens, "usage" | "estimate")."""
        if self.anchor is None:
            return estimate_tokens(messages), "estimate"
        tok, ch = self.anchor
        return max(0, int(tok + (chars(messages) - ch) * self.tokens_per_char)), "usage"

    def compact(self, messages: list[Message]) -> Optional[dict[str, Any]]:
        size, basis = self.size(messages)
        info = compact(messages, self.context_tokens, size=size, tokens_per_char=self.tokens_per_char)
        if info is not None:
            info["basis"] = basis
        return info


def _prefix_end(messages: list[Message]) -> int:
    """Index just after the stable prefix: the last pinned message, else the leading system and
    user messages (the step prompt)."""
    pinned = [i for i, m in enumerate(messages) if m.pinned]
    if pinned:
        return pinned[-1] + 1
    i = 0
    while i < len(messages) and messages[i].role in ("system", "user"):
        i += 1
    return i


def _brief(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    s = " ".join(s.split())
    return s if len(s) <= 60 else s[:57] + "..."


def notice(removed: list[Message]) -> str:
    """What the removed turns did, one line per tool call (name, arguments in brief, the first
    line of its result), the most recent NOTICE_LINES of them."""
    results = {m.tool_call_id: m for m in removed if m.role == "tool"}
    lines: list[str] = []
    for m in removed:
        if m.pinned and m.text.startswith(NOTICE):  # an earlier notice merged into this one
            lines += [l for l in m.text.rstrip("]").splitlines() if l.startswith("- ")]
        if m.role != "assistant":
            continue
        if not m.tool_calls and m.text.strip():
            lines.append("- said: " + _brief(m.text.strip().splitlines()[0]))
        for c in m.tool_calls:
            args = ", ".join(f"{k}={_brief(v)}" for k, v in c.arguments.items())
            r = results.get(c.id)
            first = next((l.strip() for l in (r.text if r else "").splitlines() if l.strip()), "(no result)")
            lines.append(f"- {c.name}({args}) -> {'error: ' if r is not None and r.is_error else ''}{first[:120]}")
    head = (f"{NOTICE}: {len(removed)} earlier messages were removed to fit the context window. The workspace "
            "keeps every change they made; run read_file or evaluate again to see the current state.")
    if len(lines) > NOTICE_LINES:
        head += f" ({len(lines) - NOTICE_LINES} older calls not listed.)"
        lines = lines[-NOTICE_LINES:]
    return head + (" What they did:\n" + "\n".join(lines) if lines else "") + "]"


def compact(messages: list[Message], context_tokens: int, size: Optional[int] = None,
            tokens_per_char: float = 1 / CHARS_PER_TOKEN) -> Optional[dict[str, Any]]:
    """Remove whole old turns after the stable prefix (module docstring) when `size` (default:
    the character estimate) is above COMPACT_AT * context_tokens. Edits `messages` in place;
    returns what it did (None: nothing to do)."""
    if size is None:
        size = int(chars(messages) * tokens_per_char)
    if size <= COMPACT_AT * context_tokens:
        return None
    target = COMPACT_TO * context_tokens
    start = _prefix_end(messages)
    notices = [i for i, m in enumerate(messages[:start]) if m.pinned and m.text.startswith(NOTICE)]
    if len(notices) >= MAX_NOTICES:  # bounded: merge the earlier notices into the new one
        start = notices[0]
    newest = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    removed: list[Message] = []
    after = size
    if newest > start:
        ends = [i for i in range(start + 1, newest + 1) if messages[i].role == "assistant"]
        for end in ends:  # as few turns as reach the target; all of them if none does
            note = notice(messages[start:end])
            after = int(size - (chars(messages[start:end]) - len(note)) * tokens_per_char)
            if after <= target or end == newest:
                removed = messages[start:end]
                messages[start:end] = [Message(role="user", text=note, pinned=True)]
                break
    cut_results = 0
    if after > COMPACT_AT * context_tokens:  # the newest turn alone is too big: cut its large results
        budget = max(2000, int(target / tokens_per_char) // 4)
        newest = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages))
        for i in range(newest + 1, len(messages)):
            m = messages[i]
            if m.role != "tool":
                continue
            if len(m.text) > budget:
                half = budget // 2
                cut = f"\n[... {len(m.text) - budget} characters cut to fit the context window ...]\n"
                messages[i] = m.model_copy(update={"text": m.text[:half] + cut + m.text[-half:]})
                after -= int((len(m.text) - budget - len(cut)) * tokens_per_char)
                cut_results += 1
    if not removed and not cut_results:
        return None
    return {"removed": len(removed), "cut_results": cut_results, "size_before": size, "size_after": max(0, after)}
