"""The commit gate (avo/evolve/gate.py): the per-workload rule, the bootstrap confidence interval
over paired rounds, and the re-measure of a version before it seeds a migration or a restart
(avo/evolve/supervision.py). The decision is pure arithmetic on A/B samples, so its rules are
checked on synthetic samples; then once each through the real evaluator (Triton interpreter)."""
import math
import random
import re

import pytest

from avo.config import ConfigError, GateConfig, load_config
from avo.evolve.attempt import seed_islands
from avo.evolve.gate import bootstrap_ci, decide, measure_gate
from avo.evolve.state import RunState, Supervisor
from avo.evolve.supervision import supervise
from avo.harness.runner import ABResult, Evaluator, ab_statistics
from avo.lineage import GateRecord, Scores, VersionMeta, version_message
from avo.tasks import REPO_ROOT, kernel_solution, load_task, source_hash

pytestmark = pytest.mark.timeout(300)
TASK = "grammar_bitmask"
SHA = "a" * 40
SEED_SRC = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
WIDE_SRC = SEED_SRC.replace("BLOCK_SIZE=256,", "BLOCK_SIZE=1024,", 1)  # fewer programs: faster in the interpreter
# wide blocks, but the kernel runs 4 times on a vocabulary over 2000 (idempotent, so still correct): faster on
# cpu_b3_v1000, slower on cpu_b8_v2080
SLOW_ON_ONE_SRC = WIDE_SRC.replace("    _bitmask_kernel[grid](", "    for _ in range(4 if vocab > 2000 else 1):\n"
                                   "      _bitmask_kernel[grid](", 1)
NO_OP_SRC = SEED_SRC + "\n# a no-op edit: the seed's speed\n"


def paired(ms_a: float, ms_b: float, n: int, jitter: float, seed: int) -> list[list[float]]:
    r = random.Random(seed)
    return [[ms_a * math.exp(r.gauss(0, jitter)) for _ in range(n)], [ms_b * math.exp(r.gauss(0, jitter)) for _ in range(n)]]


# ---- the decision on synthetic samples ----
def test_a_workload_slower_beyond_its_noise_rejects_a_faster_geomean():
    samples = {"w_fast": paired(10.0, 5.0, 20, 0.005, 1), "w_slow": paired(10.0, 11.0, 20, 0.005, 2)}
    ab = ab_statistics(samples)
    assert ab.gain > 0.3 and ab.gain > max(0.01, ab.noise), "the geomean alone would pass"
    assert ab.workload_noise["w_slow"] < 0.01  # quiet: the floor is the limit
    dec = decide(ab, GateConfig(), SHA)
    assert not dec.accepted and dec.status == "REJECTED"
    assert re.search(r"^workload w_slow \+10\.\d% slower than the best \(beyond its limit 1\.0%\) \| gain \+3", dec.reason)
    rec = dec.record
    assert set(rec.regressed) == {"w_slow"} and rec.regressed["w_slow"] == pytest.approx(0.10, abs=0.01)
    assert rec.workload_limit == {"w_fast": 0.01, "w_slow": 0.01} and rec.ci_lo > 0.3 and rec.verdict == dec.reason
    # the limit is configurable: a fixed fraction, or a higher floor under the workload's own noise
    assert decide(ab, GateConfig(max_workload_regression=0.15), SHA).accepted
    assert decide(ab, GateConfig(workload_noise_floor=0.12), SHA).accepted
    assert not decide(ab, GateConfig(max_workload_regression=0.05), SHA).accepted


def test_a_noisy_workload_may_move_within_its_own_noise():
    samples = {"w_fast": paired(10.0, 5.0, 20, 0.005, 3), "w_noisy": paired(10.0, 10.3, 20, 0.15, 4)}
    ab = ab_statistics(samples)
    assert ab.workload_noise["w_noisy"] > 0.05
    dec = decide(ab, GateConfig(), SHA)
    assert not dec.record.regressed or dec.record.regressed["w_noisy"] > dec.record.workload_limit["w_noisy"]
    assert dec.record.workload_limit["w_noisy"] == pytest.approx(ab.workload_noise["w_noisy"])


def test_a_gain_inside_the_noise_is_rejected_by_the_interval():
    # 6 of 10 rounds say +10.5%, 4 say 0: the MAD of the ratios is 0, so the i.i.d. noise estimate is 0
    # and `gain > max(min_gain, noise)` holds; the bootstrap over rounds sees a gain that may be none
    lr = [0.1] * 6 + [0.0] * 4
    random.Random(5).shuffle(lr)
    samples = {"w": [[10.0 * math.exp(x) for x in lr], [10.0] * 10]}
    ab = ab_statistics(samples)
    assert ab.noise == 0.0 and ab.gain > 0.1
    dec = decide(ab, GateConfig(), SHA)
    rec = dec.record
    assert not dec.accepted and rec.ci_lo <= 0.01 < rec.ci_hi and "CI low end" in dec.reason
    assert (rec.ci_method, rec.ci_rounds, rec.ci_level) == ("bootstrap", 10, 0.95)
    # plain noise: lognormal rounds around +3% with a 20% spread
    noisy = {"w": paired(10.3, 10.0, 10, 0.2, 6)}
    dec = decide(ab_statistics(noisy), GateConfig(), SHA)
    assert not dec.accepted and dec.record.ci_lo < 0.01 < dec.record.ci_hi


def test_a_clear_gain_is_accepted_with_its_interval_recorded():
    samples = {"w1": paired(15.0, 10.0, 10, 0.01, 7), "w2": paired(3.0, 2.0, 10, 0.01, 8)}
    ab = ab_statistics(samples)
    dec = decide(ab, GateConfig(min_gain=0.05), SHA)
    rec = dec.record
    assert dec.accepted and dec.status == "PASSED" and not rec.regressed
    assert 0.4 < rec.ci_lo <= rec.gain <= rec.ci_hi < 0.6 and rec.ci_rounds == 10 and rec.against == SHA
    assert dec.reason.startswith(f"gain {rec.gain:+.1%}, 95% CI [{rec.ci_lo:+.1%}, {rec.ci_hi:+.1%}] (bootstrap, 10 rounds)")
    # seeded: the same samples give the same interval; a wider confidence a wider one
    assert bootstrap_ci(samples, 1000, 0.95) == (rec.ci_lo, rec.ci_hi, 10)
    lo99, hi99, _ = bootstrap_ci(samples, 1000, 0.99)
    assert lo99 <= rec.ci_lo and hi99 >= rec.ci_hi
    # the commit message says it
    meta = VersionMeta(run="r", task=TASK, island=0, kind="version", operator="h", note="n", source_hash="x",
                       scores=Scores(speedup_vs_seed=1.5), gate=rec)
    assert f"95% CI of the gain [{rec.ci_lo:+.2%}, {rec.ci_hi:+.2%}] (bootstrap over 10 paired rounds)" in \
        version_message(meta, [])


def test_records_from_before_the_interval_still_load():
    old = {"accepted": True, "gain": 0.25, "noise": 0.02, "threshold": 0.02, "min_gain": 0.01, "rounds": 2,
           "against": SHA, "per_workload": {"w": 1.25}, "best_ms": {"w": 2.0}, "cand_ms": {"w": 1.6}}
    g = GateRecord.model_validate(old)
    assert g.ci_lo is None and g.ci_method == "" and g.regressed == {} and g.verdict == ""
    meta = VersionMeta.model_validate({"run": "r", "task": TASK, "island": 0, "kind": "version", "operator": "h",
                                       "source_hash": "x", "gate": old})
    assert "CI of the gain" not in version_message(meta, []) and "+25.00%" in version_message(meta, [])


def test_gate_config_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run: g\ntasks: [grammar_bitmask]\ngate: {max_workload_regression: 0.05, confidence: 0.9}\n")
    assert load_config(p).gate.max_workload_regression == 0.05
    assert GateConfig().max_workload_regression == "noise" and GateConfig().resamples == 1000
    p.write_text("run: g\ntasks: [grammar_bitmask]\ngate: {max_workload_regression: sometimes}\n")
    with pytest.raises(ConfigError, match="max_workload_regression"):
        load_config(p)


# ---- through the real evaluator (Triton interpreter) ----
@pytest.fixture(scope="module")
def ev():
    from avo.config import EvalConfig
    with Evaluator(EvalConfig(device="interpret")) as e:
        yield e


@pytest.fixture(scope="module")
def task():
    return load_task(TASK)


def sol(src: str, name: str):
    return kernel_solution(TASK, src, name)


def test_the_real_gate_rejects_a_kernel_slower_on_one_workload(ev, task):
    wls = [w for w in task.workloads if w.uuid in ("cpu_b3_v1000_float32", "cpu_b8_v2080_float32")]
    seed = sol(SEED_SRC, "seed")
    dec = measure_gate(ev, task, seed, SHA, sol(SLOW_ON_ONE_SRC, "slow-on-one"), wls, GateConfig(min_gain=0.05))
    rec = dec.record
    assert rec.gain > rec.threshold, "faster on the geomean: the old gate took it"
    assert not dec.accepted and set(rec.regressed) == {"cpu_b8_v2080_float32"}
    assert "workload cpu_b8_v2080_float32 +" in dec.reason and "slower than the best" in dec.reason
    # the same kernel without the extra launches passes, its interval recorded
    dec = measure_gate(ev, task, seed, SHA, sol(WIDE_SRC, "wide"), wls, GateConfig(min_gain=0.05))
    assert dec.accepted, dec.reason
    assert 0.05 < dec.record.ci_lo <= dec.record.gain <= dec.record.ci_hi and dec.record.ci_rounds == 10


def write_cfg(tmp_path):
    p = tmp_path / "remeasure.yaml"
    p.write_text(f"""run: remeasure
lineage_dir: {tmp_path / 'lin'}
tasks: [{TASK}]
workloads: {{{TASK}: [cpu_b3_v1000_float32]}}
islands_per_task: 2
budget: {{attempts: 10}}
gate: {{min_gain: 0.05, rounds: 2}}
supervisor: {{stagnation_k: 2}}
device: interpret
""")
    return p


def commit(state, island, src, speedup, against, note):
    lin = state.lineage
    seed = lin.versions(TASK, island)[0]
    gate = GateRecord(accepted=True, gain=speedup - 1, noise=0.01, threshold=0.05, min_gain=0.05, rounds=2,
                      against=against)
    meta = VersionMeta(run="remeasure", task=TASK, island=island, kind="version", parent=against, operator="heuristic",
                       note=note, source_hash=source_hash(src), scores=Scores(speedup_vs_seed=speedup), gate=gate,
                       device_mode="interpret")
    return lin.commit_version(meta, src, seed.traces_jsonl, version_message(meta, []))


def test_a_false_elite_seeds_neither_a_migration_nor_a_restart(ev, tmp_path):
    """Island 1 holds a real gain (wide blocks, 1.5x recorded) and on top of it a false elite: the
    seed's kernel with a no-op edit whose record claims 3x. A stagnant island 0 must not receive the
    false elite: the re-measure rejects it, the migration takes the next confirmed version; a
    restart skips it too, and the events say so."""
    state = RunState(load_config(write_cfg(tmp_path)), "interpret")
    try:
        state.open_lineage()
        seed_islands(state, ev)
        lin = state.lineage
        seed1 = lin.head_sha(TASK, 1)
        real = commit(state, 1, WIDE_SRC, 1.5, seed1, "BLOCK_SIZE 256->1024")
        false = commit(state, 1, NO_OP_SRC, 3.0, real, "a no-op that the gate's noise let through")
        isl0 = next(i for i in state.islands if i.island == 0)
        st = state.supervisor.state(TASK, 0)

        # migration rung: the task's best by its record is the false elite
        st.since_commit, st.episode = 2, 1
        supervise(state, ev, isl0)
        row = lin.interventions()[-1]
        assert row["kind"] == "migrate" and row["unconfirmed"] == [false] and row["target"] == real
        assert f"{false[:8]} (3.00x recorded) not confirmed" in row["detail"] and "next confirmed: committed" in row["detail"]
        head = lin.head(TASK, 0)
        assert head.meta.kind == "migration" and head.meta.migrated_from == real and head.source == WIDE_SRC
        assert head.meta.gate.accepted and head.meta.gate.ci_lo > 0.05
        assert any("not confirmed" in text for text, _ in state.display.lines)

        # restart rung: the elites by record are the false one, then the real one (the head's source)
        st.since_commit = 2
        supervise(state, ev, isl0)
        row = lin.interventions()[-1]
        assert row["kind"] == "restart" and row["unconfirmed"] == [false] and row["target"] == real, row
        assert f"elite {false[:8]} (3.00x recorded) not confirmed" in row["detail"]
        assert f"explore from elite {real[:8]}" in row["detail"]
        assert state.start_and_head(isl0)[0].sha == real
        assert false in st.used_elites
        # the logs replay to the same state on resume
        again = Supervisor(state.cfg.supervisor)
        again.restore(lin.attempts(), lin.interventions())
        assert again.state(TASK, 0).used_elites == st.used_elites and again.state(TASK, 0).restart_from == real
    finally:
        state.close()


def test_an_ab_taken_while_throttled_is_measured_again_and_the_record_says_so():
    from avo.evolve.gate import unthrottled
    hot = ABResult(per_workload={"w": 1.2}, gain=0.2, noise=0.01, samples={"w": [[1.2] * 8, [1.0] * 8]},
                   throttled={"w": ["hw_thermal"]})
    cool = hot.model_copy(update={"per_workload": {"w": 1.0}, "gain": 0.0, "samples": {"w": [[1.0] * 8, [1.0] * 8]},
                                  "throttled": {}})
    seq = iter([hot, cool])
    ab, discarded = unthrottled(lambda: next(seq), retries=1)
    assert ab is cool and discarded == 1
    seq = iter([hot, hot, cool])
    ab, discarded = unthrottled(lambda: next(seq), retries=1)  # retries spent: decide on the last one
    assert ab.throttled and discarded == 1
    ab, discarded = unthrottled(lambda: cool, retries=3)
    assert ab is cool and discarded == 0
    rec = decide(hot, GateConfig(), "abc").record
    assert rec.throttled == {"w": ["hw_thermal"]} and rec.remeasured == 0
