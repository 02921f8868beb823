"""apply() inside real engines, on CPU with the Triton interpreter: a tiny random-init Llama
(transformers) through the `attention_mha_fwd` artifact, xgrammar's token-bitmask application
through the `grammar_bitmask` artifact, and the artifacts read by FlashInfer-Bench's data models.

The artifacts are written from real harness evaluations of the seed kernels (interpret mode).
The engine runs happen in a subprocess because TRITON_INTERPRET must be set before triton is
imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avo.apply import read_artifact, write_artifact
from avo.harness.runner import EvalConfig, Evaluator
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """grammar_bitmask and attention_mha_fwd seeds, evaluated for real, as artifacts."""
    out = tmp_path_factory.mktemp("artifacts")
    seeds = {"grammar_bitmask": "grammar/bitmask_seed.py", "attention_mha_fwd": "attention/mha_fwd_seed.py"}
    with Evaluator(EvalConfig(device="interpret")) as ev:
        for name, rel in seeds.items():
            task = load_task(name)
            sol = solution_from_kernel_file(task, REPO_ROOT / "kernels" / rel)
            rep = ev.evaluate(task, sol, task.select("cpu"))
            assert rep.passed, rep.message
            write_artifact(out / name / "seed", task.definition, sol, rep.traces)
    return out


def run_interpreted(script: str, *args: str, timeout: float = 240, env: dict | None = None) -> dict:
    """Run a script under TRITON_INTERPRET=1; its last stdout line is a JSON result."""
    env = {**os.environ, **(env or {}), "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


LLAMA_SCRIPT = """
import json, sys
import torch
import avo
import avo.apply.transformers_attn as avo_attn
from transformers import LlamaConfig, LlamaForCausalLM

def tiny(kv_heads):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      initializer_range=0.5, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(cfg).to(torch.float16).eval()

ids = torch.randint(1, 101, (1, 12), generator=torch.Generator().manual_seed(1))
mask = torch.ones_like(ids)

def greedy(model, use_cache):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                              use_cache=use_cache).tolist()

model, gqa = tiny(2), tiny(1)
ref = {c: greedy(model, c) for c in (True, False)}
ref_gqa = greedy(gqa, True)
with torch.no_grad():
    ref_logits = model(ids).logits

avo.apply.enable(sys.argv[1], nearest=True, require_faster=False)  # no verified key at these shapes; CPU
name = avo_attn.register()
model.set_attn_implementation(name)
gqa.set_attn_implementation(name)
got = {c: greedy(model, c) for c in (True, False)}
with torch.no_grad():
    got_logits = model(ids).logits
got_gqa = greedy(gqa, True)
print(json.dumps({"ref": ref, "got": got, "ref_gqa": ref_gqa, "got_gqa": got_gqa,
                  "logits_max_diff": (ref_logits.float() - got_logits.float()).abs().max().item(),
                  "stats": avo.apply.stats()}))
"""


def test_transformers_llama_greedy_tokens_identical_with_avo_attention(artifacts):
    res = run_interpreted(LLAMA_SCRIPT, str(artifacts))
    assert res["got"] == res["ref"] and res["got_gqa"] == res["ref_gqa"]
    assert len(res["ref"]["true"][0]) == 18
    assert res["logits_max_diff"] < 2e-2
    s = res["stats"]["attention_mha_fwd"]
    # with a cache: 2 layers x 1 prefill each go to the artifact (nearest key); without a cache:
    # 2 layers x 6 prefills; one plain forward: 2 more. Decode steps and the GQA model's calls go to
    # attention_gqa_decode / attention_gqa_fwd, which have no artifact here: SDPA, counted as misses.
    assert s["hits"] == s["nearest"] == 2 + 12 + 2 and s["errors"] == 0 and s["misses"] == 0
    assert s["artifacts"] == {"mha_fwd_seed": 16}
    assert res["stats"]["attention_gqa_decode"]["reasons"] == {"no artifact for task": 2 * 5 + 2 * 5}
    assert res["stats"]["attention_gqa_fwd"]["reasons"] == {"no artifact for task": 2}


XGRAMMAR_SCRIPT = """
import json, random, sys
import torch
import xgrammar as xgr
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
import avo
import avo.apply.xgrammar_bitmask as avo_xgr

# A byte-level BPE vocabulary of 1100 tokens trained here on JSON-ish text (no downloads).
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
corpus = [json.dumps({rng.choice(words): [rng.randint(0, 999), rng.choice(words), rng.random() < .5, None]})
          for _ in range(3000)]
bpe = Tokenizer(models.BPE())
bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = decoders.ByteLevel()
bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1100, special_tokens=["<eos>"], show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
V = len(tok)
info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=V, stop_token_ids=[tok.eos_token_id])
grammar = xgr.GrammarCompiler(info).compile_builtin_json_grammar()

def generate(batch=4, steps=20):
    matchers = [xgr.GrammarMatcher(grammar) for _ in range(batch)]
    bitmask = xgr.allocate_token_bitmask(batch, V)
    gen = torch.Generator().manual_seed(7)
    out = [[] for _ in range(batch)]
    for _ in range(steps):
        logits = torch.randn(batch, V, generator=gen)  # a random "model"
        for i, m in enumerate(matchers):
            if m.is_terminated():
                bitmask[i].fill_(-1)  # a finished request: nothing masked
            else:
                m.fill_next_token_bitmask(bitmask, i)
        xgr.apply_token_bitmask_inplace(logits, bitmask)  # through the module, as engines call it
        for i, t in enumerate(logits.argmax(-1).tolist()):
            if not matchers[i].is_terminated():
                assert matchers[i].accept_token(t), (i, t)
                out[i].append(t)
    return out

ref = generate()
avo.apply.enable(sys.argv[1], nearest=True, require_faster=False)  # batch 4 x vocab 1100: no verified key; CPU
avo_xgr.install()
patched = xgr.apply_token_bitmask_inplace is avo_xgr.apply_token_bitmask_inplace
got = generate()
avo_xgr.uninstall()
print(json.dumps({"vocab": V, "ref": ref, "got": got, "patched": patched,
                  "restored": xgr.apply_token_bitmask_inplace is not avo_xgr.apply_token_bitmask_inplace,
                  "texts": [tok.decode(o) for o in got], "stats": avo.apply.stats()}))
"""


def test_xgrammar_constrained_generation_identical_through_avo(artifacts):
    res = run_interpreted(XGRAMMAR_SCRIPT, str(artifacts))
    assert res["vocab"] == 1100 and res["patched"] and res["restored"]
    assert res["got"] == res["ref"] and all(len(o) > 0 for o in res["got"])
    assert all(t.lstrip()[:1] in "{[" for t in res["texts"])  # the grammar: a JSON object or array
    finished = [t.split("<eos>")[0] for t in res["texts"] if "<eos>" in t]
    assert finished and all(json.loads(t) is not None for t in finished)  # complete documents parse
    s = res["stats"]["grammar_bitmask"]
    assert s["hits"] == s["calls"] == 20 and s["nearest"] == 20  # batch 4, vocab 1100: no exact key
    assert s["fallbacks"] == s["errors"] == s["misses"] == 0


def test_artifacts_load_with_flashinfer_bench_models(artifacts, tmp_path):
    from flashinfer_bench.data import Definition as FDefinition
    from flashinfer_bench.data import EvaluationStatus as FStatus
    from flashinfer_bench.data import Solution as FSolution
    from flashinfer_bench.data import Trace as FTrace
    from flashinfer_bench.data import TraceSet

    from avo.apply.flashinfer_trace import write_flashinfer_trace_set

    for task in ("grammar_bitmask", "attention_mha_fwd"):
        art = artifacts / task / "seed"
        a = read_artifact(art)
        fd = FDefinition.model_validate_json((art / "definition.json").read_text())
        fs = FSolution.model_validate_json((art / "solution.json").read_text())
        ft = [FTrace.model_validate_json(line) for line in (art / "traces.jsonl").read_text().splitlines()]
        assert fd.name == task and fd.reference == a.definition.reference and list(fd.inputs) == list(a.definition.inputs)
        assert fs.definition == task and fs.get_entry_symbol() == "run"
        assert fs.get_entry_source().content == a.solution.sources[0].content
        assert len(ft) == len(a.traces) and all(t.evaluation.status == FStatus.PASSED for t in ft)
        assert [t.evaluation.performance.latency_ms for t in ft] == [t.evaluation.performance.latency_ms for t in a.traces]

    root = write_flashinfer_trace_set(artifacts, tmp_path / "fib")
    ts = TraceSet.from_path(str(root))
    assert sorted(ts.definitions) == ["attention_mha_fwd", "grammar_bitmask"]
    assert ts.get_solution("mha_fwd_seed").definition == "attention_mha_fwd"
    assert len(ts.traces["grammar_bitmask"]) == 3 and len(ts.workloads["attention_mha_fwd"]) == 4
    # max_rel_error open: the recorded relative error divides by |ref| clamped at 1e-6 (see below)
    best = ts.get_best_trace("attention_mha_fwd", max_abs_error=1.0, max_rel_error=1e9)
    assert best is not None and best.solution == "mha_fwd_seed"


FIB_APPLY_SCRIPT = """
import json, sys
import torch
import flashinfer_bench as fib
from flashinfer_bench.apply import ApplyConfig
from avo.apply.flashinfer_trace import write_flashinfer_trace_set

root = write_flashinfer_trace_set(sys.argv[1], sys.argv[2])
# FlashInfer-Bench keeps a solution for a key only if its recorded errors are within the config;
# its default max_rtol (1e-5) is stricter than the fp16 task's tolerance. The recorded max abs error
# comes from unpredictable input seeds, so the bound is the task's (atol 1e-3 + rtol 0.02 x |out|
# of a few units), not a tighter one that a lucky seed happens to meet (1e-2 failed now and then).
# The recorded max relative error divides by |ref| clamped at 1e-6, so one output near zero makes
# it as large as it likes (max_rtol 1.0 failed now and then too): the bound is on atol alone.
fib.enable_apply(str(root), ApplyConfig(max_atol=0.1, max_rtol=1e9))
fallbacks = []

def reference(q, k, v, causal):
    fallbacks.append(1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2, 9, 64, generator=g).half() for _ in range(3))  # a verified key
o = fib.apply("attention_mha_fwd", args=(q, k, v, False), fallback=reference)
served = len(fallbacks) == 0
want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
o_miss = fib.apply("attention_mha_fwd", args=(q[:, :1], k[:, :1], v[:, :1], False), fallback=reference)
print(json.dumps({"served": served, "err": (o.float() - want).abs().max().item(), "fallbacks": len(fallbacks)}))
"""


def test_flashinfer_bench_apply_runs_the_exported_solution(artifacts, tmp_path):
    """FlashInfer-Bench's own runtime (enable_apply + apply) dispatches to the exported attention
    solution on a key it has a trace for, and to the fallback on one it has not."""
    res = run_interpreted(FIB_APPLY_SCRIPT, str(artifacts), str(tmp_path / "fib"),
                          env={"FIB_CACHE_PATH": str(tmp_path / "fib_cache")})
    assert res["served"] and res["err"] < 2e-2 and res["fallbacks"] == 1


def test_bench_apply_e2e_script_interpret(tmp_path):
    """scripts/bench_apply_e2e.py on CPU: it evaluates the seeds on its own shapes (a tiny GQA
    Llama's prefill and decode steps), then both engines give the same tokens with and without avo,
    every targeted call served exactly."""
    out = tmp_path / "e2e.json"
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_apply_e2e.py"), "--device", "interpret",
                        "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads(out.read_text())
    llama, xg = res["llama"], res["xgrammar"]
    assert llama["tokens_identical"] and xg["tokens_identical"] and xg["tokens_generated"] > 0
    # GQA prefill: 2 layers x (a prefill + generate's prefill) x (warmup + 1 repeat); decode: 2 layers x
    # 3 steps x (warmup + 1 repeat), each step's kv length a verified key of the seed artifact
    fwd, dec = llama["stats"]["attention_gqa_fwd"], llama["stats"]["attention_gqa_decode"]
    assert fwd["exact"] == fwd["calls"] == 8 and dec["exact"] == dec["calls"] == 12
    assert fwd["errors"] == dec["errors"] == 0 and dec["copies"] == {}
    assert xg["stats"]["exact"] == xg["stats"]["calls"] == 20  # 20 steps x 1 repeat (warmup not counted)
    assert llama["avo"]["tokens_per_s"] > 0 and xg["avo"]["apply_ms"] > 0
    # the untimed runs that keep every step's logits: avo's agree, margins reported, no yardstick on CPU
    assert llama["compare"]["avo"]["tokens_identical"] and list(llama["compare"]) == ["avo"]
    assert llama["sdpa_margin_min"] > llama["compare"]["avo"]["steps_logits_max_abs_diff"]
    assert llama["sdpa_logits_finite"] and llama["distinct_generated_tokens"] > 1
