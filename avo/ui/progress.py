"""Progress of `avo evolve`: a rich live panel on a terminal (elapsed, attempts, accepted,
evals/hour, best speedup vs seed and best % of SOL per task, each island's last status), plain
timestamped lines otherwise (CI logs, pipes). Events (attempts, commits, interventions) are
printed as lines in both modes so the scrollback keeps the story. The Display a run is given
(avo/evolve/state.py); the stats it draws are the run's own."""
from __future__ import annotations

from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from avo.evolve.state import RunStats


def fmt_elapsed(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, console: Console, stats: RunStats, live: bool):
        self.console, self.stats = console, stats
        self.use_live = live and console.is_terminal
        self._live: Optional[Live] = None

    def __enter__(self) -> "Progress":
        if self.use_live:
            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def event(self, text: str, style: str = "") -> None:
        line = Text(f"[{fmt_elapsed(self.stats.elapsed_s)}] ", style="dim")
        line.append(text, style=style)
        self.console.print(line, soft_wrap=True, highlight=False)

    def summary_line(self) -> str:
        s = self.stats
        best = ", ".join(f"{t} {x.best_speedup:.2f}x" + (f" ({100 * x.best_sol:.1f}% SOL)" if x.best_sol else "")
                         for t, x in s.tasks.items())
        return (f"{s.attempts} attempts, {s.accepted} accepted, {s.evals_per_hour:.0f} evals/h; "
                f"best vs seed: {best}")

    def _render(self):
        s = self.stats
        head = Text()
        head.append(f"avo evolve {s.run}", style="bold")
        head.append(f"  {fmt_elapsed(s.elapsed_s)}  device {s.device}  budget {s.budget}\n")
        head.append(f"attempts {s.attempts}  accepted {s.accepted}  evals/hour {s.evals_per_hour:.0f}")
        tasks = Table(box=None, pad_edge=False)
        for col in ("task", "best vs seed", "best % SOL", "commit"):
            tasks.add_column(col)
        for name, t in s.tasks.items():
            tasks.add_row(name, f"{t.best_speedup:.2f}x", f"{100 * t.best_sol:.1f}%" if t.best_sol else "n/a",
                          t.best_commit[:8])
        isl = Table(box=None, pad_edge=False)
        for col in ("island", "operator", "attempts", "commits", "best", "widen", "last"):
            isl.add_column(col)
        for i in s.islands.values():
            isl.add_row(i.label, i.operator, str(i.attempts), str(i.commits), f"{i.best:.2f}x", str(i.widen), i.last)
        now = Text(f"now: {s.now}" if s.now else "", style="dim")
        return Group(head, tasks, isl, now)
