"""The end of a run: the contenders for each task's best (each island's best, the top recorded
versions) are timed with the seed in one interleaved session, and the lineage records what that
session measured. The best a user reads, exports and ships is the one measured fastest there, and
its "vs seed" is that session's paired ratio, not the product of gate gains along its chain (each
gain carries its own A/B noise, which multiplies down a chain)."""
from __future__ import annotations

import statistics

from avo.harness.runner import ab_statistics
from avo.harness.workerproc import HarnessError
from avo.lineage import Lineage, MeasuredVersion, Measurement, Version
from avo.lineage.records import now_iso
from avo.tasks import Task, kernel_solution

MAX_CONTENDERS = 5  # the seed plus at most four versions, so the session stays a few gate-lengths long


def contenders(lin: Lineage, task: str) -> tuple[Version, list[Version]]:
    """(seed, versions to measure): each island's recorded best, then the top recorded overall."""
    vs = lin.versions(task)
    seed = next(v for v in vs if v.meta.kind == "seed")
    by_recorded = sorted((v for v in vs if v.meta.kind != "seed"),
                         key=lambda v: v.meta.scores.speedup_vs_seed or 0.0, reverse=True)
    picked: list[Version] = []
    for island in sorted({v.meta.island for v in by_recorded}):
        top = next(v for v in by_recorded if v.meta.island == island)
        if top.meta.source_hash not in {p.meta.source_hash for p in picked}:
            picked.append(top)
    for v in by_recorded:
        if len(picked) >= MAX_CONTENDERS - 1:
            break
        if v.meta.source_hash not in {p.meta.source_hash for p in picked} and v.meta.source_hash != seed.meta.source_hash:
            picked.append(v)
    picked.sort(key=lambda v: v.meta.scores.speedup_vs_seed or 0.0, reverse=True)
    return seed, picked[:MAX_CONTENDERS - 1]


def measurement_from(task: str, seed: Version, versions: list[Version], samples: dict[str, list[list[float]]],
                     rounds: int, device_mode: str, versions_count: int) -> Measurement:
    """Each version's speedup over the seed from the calls of one session (samples[w][0] is the
    seed, samples[w][j] the j-th version): the gate's paired statistic, version against seed."""
    measured = []
    for j, v in enumerate(versions, 1):
        pair = {w: [s[0], s[j]] for w, s in samples.items()}
        ab = ab_statistics(pair)
        measured.append(MeasuredVersion(commit=v.sha, vs_seed=1.0 + ab.gain, noise=ab.noise, per_workload=ab.per_workload,
                                        median_ms={w: statistics.median(s[j]) for w, s in samples.items()}))
    seed_ms = {w: statistics.median(s[0]) for w, s in samples.items()}
    measured.insert(0, MeasuredVersion(commit=seed.sha, vs_seed=1.0, noise=0.0,
                                       per_workload={w: 1.0 for w in samples}, median_ms=seed_ms))
    best = max(measured, key=lambda m: m.vs_seed)  # the seed (first) wins ties: nothing proved faster
    return Measurement(task=task, at=now_iso(), device_mode=device_mode, rounds=rounds, workloads=list(samples),
                       versions_count=versions_count, seed=seed.sha, contenders=measured, best=best.commit)


def remeasure(lin: Lineage, ev, task: Task, workloads: list, rounds: int, device_mode: str) -> Measurement | None:
    """Measure the task's contenders with its seed and record it; None when there is nothing to
    compare (the seed alone) or the measurement is already current."""
    seed, versions = contenders(lin, task.name)
    if not versions:
        return None
    count = len(lin.versions(task.name))
    last = lin.measurement(task.name)
    if last is not None and last.versions_count == count:
        return last
    sols = [kernel_solution(task.name, v.source, f"{task.name}-{v.sha[:10]}") for v in [seed, *versions]]
    samples = ev.measure(task, sols, workloads, rounds=rounds)
    if not samples or any(len(s) != len(sols) or not all(s) for s in samples.values()):
        raise HarnessError("the final measurement returned no timings")
    m = measurement_from(task.name, seed, versions, samples, rounds, device_mode, count)
    lin.append_measurement(m)
    return m


def describe(m: Measurement) -> str:
    """One line for the run's summary: how the best was decided and with what noise."""
    best = m.of(m.best)
    noise = max((c.noise for c in m.contenders), default=0.0)
    return (f"{m.task}: best {m.best[:10]} at {best.vs_seed:.2f}x vs seed, re-measured against "
            f"{len(m.contenders) - 1} contender(s) and the seed in one interleaved session "
            f"({m.rounds} rounds, {len(m.workloads)} workloads, noise up to ±{100 * noise:.1f}%)")


def measure_run(state, ev) -> None:
    """The end of a run (either backend): each task's final measurement, said on the display; a
    failure leaves the recorded best in place and says so. `ev`: an Evaluator or RemoteEvaluator."""
    for name, setup in state.tasks.items():
        try:
            state.display.event(f"{name}: re-measuring the best contenders with the seed in one session")
            m = remeasure(state.lineage, ev, setup.task, setup.workloads, state.cfg.gate.rounds, state.device)
            if m is not None:
                state.display.event(describe(m))
        except HarnessError as e:
            state.display.event(f"{name}: the final measurement failed ({' '.join(str(e).split())[:200]}); "
                                "the best shown is the recorded one", "yellow")
