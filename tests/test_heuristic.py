"""The heuristic operator: CONFIG rewrite keeps every other byte, proposals are deterministic per
seed, never repeat a tried source, widen with `view.widen`, follow recipes and directions, and
learn from the island's history."""
import math
from pathlib import Path

import pytest

from avo.config import HeuristicSpec
from avo.tasks import source_hash
from avo.operators.base import AttemptView, GiveUp, LineageView, Proposal, StepContext, VersionView
from avo.operators.heuristic import HeuristicOperator
from avo.operators.knobs import KnobError, describe_move, parse_knobs, rewrite_config
from avo.operators.recipes import RecipeError, load_recipes, parse_recipe
from avo.tasks import REPO_ROOT

SEED = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
ATTN = REPO_ROOT / "kernels/attention/mha_fwd_seed.py"


def view(source: str = SEED, task: str = "grammar_bitmask", **kw) -> LineageView:
    return LineageView(task=task, island=0, best=VersionView(commit="c0ffee", source=source), **kw)


def ctx(tmp_path: Path, seed: int = 0) -> StepContext:
    return StepContext(seed=seed, workdir=tmp_path)


def op(recipes: bool = False) -> HeuristicOperator:
    return HeuristicOperator(HeuristicSpec(recipes=recipes))


def changed_knobs(src: str) -> dict:
    old, new = parse_knobs(SEED).config, parse_knobs(src).config
    return {k: (old[k], new[k]) for k in old if old[k] != new[k]}


def index_distance(src: str) -> int:
    k0 = parse_knobs(SEED)
    k1 = parse_knobs(src)
    return sum(abs(k0.index(k, k1.config[k]) - k0.index(k, k0.config[k])) for k in k0.mutable)


def test_parse_real_seed():
    k = parse_knobs(SEED)
    # Knobs in TUNABLES but absent from CONFIG take their first allowed value, and are movable.
    assert k.config == {"BLOCK_SIZE": 256, "num_warps": 4, "num_stages": 1, "RMW": False,
                        "PERSISTENT": False, "PROGRAMS_PER_SM": 1, "SKIP_ONES": False, "BROADCAST_WORDS": False,
                        "WORD_TILE": False, "AUTO_BLOCK": False, "RMW_MIN_ROWS": 0}
    assert k.tunables["BLOCK_SIZE"][-1] == 8192 and k.mutable == list(k.tunables)


def test_rewrite_changes_only_the_config_line():
    k = parse_knobs(SEED)
    new = rewrite_config(SEED, k, {**k.config, "BLOCK_SIZE": 1024, "RMW": True})
    a, b = SEED.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(a) == len(b)
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert len(diff) == 1 and b[diff[0]] == ("CONFIG = dict(BLOCK_SIZE=1024, num_warps=4, num_stages=1, RMW=True, "
                                             "PERSISTENT=False, PROGRAMS_PER_SM=1, SKIP_ONES=False, BROADCAST_WORDS=False, "
                                             "WORD_TILE=False, AUTO_BLOCK=False, RMW_MIN_ROWS=0)\n")
    assert parse_knobs(new).config["BLOCK_SIZE"] == 1024


def test_rewrite_keeps_bytes_around_a_multiline_config_with_unicode():
    src = ('"""Noyau — café ✓."""\nX = 1  # ünïcode\nCONFIG = dict(\n    A=1,\n    B="x",  # comment\n)  # trailing é\n'
           'TUNABLES = {"A": [1, 2, 3], "B": ["x", "y"]}\r\nrest = "kept"\n')
    k = parse_knobs(src)
    new = rewrite_config(src, k, {"A": 3, "B": "y"})
    head = src[:src.index("CONFIG")]
    tail = src[src.index(")  # trailing") + 1:]
    assert new == head + "CONFIG = dict(A=3, B='y')" + tail
    brace = 'CONFIG = {"A": 1}\nTUNABLES = {"A": [1, 2]}\n'
    assert rewrite_config(brace, parse_knobs(brace), {"A": 2}) == "CONFIG = {'A': 2}\nTUNABLES = {\"A\": [1, 2]}\n"


def test_parse_errors_are_clear():
    with pytest.raises(KnobError, match="no module-level CONFIG"):
        parse_knobs("TUNABLES = dict(A=[1])\n")
    with pytest.raises(KnobError, match="not a literal"):
        parse_knobs("CONFIG = dict(A=f(1))\nTUNABLES = dict(A=[1, 2])\n")
    with pytest.raises(KnobError, match="does not parse"):
        parse_knobs("CONFIG = dict(A=\n")


def test_missing_knobs_give_up(tmp_path):
    out = op().propose(view("def run(x):\n    pass\n"), ctx(tmp_path))
    assert isinstance(out, GiveUp) and "CONFIG" in out.reason


def test_deterministic_per_seed_and_seeds_diverge(tmp_path):
    firsts = []
    for seed in range(8):
        a = op().propose(view(), ctx(tmp_path, seed))
        b = op().propose(view(), ctx(tmp_path, seed))
        assert isinstance(a, Proposal) and a.source == b.source and a.note == b.note
        firsts.append(a.note)
    assert len(set(firsts)) > 1, "the seed must change the order among equally good moves"


# The real seed's space has thousands of points; a small kernel keeps exhaustion quick. Knob C is
# absent from CONFIG: it starts at its first value and must be searched too.
SMALL = ("CONFIG = dict(A=2, B=8)\n"
         "TUNABLES = dict(A=[1, 2, 3, 4], B=[4, 8, 16], C=[False, True])\n"
         "def run(x, y):\n    y.copy_(x)\n")


def test_never_repeats_and_exhausts_the_space(tmp_path):
    h = op()
    seen: set[str] = set()
    n = 0
    while True:
        out = h.propose(view(source=SMALL, seen_hashes=set(seen)), ctx(tmp_path, n))
        if isinstance(out, GiveUp):
            break
        digest = source_hash(out.source)
        assert digest not in seen and out.source != SMALL
        assert out.parent == "c0ffee" and out.note == describe_move(parse_knobs(SMALL).config, parse_knobs(out.source).config)
        seen.add(digest)
        n += 1
    k = parse_knobs(SMALL)
    assert k.mutable == ["A", "B", "C"]
    space = math.prod(len(k.tunables[name]) for name in k.mutable)
    assert n == space - 1 and "tried" in out.reason


def test_neighbours_first_then_wider(tmp_path):
    h, seen, dists = op(), set(), []
    for i in range(8):
        out = h.propose(view(seen_hashes=set(seen)), ctx(tmp_path, i))
        seen.add(source_hash(out.source))
        dists.append(index_distance(out.source))
    # every one-step neighbour of the seed comes before any two-step move
    k = parse_knobs(SEED)
    n1 = sum((k.index(name, k.config[name]) > 0) + (k.index(name, k.config[name]) < len(k.tunables[name]) - 1)
             for name in k.mutable)
    assert n1 == 13  # BLOCK_SIZE 128/512, num_warps 2/8, num_stages 2, RMW, PERSISTENT, PROGRAMS_PER_SM 2, SKIP_ONES,
    # BROADCAST_WORDS, WORD_TILE, AUTO_BLOCK, RMW_MIN_ROWS 16
    for i in range(8, n1 + 2):
        out = h.propose(view(seen_hashes=set(seen)), ctx(tmp_path, i))
        seen.add(source_hash(out.source))
        dists.append(index_distance(out.source))
    assert dists[:n1] == [1] * n1 and min(dists[n1:]) >= 2


@pytest.mark.parametrize("widen", [0, 1, 2])
def test_widen_makes_bigger_moves(tmp_path, widen):
    for seed in range(4):
        out = op().propose(view(widen=widen), ctx(tmp_path, seed))
        assert index_distance(out.source) == 1 + widen


def test_wide_moves_include_multi_knob_moves(tmp_path):
    h, seen, knobs = op(), set(), []
    for i in range(6):
        out = h.propose(view(widen=2, seen_hashes=set(seen)), ctx(tmp_path, i))
        seen.add(source_hash(out.source))
        knobs.append(len(changed_knobs(out.source)))
    assert max(knobs) >= 2, "wide moves include multi-knob moves"


def test_learns_from_history(tmp_path):
    won = [AttemptView(id="a1", status="PASSED", accepted=True, note="BLOCK_SIZE 128->256")]
    for seed in range(6):
        out = op().propose(view(recent=won), ctx(tmp_path, seed))
        assert out.note == "BLOCK_SIZE 256->512", "keep going in a direction that was accepted"
    lost = [AttemptView(id=f"a{i}", status="REJECTED", accepted=False, note=n)
            for i, n in enumerate(["BLOCK_SIZE 256->128", "num_warps 4->8", "num_stages 1->2"])]
    broke = [AttemptView(id="a9", status="COMPILE_ERROR", accepted=False, note="RMW False->True")]
    for seed in range(6):
        out = op().propose(view(recent=lost + broke), ctx(tmp_path, seed))
        # untried one-step moves only: not the rejected ones, not the one that broke the build
        assert out.note in ("BLOCK_SIZE 256->512", "num_warps 4->2", "PERSISTENT False->True",
                            "PROGRAMS_PER_SM 1->2", "SKIP_ONES False->True", "BROADCAST_WORDS False->True",
                            "WORD_TILE False->True", "AUTO_BLOCK False->True", "RMW_MIN_ROWS 0->16"), out.note


def test_directions_are_followed(tmp_path):
    out = op().propose(view(directions=["try BLOCK_SIZE=4096 with num_warps=8; keep RMW"]), ctx(tmp_path))
    assert changed_knobs(out.source) == {"BLOCK_SIZE": (256, 4096), "num_warps": (4, 8)}
    assert out.note.startswith("direction: ")


def test_real_recipes_apply_first(tmp_path):
    # the measured word-tile point goes first and applies to the seed as written (in session 9 it
    # waited for a BLOCK_SIZE only bitmask-wide-blocks sets, a step the gate rejects on an H100)
    out = op(recipes=True).propose(view(), ctx(tmp_path))
    assert out.note.startswith("recipe bitmask-word-tile: ")
    assert changed_knobs(out.source) == {"BLOCK_SIZE": (256, 4096), "num_warps": (4, 8), "RMW": (False, True),
                                         "WORD_TILE": (False, True), "AUTO_BLOCK": (False, True),
                                         "RMW_MIN_ROWS": (0, 32)}
    # once tried, the next recipe by priority (wide blocks) follows
    out2 = op(recipes=True).propose(view(seen_hashes={source_hash(out.source)}), ctx(tmp_path))
    assert out2.note.startswith("recipe bitmask-wide-blocks: ")
    assert changed_knobs(out2.source) == {"BLOCK_SIZE": (256, 2048), "num_warps": (4, 8)}


def test_attention_recipes_fit_the_attention_seed(tmp_path):
    src = ATTN.read_text()
    out = op(recipes=True).propose(view(src, task="attention_mha_fwd"), ctx(tmp_path))
    # the highest-priority recipe: the H100 lineage's winning point, all six knobs at once
    assert out.note.startswith("recipe attention-h100-lineage: ")
    cfg = parse_knobs(out.source).config
    assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"]) == (128, 64, 8, 3)
    assert cfg["EXP2"] is True and cfg["CAUSAL_SKIP"] is True
    names = {r.name for r in load_recipes(REPO_ROOT / "knowledge_base/recipes")}
    assert {"bitmask-wide-blocks", "bitmask-xgrammar-shape", "attention-large-tiles", "attention-exp2",
            "attention-h100-lineage"} <= names


def test_recipe_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("---\nname: x\ntask: grammar_bitmask\nset: {BLOCK_SIZE: 512}\nwhn: {}\n---\nbody\n")
    with pytest.raises(RecipeError, match=r"bad\.md: unknown key 'whn'"):
        parse_recipe(bad)
    bad.write_text("no front matter\n")
    with pytest.raises(RecipeError, match="front matter"):
        parse_recipe(bad)
    bad.write_text("---\nname: x\nset: {BLOCK_SIZE: 512}\n---\n")
    with pytest.raises(RecipeError, match="task"):
        parse_recipe(bad)


def test_recipe_values_outside_tunables_are_skipped(tmp_path):
    kb = tmp_path / "kb" / "recipes"
    kb.mkdir(parents=True)
    (kb / "r.md").write_text("---\nname: too-big\ntask: grammar_bitmask\nset: {BLOCK_SIZE: 65536}\npriority: 9\n---\n")
    (kb / "s.md").write_text("---\nname: biggest\nfamily: grammar\nwhen: {RMW: false}\nset: {BLOCK_SIZE: max}\n---\n")
    h = HeuristicOperator(HeuristicSpec(recipes=True), knowledge_dir=tmp_path / "kb")
    out = h.propose(view(), ctx(tmp_path))
    assert out.note.startswith("recipe biggest: ") and changed_knobs(out.source) == {"BLOCK_SIZE": (256, 8192)}
