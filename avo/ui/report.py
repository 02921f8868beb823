"""`avo report`: an HTML page and PNG charts of a run, from its lineage alone: best speedup over
time and over attempts per task and island, per-workload % of SOL (speedup over the baseline on
CPU, where SOL is n/a), the lineage tree (commits per island with their parents), and how
attempts ended per island."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

from avo.lineage import AttemptRecord, Lineage, Version
from avo.lineage.records import attempt_number

STATUS_COLORS = {"PASSED": "#2e7d32", "REJECTED": "#9e9e9e", "COMPILE_ERROR": "#c62828", "RUNTIME_ERROR": "#e53935",
                 "INCORRECT_NUMERICAL": "#ef6c00", "INCORRECT_SHAPE": "#f57c00", "INCORRECT_DTYPE": "#fb8c00",
                 "TIMEOUT": "#6a1b9a", "REWARD_HACK": "#000000", "GAVE_UP": "#bdbdbd", "DUPLICATE": "#e0e0e0",
                 "GATE_ERROR": "#795548", "OPERATOR_ERROR": "#5d4037"}
ISLAND_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _x_attempt(v: Version, attempts: list[AttemptRecord]) -> int:
    """A version's position on the attempts axis: its attempt number, else the attempts before it."""
    if v.meta.attempt:
        return attempt_number(v.meta.attempt)
    if v.meta.kind == "seed":
        return 0
    return sum(1 for a in attempts if a.run_elapsed_s <= v.meta.run_elapsed_s)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _island_color(i: int) -> str:
    return ISLAND_COLORS[i % len(ISLAND_COLORS)]


def plot_progress(lin: Lineage, attempts: list[AttemptRecord], out: Path) -> Path:
    plt = _plt()
    tasks = lin.tasks()
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.4 * len(tasks)), squeeze=False)
    last_t = max([a.run_elapsed_s for a in attempts] + [1.0]) / 60
    last_n = max([attempt_number(a.id) for a in attempts] + [1])
    for row, task in enumerate(tasks):
        for col, (xlabel, end) in enumerate((("run time (minutes)", last_t), ("attempt", last_n))):
            ax = axes[row][col]
            for _, island in lin.branches(task):
                vs = sorted(lin.versions(task, island), key=lambda v: v.meta.run_elapsed_s)
                xs = [(v.meta.run_elapsed_s / 60 if col == 0 else _x_attempt(v, attempts)) for v in vs]
                ys, best = [], 0.0
                for v in vs:
                    best = max(best, v.speedup)
                    ys.append(best)
                xs, ys = xs + [end], ys + [ys[-1]]
                ax.step(xs, ys, where="post", color=_island_color(island), label=f"island {island}", lw=1.8)
                ax.plot(xs[1:-1], ys[1:-1], "o", color=_island_color(island), ms=4)
            ax.axhline(1.0, color="#999", lw=0.8, ls=":")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("best speedup vs seed (x)")
            ax.set_title(f"{task}: best over {'time' if col == 0 else 'attempts'}")
            ax.set_xlim(left=0)
            ax.grid(alpha=0.25)
            ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    path = out / "progress.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_workloads(lin: Lineage, out: Path) -> Path:
    """Seed vs best per workload: % of SOL, or speedup over the baseline where SOL is n/a."""
    plt = _plt()
    tasks = lin.tasks()
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        ax = axes[row][0]
        seed = next(v for v in lin.versions(task) if v.meta.kind == "seed")
        best = lin.best(task)
        use_sol = all(t.evaluation.performance and t.evaluation.performance.sol_fraction for t in best.traces)
        label = "% of SOL" if use_sol else "speedup over the baseline (x)"
        names = [t.workload.uuid for t in best.traces]

        def values(v: Version) -> list[float]:
            got = {t.workload.uuid: t.evaluation.performance for t in v.traces if t.evaluation and t.evaluation.performance}
            return [(100 * got[n].sol_fraction if use_sol else got[n].speedup_factor) if n in got else 0.0 for n in names]

        xs = range(len(names))
        w = 0.38
        for off, v, name, color in ((-w / 2, seed, "seed", "#9e9e9e"), (w / 2, best, f"best {best.sha[:8]}", "#1f77b4")):
            vals = values(v)
            bars = ax.bar([x + off for x in xs], vals, w, label=name, color=color)
            for b, val in zip(bars, vals):
                ax.annotate(f"{val:.1f}" if use_sol else f"{val:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        if not use_sol:  # speedups over the baseline span orders of magnitude in the interpreter
            ax.set_yscale("log")
            ax.axhline(1.0, color="#999", lw=0.8, ls=":")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=12, ha="right", fontsize=8)
        ax.set_ylabel(label)
        mode = best.meta.device_mode
        ax.set_title(f"{task}: per workload, seed vs best ({mode}{', SOL n/a on CPU' if not use_sol else ''})")
        ax.legend(frameon=False)
        ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    path = out / "workloads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tree(lin: Lineage, attempts: list[AttemptRecord], out: Path) -> Path:
    """Commits per island (lanes) along the attempts axis; solid edges follow the island
    branch, dashed edges show where an edit started elsewhere (restart, migration)."""
    plt = _plt()
    tasks = lin.tasks()
    lanes = [(t, i) for t in tasks for _, i in lin.branches(t)]
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.9 * len(lanes)))
    ypos = {lane: len(lanes) - 1 - k for k, lane in enumerate(lanes)}
    where: dict[str, tuple[float, float]] = {}
    for (task, island) in lanes:
        vs = list(reversed(list(lin._walk(task, island))))
        for v in vs:
            where[v.sha] = (_x_attempt(v, attempts), ypos[(task, island)])
    for (task, island) in lanes:
        vs = list(reversed(list(lin._walk(task, island))))
        color = _island_color(island)
        for prev, v in zip(vs, vs[1:]):
            ax.plot([where[prev.sha][0], where[v.sha][0]], [where[prev.sha][1]] * 2, color=color, lw=1.5, zorder=1)
        for k, v in enumerate(vs):
            x, y = where[v.sha]
            src = v.meta.migrated_from or v.meta.parent
            if k > 0 and src in where and src != vs[k - 1].sha:
                ax.annotate("", xy=(x, y), xytext=where[src], zorder=0,
                            arrowprops=dict(arrowstyle="->", color="#555", ls="--", lw=1))
            marker = {"seed": "s", "migration": "D"}.get(v.meta.kind, "o")
            ax.scatter([x], [y], s=70, marker=marker, color=color, edgecolor="black", zorder=2)
            up = k % 2 == 0  # alternate above/below so neighbouring labels do not collide
            ax.annotate(f"{v.speedup:.2f}x", (x, y), xytext=(0, 8 if up else -14), textcoords="offset points",
                        ha="center", fontsize=7)
    ax.set_yticks(list(ypos.values()))
    ax.set_yticklabels([f"{t}\nisland-{i}" for t, i in ypos])
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlabel("attempt (square: seed, circle: accepted edit, diamond: migration; label: speedup vs seed)")
    ax.set_title("lineage tree: commits per island; dashed = edit started from another island's version")
    ax.grid(axis="x", alpha=0.25)
    fig.tight_layout()
    path = out / "tree.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_outcomes(attempts: list[AttemptRecord], out: Path) -> Path:
    plt = _plt()
    labels = sorted({f"{a.task}/island-{a.island}" for a in attempts})
    counts = {lab: Counter() for lab in labels}
    for a in attempts:
        counts[f"{a.task}/island-{a.island}"]["ACCEPTED" if a.accepted else a.status] += 1
    statuses = sorted({s for c in counts.values() for s in c}, key=lambda s: (s != "ACCEPTED", s))
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.55 * max(len(labels), 1)))
    left = [0] * len(labels)
    for s in statuses:
        vals = [counts[lab][s] for lab in labels]
        color = "#2e7d32" if s == "ACCEPTED" else STATUS_COLORS.get(s, "#607d8b")
        ax.barh(labels, vals, left=left, color=color, label=s, edgecolor="white")
        for k, (l0, v) in enumerate(zip(left, vals)):
            if v:
                ax.text(l0 + v / 2, k, str(v), ha="center", va="center", fontsize=7,
                        color="white" if s not in ("DUPLICATE", "GAVE_UP", "REJECTED") else "black")
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("attempts")
    ax.set_title("how attempts ended, per island (REJECTED = correct but not faster than the island best)")
    ax.legend(ncol=min(len(statuses), 6), loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False, fontsize=8)
    fig.tight_layout()
    path = out / "outcomes.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(lineage_path: Path, out: Optional[Path] = None) -> Path:
    """Write report.html and its PNGs (default folder: <lineage>/report); returns the HTML path."""
    from avo.ui.report_html import render_html
    lin = Lineage.open(Path(lineage_path))
    try:
        out = Path(out) if out else lin.path / "report"
        out.mkdir(parents=True, exist_ok=True)
        attempts = lin.attempts()
        images = []
        if lin.tasks():
            images = [plot_progress(lin, attempts, out), plot_workloads(lin, out), plot_tree(lin, attempts, out)]
        if attempts:
            images.append(plot_outcomes(attempts, out))
        path = out / "report.html"
        path.write_text(render_html(lin, attempts, [p.name for p in images]))
        return path
    finally:
        lin.close()

