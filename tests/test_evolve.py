"""`avo evolve` end to end in the Triton interpreter: seeds committed, the heuristic improves the
grammar kernel through the gate, every attempt is logged, the report is written, a run resumes
and extends, a broken candidate is logged and the run goes on, a broken seed stops the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avo.config import load_config
from avo.ui.run import evolve_local
from avo.lineage import Lineage
from avo.operators.base import GiveUp, LineageView, Proposal, StepContext
from avo.operators.heuristic import HeuristicOperator
from avo.tasks import REPO_ROOT

pytestmark = pytest.mark.timeout(600)
SMALL_WL = "cpu_b3_v1000_float32"


def write_cfg(tmp_path: Path, name: str = "e2e", extra: str = "", islands: int = 2, attempts: int = 6) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"""run: {name}
lineage_dir: {tmp_path / name}
tasks: [grammar_bitmask]
workloads: {{grammar_bitmask: [{SMALL_WL}]}}
islands_per_task: {islands}
budget: {{attempts: {attempts}, wall_minutes: 8}}
gate: {{min_gain: 0.05, rounds: 2}}
supervisor: {{stagnation_k: 2}}
device: interpret
{extra}""")
    return p


def git(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)


def test_evolve_end_to_end_resume_and_mismatch(tmp_path, capsys):
    cfg_path = write_cfg(tmp_path)
    assert evolve_local(load_config(cfg_path), live=False) == 0
    out = capsys.readouterr().out
    assert "device: interpret" in out and "not GPU performance" in out and "report -> " in out
    lin = Lineage.open(tmp_path / "e2e")
    attempts = lin.attempts()
    assert [a.id for a in attempts] == [f"a{i:05d}" for i in range(1, 7)]
    assert {(a.task, a.island) for a in attempts} == {("grammar_bitmask", 0), ("grammar_bitmask", 1)}
    seeds = [v for v in lin.versions() if v.meta.kind == "seed"]
    assert len(seeds) == 2 and all(v.meta.scores.speedup_vs_seed == 1.0 for v in seeds)
    accepted = [a for a in attempts if a.accepted]
    assert accepted, "the recipe's wide blocks beat the 256-token seed in the interpreter"
    for a in accepted:
        v = lin.version(a.commit)
        assert v.meta.attempt == a.id and v.meta.gate.gain > max(v.meta.gate.min_gain, v.meta.gate.noise)
        assert v.meta.gate.best_ms and v.meta.gate.cand_ms and a.gate.gain == v.meta.gate.gain
        assert [t.workload.uuid for t in v.traces] == [SMALL_WL] and v.traces[0].passed
    assert lin.best("grammar_bitmask").speedup > 1.05
    for a in attempts:
        assert a.status in ("PASSED", "REJECTED") and a.source_hash and a.started and a.finished
        # where the evaluation's time went, and the rest (gate A/B, operator) is what remains of eval_s
        assert {"import", "check", "time", "reference"} <= set(a.eval_phases), a.eval_phases
        assert 0 < sum(v for k, v in a.eval_phases.items() if k not in ("reference", "compare")) <= a.eval_s
        assert (a.status == "PASSED") == a.accepted
    report = tmp_path / "e2e" / "report"
    for f in ("report.html", "progress.png", "workloads.png", "tree.png", "outcomes.png"):
        assert (report / f).stat().st_size > 1000, f
    html = (report / "report.html").read_text()
    assert "Triton interpreter" in html
    assert "attempts per hour of run time; evaluator " in html and "(candidate evaluation: import " in html
    assert git(tmp_path / "e2e", "fsck", "--strict").returncode == 0
    lin.close()

    # resume with a larger budget: numbering continues, nothing is re-evaluated from scratch
    assert evolve_local(load_config(cfg_path, attempts=8), live=False) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "evaluating the seed" not in out
    ids = [a.id for a in Lineage.open(tmp_path / "e2e").attempts()]
    assert ids == [f"a{i:05d}" for i in range(1, 9)]

    # the same run with another island layout is refused
    changed = write_cfg(tmp_path, islands=1)
    assert evolve_local(load_config(changed), live=False) == 2
    assert "different setup" in capsys.readouterr().err


class BrokenOnce:
    """A real operator that hands the orchestrator one syntax error, then defers to the heuristic."""

    def __init__(self):
        self.name = "heuristic"
        self.inner = HeuristicOperator()
        self.calls = 0

    def propose(self, view: LineageView, ctx: StepContext):
        self.calls += 1
        if self.calls == 1:
            return Proposal(source=view.best.source.replace("def run(", "def run(:", 1), parent=view.best.commit,
                            operator=self.name, note="broken on purpose")
        return self.inner.propose(view, ctx)


def test_broken_candidate_is_logged_and_the_run_continues(tmp_path, capsys):
    cfg = load_config(write_cfg(tmp_path, name="broken", islands=1, attempts=3))
    op = BrokenOnce()
    assert evolve_local(cfg, live=False, operators={"heuristic": op}) == 0
    attempts = Lineage.open(tmp_path / "broken").attempts()
    assert [a.status for a in attempts][0] == "COMPILE_ERROR"
    assert "SyntaxError" in attempts[0].error and not attempts[0].accepted and attempts[0].note == "broken on purpose"
    assert len(attempts) == 3 and all(a.status in ("PASSED", "REJECTED") for a in attempts[1:])
    assert op.calls == 3
    assert "COMPILE_ERROR" in capsys.readouterr().out


def test_failing_seed_stops_with_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad_seed.py"
    src = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
    bad.write_text(src.replace("    if n == 0:\n        return\n", "    return\n"))  # masks nothing: wrong
    cfg = load_config(write_cfg(tmp_path, name="badseed", islands=1, attempts=2,
                                extra=f"seed_kernels: {{grammar_bitmask: {bad}}}\n"))
    assert evolve_local(cfg, live=False) == 1
    err = capsys.readouterr().err
    assert "seed kernel" in err and "INCORRECT_NUMERICAL" in err and "Traceback" not in err
    lin = Lineage.open(tmp_path / "badseed")
    assert lin.versions() == [] and lin.attempts() == []
    # with the seed fixed, the same run name starts over (nothing was recorded under the bad seed)
    fixed = load_config(write_cfg(tmp_path, name="badseed", islands=1, attempts=1))
    assert evolve_local(fixed, live=False) == 0
    lin = Lineage.open(tmp_path / "badseed")
    assert len(lin.attempts()) == 1 and lin.identity()["seeds"] != {}


def test_interventions_are_logged_when_islands_stagnate(tmp_path):
    # an operator that only proposes the same (already tried) kernel: every attempt is a DUPLICATE,
    # so the supervisor must step in after stagnation_k attempts
    class Stuck:
        name = "heuristic"

        def propose(self, view, ctx):
            return Proposal(source=view.best.source, parent=view.best.commit, operator=self.name, note="same again")

    cfg = load_config(write_cfg(tmp_path, name="stuck", islands=1, attempts=5))
    assert evolve_local(cfg, live=False, operators={"heuristic": Stuck()}) == 0
    lin = Lineage.open(tmp_path / "stuck")
    assert [a.status for a in lin.attempts()] == ["DUPLICATE"] * 5
    rows = [json.loads(x) for x in (tmp_path / "stuck" / "interventions.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["widen", "widen"] and rows[0]["widen"] == 1 and rows[1]["widen"] == 2


def test_llm_budget_and_exhausted_operators_end_the_run(tmp_path, capsys):
    class Spender:
        """Gives up every step, reporting LLM cost as an agentic operator would."""
        name = "heuristic"

        def propose(self, view, ctx):
            return GiveUp(operator=self.name, reason="nothing better to try", cost_usd=0.4, tokens=1000)

    cfg_path = write_cfg(tmp_path, name="spend", islands=1, attempts=50)
    cfg = load_config(cfg_path)
    cfg.budget.llm_usd = 1.0
    assert evolve_local(cfg, live=False, operators={"heuristic": Spender()}) == 0
    assert "budget reached: $1.20 of $1 LLM spend" in capsys.readouterr().out
    attempts = Lineage.open(tmp_path / "spend").attempts()
    assert [(a.status, a.cost_usd) for a in attempts] == [("GAVE_UP", 0.4)] * 3
    # resumed with more money: the island's operator has already given up 3 times in a row
    cfg.budget.llm_usd = 5.0
    assert evolve_local(cfg, live=False, operators={"heuristic": Spender()}) == 0
    assert "gave up or failed 3 times in a row" in capsys.readouterr().out
    assert len(Lineage.open(tmp_path / "spend").attempts()) == 3


def test_a_problem_with_only_a_reference_starts_from_a_seed_made_of_it(tmp_path):
    """A foreign problem directory with a definition and workloads but no solution, with Inductor's
    seed turned off: the seed is the reference in destination-passing form, evaluated like any
    kernel (PASSED), and the run says so (tests/test_inductor_seed.py covers the default)."""
    import shutil
    problem = tmp_path / "rmsnorm_ref_only"
    problem.mkdir()
    fib = Path(__file__).parent / "data" / "fib_problem"
    for f in ("definition.json", "workload.jsonl"):
        shutil.copy(fib / f, problem / f)
    cfg = tmp_path / "ref.yaml"
    cfg.write_text(f"run: ref-only\nlineage_dir: {tmp_path / 'lin'}\ntasks: [{problem}]\n"
                   f"budget: {{attempts: 1}}\ndevice: interpret\nreference_seed: plain\n")
    r = subprocess.run([sys.executable, "-m", "avo.cli", "evolve", "-c", str(cfg), "--no-live"], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "budget was already spent" not in r.stdout
    assert "the task's reference in plain PyTorch (the problem has no solution; Inductor's seed: off in the config" in " ".join(r.stdout.split())
    with Lineage.open(tmp_path / "lin") as lin:
        seed = lin.best("rmsnorm_h256")
        attempts = lin.attempts()
    assert seed.meta.kind == "seed" and seed.meta.note == "seed made from the reference"
    assert "def reference_run(hidden_states, weight):" in seed.source
    assert "    result = reference_run(hidden_states, weight)\n    output.copy_(result['output'] if isinstance(result, dict) else result)" in seed.source
    assert all(t.passed for t in seed.traces) and len(seed.traces) == 2  # the two cpu-sized workloads
    # plain PyTorch has no knobs: the offline operator says so instead of guessing
    assert [a.status for a in attempts] == ["GAVE_UP"] and "no Triton launch" in attempts[0].note
