"""avo.apply in transformers, end to end on CPU (Triton interpreter), for a tiny random-init GQA
Llama (4 query heads over 2 KV heads, head dim 16, 2 layers; config only, no download):

1. record: `avo.apply.record(DIR)` around generate() writes the shapes the model called as problem
   folders (dynamic and static cache, a padded batch whose masked calls are not recorded);
2. `avo eval DIR/<task> SEED --json` (the command's own entry, in process) accepts them: the seed kernels are
   evaluated on exactly those shapes, and their traces become artifacts (verified keys);
3. serve: greedy tokens identical with and without avo in eager (dynamic cache, static cache,
   padded batch), under torch.compile (a greedy loop over the compiled forward: the avo ops are
   in the graph) and generate()'s static-cache compiled decode; what was served and what fell
   back, by reason. CUDA graphs (mode reduce-overhead) need a GPU: tests marked gpu.
Also: `avo evolve`'s task resolution takes a recorded folder (seed by the task's name)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avo.tasks import REPO_ROOT, load_task

SEEDS = {"attention_gqa_fwd": "kernels/attention/gqa_fwd_seed.py",
         "attention_gqa_decode": "kernels/attention/gqa_decode_seed.py"}

MODEL = """
import json, sys
import torch
import avo
import avo.apply.transformers_attn as avo_attn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.generation import CompileConfig

torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=64, initializer_range=0.5,
                  bos_token_id=None, eos_token_id=None, pad_token_id=0)
model = LlamaForCausalLM(cfg).to(torch.float16).eval()
model.set_attn_implementation(avo_attn.register())
ids = torch.randint(1, 101, (2, 8), generator=torch.Generator().manual_seed(1))
ones = torch.ones_like(ids)
padded = ones.clone()
padded[0, :2] = 0  # left padding of row 0
N = 4

def gen(mask=ones, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False, **kw)[:, 8:].tolist()

def static_compiled():
    cc = CompileConfig(backend="aot_eager", mode=None)
    cc._compile_all_devices = True  # transformers compiles generate's decode on GPUs only otherwise
    return gen(cache_implementation="static", compile_config=cc)

def loop(forward, graphs=False):
    # greedy decoding over a dynamic cache without a mask: what a compiled serving loop calls.
    # graphs (mode reduce-overhead): every call of the compiled forward is a new CUDA-graph
    # generation, whose replay reuses the memory of the previous one's outputs; the DynamicCache's
    # keys/values are such outputs (torch.cat inside the graph) kept for the next step, so they are
    # cloned outside the graph, and each step is marked as torch documents
    cache, cur, out = DynamicCache(config=model.config), ids, []
    with torch.no_grad():
        for _ in range(N):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            cur = forward(input_ids=cur, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            if graphs:
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
            out.append(cur)
    return torch.cat(out, 1).tolist()
"""

FLOW = MODEL + """
from pathlib import Path
from torch._dynamo.backends.registry import lookup_backend
from avo.apply import write_artifact
from avo.schema import Trace
from avo.tasks import load_solution, load_task
out = Path(sys.argv[1])
seeds = json.loads(sys.argv[2])

# 1. record what the model calls
with avo.apply.record(out / "recorded") as rec:
    gen(); gen(cache_implementation="static"); gen(padded)

# 2. `avo eval` each recorded folder with its seed (the command, run in this process: torch is
# imported already), the traces as artifacts
from typer.testing import CliRunner
from avo.cli import app
evals = {}
for t, s in seeds.items():
    r = CliRunner().invoke(app, ["eval", str(out / "recorded" / t), s, "--device", "interpret", "--json",
                                 str(out / f"{t}.jsonl")], env={"COLUMNS": "200"})
    evals[t] = (r.exit_code, r.output)
for t, s in seeds.items():
    task = load_task(str(out / "recorded" / t))
    traces = [Trace.model_validate_json(x) for x in (out / f"{t}.jsonl").read_text().splitlines()]
    write_artifact(out / "artifacts" / t / "seed", task.definition, load_solution(task, s), traces)

# 3. serve: the same tokens with and without avo
graphs = []

def backend(gm, example_inputs):
    graphs.append(sorted({str(n.target) for n in gm.graph.nodes if str(n.target).startswith("avo.")}))
    return lookup_backend("aot_eager")(gm, example_inputs)

runs = {"eager": gen, "static": lambda: gen(cache_implementation="static"), "padded": lambda: gen(padded),
        "compiled_loop": lambda: loop(torch.compile(model.forward, backend=backend)),
        "compiled_static": static_compiled}
ref = {name: (gen() if name == "compiled_loop" else fn()) for name, fn in runs.items()}  # avo not enabled
avo.apply.enable(out / "artifacts", require_faster=False)  # interpreter traces make no speed claim
got, stats = {}, {}
for name, fn in runs.items():
    avo.apply.stats(reset=True)
    got[name] = fn()
    stats[name] = avo.apply.stats()
print(json.dumps({"summary": rec.summary, "evals": evals, "ref": ref, "got": got, "stats": stats, "graphs": graphs}))
"""


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> tuple[Path, dict]:
    """One interpreted process: record, `avo eval` the recorded folders, serve with the artifacts."""
    out = tmp_path_factory.mktemp("flow")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(FLOW), str(out),
                        json.dumps({t: str(REPO_ROOT / s) for t, s in SEEDS.items()})],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_record_writes_problem_folders_avo_eval_accepts(flow):
    out, res = flow
    rec, summary = out / "recorded", res["summary"]
    # dynamic + static + padded generate, batch 2 x 8 tokens + 4 new, 2 layers: prefill 2 calls each
    # (3 x 2 = 6, padded ones masked: 4 recorded), decode 3 steps x 2 layers each (dynamic only:
    # static and padded decode steps carry a mask)
    fwd, dec = summary["attention_gqa_fwd"], summary["attention_gqa_decode"]
    assert (fwd["calls"], fwd["keys"], fwd["workloads_added"]) == (4, 1, 1)
    assert (dec["calls"], dec["keys"], dec["workloads_added"]) == (6, 3, 3)
    assert fwd["not_recorded"] == {"transformers: prefill with a mask (padding, chunked prefill or custom)": 2}
    assert dec["not_recorded"] == {"transformers: decode with a mask (padding, or a static cache's unfilled slots)": 12}
    task = load_task(str(rec / "attention_gqa_decode"))
    assert task.name == "attention_gqa_decode" and task.baseline  # T_b stays the task's SDPA baseline
    assert sorted(w.axes["kv_len"] for w in task.workloads) == [9, 10, 11]
    w = task.workloads[0]
    assert w.target == "cpu" and w.dtypes == {"q": "float16", "k": "float16", "v": "float16", "o": "float16"}
    assert (w.axes["batch"], w.axes["q_heads"], w.axes["kv_heads"], w.axes["dim"]) == (2, 4, 2, 16)
    fwd_w = load_task(str(rec / "attention_gqa_fwd")).workloads
    assert [(x.axes["seq"], x.inputs["causal"].value) for x in fwd_w] == [(8, True)]
    for t, (code, text) in res["evals"].items():
        assert code == 0 and "PASSED" in text, (t, text[-3000:])

    # `avo evolve` takes the folder as a task entry: the task's own seed, the recorded workloads
    from avo.config import RunConfig
    from avo.evolve.setup import resolve_tasks
    cfg = RunConfig(run="recorded", tasks=[str(rec / "attention_gqa_decode")], device="interpret")
    setup = resolve_tasks(cfg, "interpret")["attention_gqa_decode"]
    assert setup.seed_path.endswith("gqa_decode_seed.py") and len(setup.workloads) == 3


def test_tiny_gqa_llama_same_tokens_with_avo_eager_compiled_static(flow):
    _, res = flow
    assert res["got"] == res["ref"], res
    s = res["stats"]
    for name in ("eager", "compiled_loop"):  # every call served: prefill and decode over the dynamic cache
        assert s[name]["attention_gqa_decode"]["exact"] == 6 and s[name]["attention_gqa_decode"]["calls"] == 6, name
        assert s[name]["attention_gqa_fwd"]["exact"] == 2 and s[name]["attention_gqa_fwd"]["calls"] == 2, name
        assert s[name]["attention_gqa_fwd"]["copies"] == {"layout copy: q": 2}  # transformers' q is [B, S, H, D]
        assert s[name]["attention_gqa_decode"]["copies"] == {}  # decode: views of the cache, no copy
    for name in ("static", "compiled_static"):  # the static cache's prefill is served (first q_len keys)...
        assert s[name]["attention_gqa_fwd"]["exact"] == 2, name
        assert s[name]["attention_gqa_fwd"]["copies"] == {"layout copy: q": 2, "layout copy: k": 2, "layout copy: v": 2}
    # ...its decode steps carry a mask over the unfilled slots: SDPA, counted (eager; not while tracing)
    assert s["static"]["attention_gqa_decode"]["reasons"] == {
        "transformers: decode with a mask (padding, or a static cache's unfilled slots)": 6}
    assert "attention_gqa_decode" not in s["compiled_static"]
    assert s["padded"]["attention_gqa_fwd"]["reasons"] == {
        "transformers: prefill with a mask (padding, chunked prefill or custom)": 2}
    assert s["padded"]["attention_gqa_decode"]["fallbacks"] == 6
    assert all(v["errors"] == 0 and v["misses"] == 0 for run in s.values() for v in run.values())
    # the compiled loop's graphs (prefill, decode) call the avo ops; generate's compiled decode none
    assert ["avo.transformers_attention_gqa_decode"] in res["graphs"] and \
        ["avo.transformers_attention_gqa_fwd"] in res["graphs"], res["graphs"]


GPU_FLOW = MODEL.replace(".to(torch.float16).eval()", ".to(device='cuda', dtype=torch.float16).eval()").replace(
    "generator=torch.Generator().manual_seed(1))", "generator=torch.Generator().manual_seed(1)).cuda()") + """
from pathlib import Path
from avo.apply import write_artifact
from avo.harness.runner import EvalConfig, Evaluator
from avo.tasks import load_solution, load_task
out = Path(sys.argv[1])
seeds = json.loads(sys.argv[2])
with avo.apply.record(out / "recorded"):
    gen()
with Evaluator(EvalConfig(device="cuda")) as ev:
    for t, s in seeds.items():
        task = load_task(str(out / "recorded" / t))
        sol = load_solution(task, s)
        rep = ev.evaluate(task, sol, task.select("gpu"))
        assert rep.passed, rep.message
        write_artifact(out / "artifacts" / t / "seed", task.definition, sol, rep.traces)

def graphs_loop():
    torch._dynamo.reset()
    return loop(torch.compile(model.forward, mode="reduce-overhead"), graphs=True)

def graphs_static():
    torch._dynamo.reset()
    model.__dict__.pop("_compiled_call", None)
    return gen(cache_implementation="static")  # generate compiles its decode (reduce-overhead) on GPUs

runs = {"eager": gen, "graphs_loop": graphs_loop, "graphs_static": graphs_static}
ref = {name: fn() for name, fn in runs.items()}
avo.apply.enable(out / "artifacts", require_faster=False)  # the seeds need not beat SDPA here
got, stats = {}, {}
for name, fn in runs.items():
    avo.apply.stats(reset=True)
    got[name] = fn()
    stats[name] = avo.apply.stats()
print(json.dumps({"ref": ref, "got": got, "stats": stats}))
"""


@pytest.mark.gpu
def test_gpu_cuda_graphs_same_tokens_with_avo(tmp_path):
    """On a GPU: the seeds evaluated on the recorded shapes; eager, a reduce-overhead (CUDA graphs)
    compiled greedy loop over a dynamic cache, and generate()'s compiled static-cache decode give
    the tokens SDPA gives. The op runs while the graphs are captured (counted), not on replay."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(GPU_FLOW), str(tmp_path),
                        json.dumps({t: str(REPO_ROOT / s) for t, s in SEEDS.items()})],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["got"] == res["ref"], res
    assert res["stats"]["eager"]["attention_gqa_decode"]["exact"] == 6
    assert res["stats"]["graphs_loop"]["attention_gqa_decode"]["exact"] >= 1  # captured, then replayed
    assert res["stats"]["graphs_static"]["attention_gqa_fwd"]["exact"] == 2  # the eager prefill
