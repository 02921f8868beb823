"""`avo export`: a run's lineage (a real git lineage written through avo.lineage's API) becomes
apply() artifacts: the best version per task, plus every version that is clearly faster on some
shape key, each with the keys it won; versions with a non-PASSED trace are never exported.

The seed's traces come from a real interpret-mode evaluation; the later versions reuse them with
latencies rescaled by the test (stated per version below), so which version wins which key is
known in advance: the per-key policy is what is under test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avo.apply import read_artifact
from avo.apply.artifact import ArtifactError, verify_provenance
from avo.apply.export import ExportError, export_run, reexport_diff, ship_best
from avo.harness.runner import EvalConfig, Evaluator
from avo.lineage import Lineage, Scores, VersionMeta
from avo.tasks import source_hash
from avo.schema import EvaluationStatus, Trace
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file

SEED = REPO_ROOT / "kernels" / "grammar" / "bitmask_seed.py"
TASK = "grammar_bitmask"
B3, B5, B8 = "cpu_b3_v1000_float32", "cpu_b5_v4133_float16_n3", "cpu_b8_v2080_float32"


@pytest.fixture(scope="module")
def seed_traces() -> list[Trace]:
    task = load_task(TASK)
    with Evaluator(EvalConfig(device="interpret")) as ev:
        rep = ev.evaluate(task, solution_from_kernel_file(task, SEED), task.select("cpu"))
    assert rep.passed, rep.message
    return rep.traces


def rescaled(traces: list[Trace], factors: dict[str, float], hack: str | None = None) -> str:
    rows = []
    for t in traces:
        t = t.model_copy(deep=True)
        p = t.evaluation.performance
        p.latency_ms *= factors.get(t.workload.uuid, 1.0)
        p.speedup_factor = p.reference_latency_ms / p.latency_ms
        if t.workload.uuid == hack:
            t.evaluation.status, t.evaluation.hack_check = EvaluationStatus.REWARD_HACK, "timed-output"
            t.evaluation.performance = t.evaluation.correctness = None
        rows.append(t.model_dump_json())
    return "".join(r + "\n" for r in rows)


def variant(block: int) -> str:
    src = SEED.read_text()
    return src.replace("CONFIG = dict(BLOCK_SIZE=256,", f"CONFIG = dict(BLOCK_SIZE={block},")


def commit(lin: Lineage, island: int, kind: str, source: str, traces_jsonl: str, speedup: float, attempt: str | None) -> str:
    meta = VersionMeta(run="run1", task=TASK, island=island, kind=kind, attempt=attempt, operator="test",
                       source_hash=source_hash(source), scores=Scores(speedup_vs_seed=speedup),
                       device_mode="interpret", hardware="CPU")
    return lin.commit_version(meta, source, traces_jsonl, f"{kind} {attempt or ''}")


@pytest.fixture(scope="module")
def lineage(seed_traces, tmp_path_factory) -> dict:
    """lineages/run1: island 0 = seed -> v1 (best); island 1 = seed -> v2 (1% faster than v1 on
    b3: within the margin) -> v3 (much faster on b3, but caught reward hacking on b5)."""
    root = tmp_path_factory.mktemp("work")
    path = root / "lineages" / "run1"
    lin, created = Lineage.open_or_create(path, "run1", "run: run1\ntasks: [grammar_bitmask]\n", {"tasks": [TASK]})
    assert created
    seed = SEED.read_text()
    base = rescaled(seed_traces, {})
    shas = {"seed0": commit(lin, 0, "seed", seed, base, 1.0, None)}
    # v1: 2x faster than the seed on b3 and b5, 2x slower on b8
    shas["v1"] = commit(lin, 0, "version", variant(512), rescaled(seed_traces, {B3: .5, B5: .5, B8: 2.0}), 1.4, "a1")
    shas["seed1"] = commit(lin, 1, "seed", seed, base, 1.0, None)
    shas["v2"] = commit(lin, 1, "version", variant(1024), rescaled(seed_traces, {B3: .495, B5: .6, B8: 2.0}), 1.3, "a2")
    shas["v3"] = commit(lin, 1, "version", variant(2048), rescaled(seed_traces, {B3: .1, B8: 2.0}, hack=B5), 1.35, "a3")
    lin.close()
    return {"root": root, "path": path, "shas": shas}


def test_export_best_and_per_key_winners(lineage, tmp_path):
    shas = lineage["shas"]
    paths = export_run(str(lineage["path"]), tmp_path / "out")
    names = sorted(p.name for p in paths)
    # seed0 and seed1 are the same kernel with the same traces; the first committed one is kept
    assert names == sorted([f"best-{shas['v1'][:10]}", f"keys-{shas['seed0'][:10]}"])
    best = read_artifact(tmp_path / "out" / TASK / f"best-{shas['v1'][:10]}")
    keys = read_artifact(tmp_path / "out" / TASK / f"keys-{shas['seed0'][:10]}")
    won = lambda a: sorted(k.workload for k in a.manifest.keys if k.won)  # noqa: E731
    assert won(best) == [B3, B5] and won(keys) == [B8]
    m = best.manifest
    assert (m.run, m.commit, m.island, m.lineage) == ("run1", shas["v1"], "0", str(lineage["path"]))
    assert best.solution.sources[0].content == variant(512) and best.solution.spec.entry_point == "kernel.py::run"
    by_wl = {k.workload: k for k in m.keys}
    seed_b3 = next(t for t in keys.traces if t.workload.uuid == B3).evaluation.performance.latency_ms
    assert by_wl[B3].latency_ms == pytest.approx(0.5 * seed_b3)
    assert by_wl[B3].speedup == pytest.approx(by_wl[B3].reference_latency_ms / by_wl[B3].latency_ms)
    # nothing from v2 (inside the margin) or v3 (REWARD_HACK on b5), and only PASSED traces
    exported = {read_artifact(p).manifest.commit for p in paths}
    assert shas["v2"] not in exported and shas["v3"] not in exported
    for p in paths:
        assert all(json.loads(line)["evaluation"]["status"] == "PASSED"
                   for line in (p / "traces.jsonl").read_text().splitlines())


def test_keys_follow_the_final_measurement_over_recorded_traces(seed_traces, tmp_path):
    """The run's final measurement timed seed and v1 in one session and found v1 faster on every
    key; v1's own recorded traces (another evaluation, other noise) say it is slower on b3. The
    export follows the session that chose the best: v1 keeps b3 and the seed gets nothing."""
    from avo.lineage import MeasuredVersion, Measurement
    path = tmp_path / "lineages" / "m"
    lin, _ = Lineage.open_or_create(path, "m", "run: m\ntasks: [grammar_bitmask]\n", {"tasks": [TASK]})
    seed = commit(lin, 0, "seed", SEED.read_text(), rescaled(seed_traces, {}), 1.0, None)
    v1 = commit(lin, 0, "version", variant(512), rescaled(seed_traces, {B3: 1.2, B5: .5, B8: .5}), 1.3, "a1")
    wl = [B3, B5, B8]
    lin.append_measurement(Measurement(
        task=TASK, at="2026-12-07T00:00:00Z", device_mode="interpret", rounds=2, workloads=wl, versions_count=2,
        seed=seed, best=v1, contenders=[
            MeasuredVersion(commit=seed, vs_seed=1.0, noise=0.0, median_ms={w: 1.0 for w in wl}),
            MeasuredVersion(commit=v1, vs_seed=1.6, noise=0.02, median_ms={w: 0.6 for w in wl})]))
    lin.close()
    paths = export_run(str(path), tmp_path / "out")
    assert [p.name for p in paths] == [f"best-{v1[:10]}"]
    assert all(k.won for k in read_artifact(paths[0]).manifest.keys)
    # without the measurement, v1's recorded b3 (20% slower than the seed's) hands b3 to the seed
    (path / "measurements.jsonl").unlink()
    names = sorted(p.name for p in export_run(str(path), tmp_path / "out2"))
    assert names == sorted([f"best-{v1[:10]}", f"keys-{seed[:10]}"])


def test_export_replaces_the_task_folder_and_filters_by_task(lineage, tmp_path):
    out = tmp_path / "out"
    first = export_run(str(lineage["path"]), out, task=TASK)
    (out / TASK / "stale").mkdir()
    (out / TASK / "stale" / "manifest.json").write_text("{}")  # an artifact of an older export
    second = export_run(str(lineage["path"]), out)
    assert sorted(p.name for p in (out / TASK).iterdir()) == sorted(p.name for p in second) == sorted(p.name for p in first)
    with pytest.raises(ExportError, match="has no task 'nope'"):
        export_run(str(lineage["path"]), out, task="nope")
    with pytest.raises(ExportError, match="no run 'no-such-run'"):
        export_run("no-such-run", out)
    (out / TASK / "notes.txt").mkdir()
    with pytest.raises(ExportError, match="not artifacts: not replacing it"):
        export_run(str(lineage["path"]), out)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "avo.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_export_by_run_name_and_errors(lineage):
    root = lineage["root"]
    r = _cli("export", "run1", "--out", "arts", cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("artifact ->") == 2 and (root / "arts" / TASK).is_dir()
    r = _cli("export", "missing-run", "--out", "arts", cwd=root)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_export_checked_range_and_apply_measure_errors(lineage):
    """--checked-range reaches the best artifact's manifest; a range whose end was never verified,
    a malformed one, or one without --task is one line and exit 2; `avo apply measure` refuses a
    folder that is not there the same way."""
    root = lineage["root"]
    r = _cli("export", "run1", "--out", "ranged", "--task", TASK, "--checked-range", "batch=3:8", cwd=root)
    assert r.returncode == 0, r.stderr
    best = next((root / "ranged" / TASK).glob("best-*"))
    assert json.loads((best / "manifest.json").read_text())["checked_ranges"] == {"batch": [3, 8]}
    keys = [p for p in (root / "ranged" / TASK).glob("keys-*")]
    assert all("checked_ranges" not in json.loads((k / "manifest.json").read_text()) for k in keys)
    for args, words in ((("--task", TASK, "--checked-range", "batch=3:7"), "7 is not a verified key"),
                        (("--task", TASK, "--checked-range", "batch=three"), "AXIS=LO:HI"),
                        (("--checked-range", "batch=3:8"), "needs --task")):
        r = _cli("export", "run1", "--out", "bad", *args, cwd=root)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _cli("apply", "measure", "no-such-folder", "--device", "interpret", cwd=root)
    assert r.returncode == 2 and "no-such-folder: not an artifact folder" in r.stderr, r.stderr


def test_ship_writes_the_best_version_with_its_lineage_commit(lineage, tmp_path):
    """`avo export RUN --task T --ship DIR` (how kernels/*/evolved/ are made): one artifact at DIR,
    carrying the lineage commit it came from; hashing those files as git does gives the commit back."""
    shas, dest = lineage["shas"], tmp_path / "kernels" / "grammar" / "evolved" / "bitmask_cpu"
    ship_best(str(lineage["path"]), TASK, dest)
    art = read_artifact(dest)
    assert art.manifest.commit == shas["v1"] and art.manifest.name == f"best-{shas['v1'][:10]}"
    assert all(k.won for k in art.manifest.keys) and art.solution.sources[0].content == variant(512)
    verify_provenance(art)
    assert reexport_diff(dest) == []
    assert sorted(p.name for p in (dest / "lineage").iterdir()) == ["commit", "meta.json", "traces.jsonl"]
    # every artifact of a plain export carries its commit too
    for p in export_run(str(lineage["path"]), tmp_path / "out"):
        verify_provenance(read_artifact(p))
        assert reexport_diff(p) == []
    with pytest.raises(ExportError, match="is not an artifact"):
        ship_best(str(lineage["path"]), TASK, tmp_path)
    r = _cli("export", "run1", "--ship", "x", cwd=lineage["root"])
    assert r.returncode == 2 and "--ship needs --task" in r.stderr


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_an_artifact_edited_by_hand_is_caught(lineage, tmp_path):
    """The checks tests/test_shipped_artifacts.py runs on every shipped winner: an edited number,
    kernel or lineage record does not pass."""
    src = ship_best(str(lineage["path"]), TASK, tmp_path / "a")
    # a manifest number changed (read_artifact has no way to see it; the re-export does)
    a = _copy(src, tmp_path / "edited-number")
    m = json.loads((a / "manifest.json").read_text())
    m["keys"][0]["latency_ms"] /= 2
    (a / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    read_artifact(a)
    assert reexport_diff(a) == ["manifest.json: keys"]
    # the kernel changed everywhere read_artifact looks (sources, solution.json, manifest sha256)
    b = _copy(src, tmp_path / "edited-kernel")
    new = variant(64)
    (b / "sources" / "kernel.py").write_text(new)
    sol = json.loads((b / "solution.json").read_text())
    sol["sources"][0]["content"] = new
    (b / "solution.json").write_text(json.dumps(sol, indent=2) + "\n")
    m = json.loads((b / "manifest.json").read_text())
    import hashlib
    m["sources_sha256"]["kernel.py"] = hashlib.sha256(new.encode()).hexdigest()
    (b / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    read_artifact(b)
    with pytest.raises(ArtifactError, match="not those of the commit"):
        verify_provenance(read_artifact(b))
    # a lineage record from another commit
    c = _copy(src, tmp_path / "other-commit")
    with Lineage.open(lineage["path"]) as lin:
        (c / "lineage" / "commit").write_bytes(lin.commit_record(lineage["shas"]["v2"])["commit"])
    with pytest.raises(ArtifactError):
        verify_provenance(read_artifact(c))
    # an extra file
    d = _copy(src, tmp_path / "extra")
    (d / "notes.md").write_text("tuned by hand\n")
    assert reexport_diff(d) == ["notes.md: not written by avo export"]


DISPATCH_SCRIPT = """
import json, sys
import torch
import avo
ns = {}
exec(open(sys.argv[2]).read(), ns)
fn = avo.apply("grammar_bitmask")(ns["run"])
avo.apply.enable(sys.argv[1], require_faster=False)  # interpreter traces: no speed claim
ok = []
g = torch.Generator().manual_seed(0)
for b, v in [(3, 1000), (8, 2080), (8, 2080)]:
    axes = {"batch": b, "vocab": v, "words": (v + 31) // 32, "num_rows": b}
    x = ns["make_inputs"](axes, {"logits": torch.float32, "bitmask": torch.int32, "indices": torch.int32}, g, "cpu")
    ref = x["logits"].clone()
    ns["run"](ref, x["bitmask"], x["indices"])
    fn(x["logits"], x["bitmask"], x["indices"])
    ok.append(torch.equal(ref, x["logits"]))
print(json.dumps({"ok": ok, "stats": avo.apply.stats()}))
"""


def test_exported_artifacts_serve_the_keys_they_won(lineage, tmp_path):
    shas = lineage["shas"]
    export_run(str(lineage["path"]), tmp_path / "out")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(DISPATCH_SCRIPT), str(tmp_path / "out"),
                        str(REPO_ROOT / "evaluators" / TASK / "reference.py")],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ok"] == [True, True, True]
    s = res["stats"][TASK]
    assert s["exact"] == 3 and s["artifacts"] == {f"best-{shas['v1'][:10]}": 1, f"keys-{shas['seed0'][:10]}": 2}


def test_export_after_a_real_evolve_run(tmp_path):
    """What `avo evolve` itself writes exports: a one-island, two-attempt interpret run."""
    from avo.config import load_config
    from avo.ui.run import evolve_local
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""run: tiny
lineage_dir: {tmp_path / 'tiny'}
tasks: [grammar_bitmask]
workloads: {{grammar_bitmask: [{B3}]}}
islands_per_task: 1
budget: {{attempts: 2, wall_minutes: 5}}
gate: {{min_gain: 0.05, rounds: 2}}
device: interpret
""")
    assert evolve_local(load_config(cfg), live=False) == 0
    lin = Lineage.open(tmp_path / "tiny")
    best = lin.best(TASK)
    lin.close()
    paths = export_run(str(tmp_path / "tiny"), tmp_path / "out")
    assert paths[0].name == f"best-{best.sha[:10]}"
    a = read_artifact(paths[0])
    assert a.solution.sources[0].content == best.source and a.manifest.commit == best.sha
    # the one key goes to the best: the final measurement that chose it also times the key
    assert [k.workload for k in a.manifest.keys] == [B3] and a.manifest.keys[0].won
    assert a.manifest.device_mode == "interpret" and a.manifest.run == "tiny"


def test_export_back_in_the_problem_formats(lineage, tmp_path, quick_evaluator):
    """`avo export RUN --format sol-execbench|flashinfer-trace`: the best version as a problem
    directory / a dataset root that flashinfer-bench's own models read and that load and pass again."""
    import flashinfer_bench.data as fib
    from avo.apply.export import export_foreign
    from avo.tasks import find_solution_json, load_solution, load_task
    best = lineage["shas"]["v1"]
    [sol_dir] = export_foreign(str(lineage["path"]), tmp_path / "sol", "sol-execbench")
    assert sorted(p.name for p in sol_dir.iterdir()) == ["definition.json", "kernel.py", "solution.json",
                                                         "traces.jsonl", "workload.jsonl"]
    raw = json.loads((sol_dir / "solution.json").read_text())
    assert raw["spec"]["languages"] == ["triton"] and raw["spec"]["language"] == "triton"
    assert raw["spec"]["target_hardware"] == ["LOCAL"] and raw["spec"]["entry_point"] == "kernel.py::run"
    assert best in raw["description"] and (sol_dir / "kernel.py").read_text() == variant(512)
    task = load_task(str(sol_dir))
    assert quick_evaluator.evaluate(task, load_solution(task, sol_dir / "solution.json"),
                                    task.select("cpu")[:1]).status == EvaluationStatus.PASSED
    root = tmp_path / "fib"
    [spath] = export_foreign(str(lineage["path"]), root, "flashinfer-trace", task=TASK)
    op = json.loads((REPO_ROOT / "evaluators" / TASK / "definition.json").read_text())["op_type"]
    assert spath == root / "solutions" / "avo" / op / TASK / f"{TASK}_{best[:10]}.json"
    fib.Definition.model_validate_json((root / "definitions" / op / f"{TASK}.json").read_text())
    fib.Solution.model_validate_json(spath.read_text())
    lines = (root / "traces" / "avo" / op / f"{TASK}.jsonl").read_text().splitlines()
    assert lines and all(fib.Trace.model_validate_json(x).solution == f"{TASK}_{best[:10]}" for x in lines)
    for x in (root / "workloads" / op / f"{TASK}.jsonl").read_text().splitlines():
        assert fib.Trace.model_validate_json(x).evaluation is None
    task = load_task(str(root), TASK)
    assert quick_evaluator.evaluate(task, load_solution(task, find_solution_json(root, TASK)),
                                    task.select("cpu")[:1]).status == EvaluationStatus.PASSED
    # a scalar input keeps its `shape: null` (required upstream): attention's `causal`
    from avo.apply.export import definition_json
    from avo.schema import Definition
    attn = load_task("attention_mha_fwd").definition
    raw = definition_json(attn)
    assert "shape" in raw["inputs"]["causal"] and raw["inputs"]["causal"]["shape"] is None
    assert Definition.model_validate(raw) == attn
    fib.Definition.model_validate({**raw, "op_type": attn.op_type or "unknown"})
    r = _cli("export", "run1", "--format", "tensorrt", "--out", "x", cwd=lineage["root"])
    assert r.returncode == 2 and "--format must be one of artifact, sol-execbench, flashinfer-trace, kernelbench" in r.stderr
    r = _cli("export", "run1", "--format", "kernelbench", "--out", "x", cwd=lineage["root"])
    assert r.returncode == 2 and "did not come from a KernelBench problem file" in r.stderr
