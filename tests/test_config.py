"""Run configs: unknown keys are named with their file, bad values are one-line errors, the
shipped configs load, and overrides from the command line win."""
import subprocess
import sys
from pathlib import Path

import pytest

from avo.config import (AgenticSpec, ConfigError, ExternalSpec, HeuristicSpec, RunConfig,
                        load_config)
from avo.tasks import REPO_ROOT, default_seed_path, task_family

BASE = """run: t1
tasks: [grammar_bitmask]
budget: {wall_minutes: 1}
"""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg, "config errors are one line"
    return msg


def test_minimal_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.run == "t1" and cfg.tasks == ["grammar_bitmask"]
    assert isinstance(cfg.operators[0], HeuristicSpec)
    assert [(i.task, i.operator) for i in cfg.island_specs()] == [("grammar_bitmask", "heuristic")]
    assert cfg.lineage_path == REPO_ROOT / "lineages" / "t1"
    assert cfg.eval_config().device == "auto"


@pytest.mark.parametrize("text, key, where", [
    (BASE + "islnds: 3\n", "islnds", None),
    (BASE + "gate: {min_gain: 0.1, roundz: 2}\n", "roundz", "gate"),
    (BASE + "operators: [{kind: heuristic, name: h, recipe: false}]\n", "recipe", "operators.0"),
    (BASE + "operators: [{kind: agentic, name: a, model: m, provder: openai}]\n", "provder", "operators.0"),
    (BASE + "eval: {trials: 3, itters: 4}\n", "itters", "eval"),
])
def test_unknown_key_is_named_with_the_file(tmp_path, text, key, where):
    p = write(tmp_path, text)
    msg = error_of(p)
    assert str(p) in msg and f"unknown key {key!r}" in msg
    if where:
        assert f"in {where}" in msg


@pytest.mark.parametrize("extra, needle", [
    ("gate: {min_gain: -0.1}\n", "gate.min_gain"),
    ("device: tpu\n", "device"),
    ("operators: [{kind: genetic, name: g}]\n", "unknown operator kind"),
    ("operators: [{kind: heuristic, name: h}]\nislands: [{operator: nope, task: grammar_bitmask}]\n", "'nope' is not among operators"),
    ("islands: [{operator: heuristic, task: other_task}]\n", "'other_task' is not among tasks"),
    ("operators: [{kind: heuristic, name: h}, {kind: heuristic, name: h}]\n", "unique"),
    ("seed_kernels: {attention_mha_fwd: x.py}\n", "not among tasks"),
    ("eval: {device: cuda}\n", "top level"),
    ("supervisor: {stagnation_k: 0}\n", "supervisor.stagnation_k"),
    ("supervisor: {review_operator: heuristic}\n", "not an agentic operator"),
    ("operators: [{kind: external, name: e}]\n", "command"),
])
def test_bad_values_are_one_line_errors(tmp_path, extra, needle):
    msg = error_of(write(tmp_path, BASE + extra))
    assert needle in msg, msg


def test_bad_run_name_and_empty_budget(tmp_path):
    assert "run name" in error_of(write(tmp_path, BASE.replace("run: t1", "run: ../escape")))
    assert "at least one of" in error_of(write(tmp_path, "run: r\ntasks: [grammar_bitmask]\nbudget: {wall_minutes: null}\n"))


def test_malformed_yaml_and_missing_file(tmp_path):
    assert "malformed YAML" in error_of(write(tmp_path, "run: [unclosed\n"))
    assert "no such config file" in error_of(tmp_path / "absent.yaml")
    assert "YAML mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_overrides_win(tmp_path):
    cfg = load_config(write(tmp_path, BASE), run="other", minutes=2.5, attempts=7, device="interpret")
    assert (cfg.run, cfg.budget.wall_minutes, cfg.budget.attempts, cfg.device) == ("other", 2.5, 7, "interpret")
    assert "device" in error_of(write(tmp_path, BASE), device="gpu")
    cfg = load_config(write(tmp_path, BASE + "eval: {trials: 4, run_timeout_s: 9}\n"), compile_timeout_s=5)
    assert (cfg.eval.trials, cfg.eval.compile_timeout_s, cfg.eval.run_timeout_s) == (4, 5, 9)
    assert load_config(write(tmp_path, BASE)).eval.run_timeout_s is None  # derived (avo/harness/runner.py)
    assert "run_timeout_s" in error_of(write(tmp_path, BASE), run_timeout_s=0)


def test_operator_kinds_and_islands(tmp_path):
    cfg = load_config(write(tmp_path, BASE + """operators:
  - {kind: heuristic, name: h}
  - {kind: agentic, name: claude, model: some-model, api_key_env: MY_KEY}
  - {kind: external, name: cli, command: "my-agent --run", timeout_s: 60}
islands_per_task: 3
default_operator: claude
"""))
    kinds = [type(o) for o in cfg.operators]
    assert kinds == [HeuristicSpec, AgenticSpec, ExternalSpec]
    assert [i.operator for i in cfg.island_specs()] == ["claude"] * 3
    explicit = load_config(write(tmp_path, BASE + """operators: [{kind: heuristic, name: h}, {kind: heuristic, name: h2}]
islands: [{operator: h, task: grammar_bitmask}, {operator: h2, task: grammar_bitmask}]
""", "b.yaml"))
    assert [i.operator for i in explicit.island_specs()] == ["h", "h2"]


def test_seed_table_and_family():
    assert default_seed_path("grammar_bitmask").relative_to(REPO_ROOT) == Path("kernels/grammar/bitmask_seed.py")
    assert default_seed_path("attention_mha_fwd").relative_to(REPO_ROOT) == Path("kernels/attention/mha_fwd_seed.py")
    assert default_seed_path("layout_permute").relative_to(REPO_ROOT) == Path("kernels/layout/permute_seed.py")
    assert task_family("attention_mha_fwd") == "attention"


@pytest.mark.parametrize("name", ["quickstart.yaml", "gpu_grammar.yaml", "gpu_attention.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO_ROOT / "configs" / name)
    assert isinstance(cfg, RunConfig)
    for task in cfg.tasks:
        seed = cfg.seed_path(task, task) or default_seed_path(task)
        assert seed.exists(), f"{name}: seed for {task} missing at {seed}"


def test_cli_reports_config_error_in_one_line(tmp_path):
    p = write(tmp_path, BASE + "bogus_key: 1\n")
    r = subprocess.run([sys.executable, "-m", "avo.cli", "evolve", "--config", str(p)], capture_output=True, text=True,
                       cwd=REPO_ROOT)
    assert r.returncode == 2
    assert "unknown key 'bogus_key'" in r.stderr and "Traceback" not in r.stderr
