"""apply() call counters without a lock on the call path: each thread increments its own dict
(one entry per call), and `snapshot()` sums every thread's dict. A reset records the totals as a
baseline instead of clearing dicts other threads are writing.

Entry keys: (task, outcome, detail) with outcome "exact" / "range" / "nearest" (detail = artifact)
or "miss" / "fallback" / "error" (detail = reason), and "copy" (detail = which input was copied
into a contiguous buffer before a kernel call: a note on a hit, not a call of its own)."""
from __future__ import annotations

import threading
from typing import Any

HITS = ("exact", "range", "nearest")
OUTCOMES = HITS + ("miss", "fallback", "error", "copy")
_PLURAL = {"miss": "misses", "fallback": "fallbacks", "error": "errors"}


class CallCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # only for registering a new thread and for snapshots
        self._per_thread: list[dict] = []
        self._baseline: dict = {}
        self._local = threading.local()

    def bump(self, task: str, outcome: str, detail: str) -> None:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = {}
            with self._lock:
                self._per_thread.append(d)
        k = (task, outcome, detail)
        d[k] = d.get(k, 0) + 1

    def _totals(self) -> dict:
        tot: dict = {}
        with self._lock:
            dicts = list(self._per_thread)
        for d in dicts:
            for k, v in d.copy().items():  # copy() runs in C: no torn read of a dict being written
                tot[k] = tot.get(k, 0) + v
        return tot

    def reset(self) -> None:
        self._baseline = self._totals()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per task: calls, hits (= exact + range + nearest), misses, fallbacks, errors, reasons,
        artifacts (hits per artifact), copies (layout copies per input, counted on hits)."""
        base = self._baseline
        out: dict[str, dict[str, Any]] = {}
        for (task, outcome, detail), v in sorted(self._totals().items()):
            v -= base.get((task, outcome, detail), 0)
            if v <= 0:
                continue
            s = out.setdefault(task, {"calls": 0, "hits": 0, "exact": 0, "range": 0, "nearest": 0, "misses": 0,
                                      "fallbacks": 0, "errors": 0, "reasons": {}, "artifacts": {}, "copies": {}})
            if outcome == "copy":
                s["copies"][detail] = s["copies"].get(detail, 0) + v
                continue
            s["calls"] += v
            if outcome in HITS:
                s["hits"] += v
                s[outcome] += v
                s["artifacts"][detail] = s["artifacts"].get(detail, 0) + v
            else:
                s[_PLURAL[outcome]] += v
                s["reasons"][detail] = s["reasons"].get(detail, 0) + v
        return out
