"""Every figure a user reads is a measurement of that version: "vs seed" at acceptance comes from
the version's and the seed's own latencies (not the product of gate gains along the chain), and a
run ends by timing its contenders with the seed in one interleaved session, which decides the best
that the summary shows, `avo lineage best` names and `avo export` ships."""
import math

import pytest

from avo.config import load_config
from avo.evolve.attempt import measured_vs_seed
from avo.evolve.final import measurement_from
from avo.harness.runner import ab_statistics
from avo.lineage import Lineage, Scores, Version, VersionMeta
from avo.ui.run import evolve_local

pytestmark = pytest.mark.timeout(600)
SMALL_WL = "cpu_b3_v1000_float32"


def _v(sha: str, kind: str = "version") -> Version:
    return Version(sha=sha, source="", meta=VersionMeta(run="r", task="t", island=0, kind=kind, operator="x",
                                                        source_hash=sha))


def test_vs_seed_is_the_ratio_of_the_two_evaluations_latencies():
    seed = Scores(latency_ms={"a": 4.0, "b": 9.0}, baseline_ms={"a": 1.0, "b": 1.0})
    cand = Scores(latency_ms={"a": 1.0, "b": 3.0, "c": 5.0}, baseline_ms={"a": 30.0, "b": 1.0})
    # geomean(4/1, 9/3) over the shared workloads; the drifting baseline plays no part
    assert measured_vs_seed(cand, seed) == pytest.approx(math.sqrt(4 * 3))
    assert measured_vs_seed(Scores(latency_ms={"c": 1.0}), seed) is None


def test_the_final_measurement_picks_the_fastest_in_its_own_session_and_the_seed_wins_ties():
    seed, fast, slow = _v("s" * 40, "seed"), _v("f" * 40), _v("l" * 40)
    samples = {"w1": [[2.0, 2.1, 1.9, 2.0], [1.0, 1.05, 0.95, 1.0], [4.0, 4.2, 3.8, 4.0]],
               "w2": [[3.0, 3.0, 3.1, 2.9], [1.5, 1.5, 1.55, 1.45], [6.0, 6.0, 6.2, 5.8]]}
    # columns: the seed, then the versions in the order given (slow, fast)
    m = measurement_from("t", seed, [slow, fast], {w: [s[0], s[2], s[1]] for w, s in samples.items()}, 2,
                         "interpret", 3)
    assert m.best == fast.sha and m.of(fast.sha).vs_seed == pytest.approx(2.0, rel=1e-6)
    assert m.of(slow.sha).vs_seed == pytest.approx(0.5, rel=1e-6) and m.of(seed.sha).vs_seed == 1.0
    # the figure is the gate's paired statistic of that session, version against seed
    assert m.of(fast.sha).vs_seed == pytest.approx(1 + ab_statistics({w: [s[0], s[1]] for w, s in samples.items()}).gain)
    tie = measurement_from("t", seed, [slow], {w: [s[0], s[0]] for w, s in samples.items()}, 2, "interpret", 2)
    assert tie.best == seed.sha


def test_a_run_reports_measured_figures_not_the_chained_product(tmp_path, capsys):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"run: m\nlineage_dir: {tmp_path / 'm'}\ntasks: [grammar_bitmask]\n"
                   f"workloads: {{grammar_bitmask: [{SMALL_WL}]}}\nislands_per_task: 2\n"
                   "budget: {attempts: 6, wall_minutes: 8}\ngate: {min_gain: 0.05, rounds: 2}\ndevice: interpret\n")
    assert evolve_local(load_config(cfg), live=False) == 0
    out = " ".join(capsys.readouterr().out.split())
    with Lineage.open(tmp_path / "m") as lin:
        versions = lin.versions("grammar_bitmask")
        seed = next(v for v in versions if v.meta.kind == "seed")
        accepted = [v for v in versions if v.meta.kind == "version"]
        assert accepted, "the recipes beat the 256-token seed in the interpreter"
        for v in accepted:  # recorded vs seed: the two evaluations' latencies, whatever the chain says
            assert v.meta.scores.speedup_vs_seed == pytest.approx(measured_vs_seed(v.meta.scores, seed.meta.scores))
        m = lin.measurement("grammar_bitmask")
        assert m is not None and m.versions_count == len(versions) and m.workloads == [SMALL_WL]
        assert {c.commit for c in m.contenders} >= {seed.sha} and len(m.contenders) >= 2
        best = lin.best("grammar_bitmask")
        assert best.sha == m.best and best.measured is not None and best.speedup == m.of(m.best).vs_seed
        assert best.speedup == max(c.vs_seed for c in m.contenders)
        assert f"{best.speedup:.2f}x" in out and "re-measured against" in out and "one interleaved session" in out
        assert lin.best("grammar_bitmask", recorded=True).meta.kind == "version"
        # a version committed after the measurement makes it stale: the best is the recorded one again
        lin.append_measurement(m.model_copy(update={"versions_count": len(versions) - 1}))
        assert lin.best("grammar_bitmask").measured is None
