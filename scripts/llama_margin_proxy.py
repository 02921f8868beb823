"""CPU proxy for scripts/bench_apply_e2e.py's random-init Llama: how far apart are its greedy
top-1 / top-2 logits, compared with how much two correct attention implementations move them?

    python scripts/llama_margin_proxy.py --init-range 0.02 0.1 [--batch 2 --prompt-len 256 --new-tokens 16]

The model is the cuda default of bench_apply_e2e.py (4 layers, 16 heads x 128, intermediate 5632,
vocab 32000, MHA), built in fp32 (fp16 matmuls on CPU run at ~2 GFLOP/s), with every Linear,
RMSNorm and decoder-layer output rounded through fp16 (--no-round16 turns that off), which also
turns any value past fp16's 65504 into inf. Two attentions:

  A  "sdpa": transformers' SDPA (torch's CPU kernel);
  B  "perturbed": registered through AttentionInterface: q/k/v upcast to fp32, SDPA's MATH backend,
     then the output multiplied by (1 + eps * N(0, 1)), eps = --eps (1e-3: about two fp16 ulps on
     every element, more than two correct fp16 kernels differ by), on every call.

  "fa2" vs "seed": emulations in fp32 torch of the numerics of the two kernels the GPU run compares
     (PyTorch's flash SDPA: 64-key blocks, exp2; avo's seed: 32-key blocks, exp; both: online
     softmax, P rounded to fp16 before P @ V, fp16 output). At the default init its logit diff
     (0.007) matches the H100 run's sdpa-vs-avo 0.0073.

B serves the prefill only in its own greedy generation (decode steps stay on A, as in avo's
integration). A generates greedily; A and B then run one teacher-forced forward over A's
sequences. Reported per greedy step (and over every position): the top-1 minus top-2 logit margin
of A (min, 1st percentile, median), the max |logits A - logits B|, the positions whose argmax
differs (flips), positions whose margin is at or under their diff (near-ties), B's own greedy
tokens against A's, the largest |activation| anywhere (fp16 overflows at 65504), and how
degenerate the generated tokens are (distinct tokens, tokens copied from the row's prompt).

What it showed (docs/apply.md): the margin / diff ratio does not grow with init_range. With an
untied random LM head the logits, given the final hidden state, are i.i.d. Gaussian over the
vocab, so the top-1/top-2 gap is scale-free (about 1% of decisions within 0.004 sigma, one fp16
ulp of the top logit) and the diff scales with sigma too.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(r: float, args, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.heads * args.head_dim,
                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      max_position_embeddings=args.prompt_len + args.new_tokens, initializer_range=r,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0, tie_word_embeddings=args.tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval()


def flash_emulation(q, k, v, allowed, scale, block_n: int, exp2: bool):
    """FlashAttention-2's forward numerics in fp32 torch: q/k/v fp16 values, fp32 scores, an online
    softmax over key blocks of block_n (running max, rescaled fp32 accumulator), P rounded to fp16
    before P @ V, the row sum from the unrounded P, the output rounded to fp16. exp2: the scale
    folded with log2(e) and exp2 (FA2's CUDA kernel), else exp of the scaled score (avo's seed)."""
    q, k, v = (t.half().float() for t in (q, k, v))
    s = q @ k.transpose(-1, -2)
    s = s * (scale * 1.4426950408889634) if exp2 else s * scale
    s = s.masked_fill(~allowed, float("-inf"))
    ex = torch.exp2 if exp2 else torch.exp
    m = torch.full(s.shape[:-1], float("-inf"))
    l = torch.zeros(s.shape[:-1])
    acc = torch.zeros(*s.shape[:-1], v.shape[-1])
    for j in range(0, s.shape[-1], block_n):
        blk = s[..., j:j + block_n]
        m_new = torch.maximum(m, blk.amax(-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with nothing yet
        alpha = ex(m - m_safe)
        p = ex(blk - m_safe[..., None])
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[..., None] + p.half().float() @ v[..., j:j + block_n, :]
        m = m_new
    return (acc / l[..., None]).half().float()


ATTENTIONS = {  # name: (what it stands for, how)
    "sdpa": "transformers' SDPA (torch's CPU kernel, fp32)",
    "perturbed": "fp32 SDPA MATH backend, output x (1 + eps N(0,1))",
    "fa2": "FlashAttention-2 numerics: blocks of 64 keys, exp2, fp16 P (PyTorch's flash SDPA on H100)",
    "seed": "avo's seed numerics: blocks of 32 keys, exp, fp16 P (kernels/attention/mha_fwd_seed.py)",
}


def register_attentions(eps: float):
    """Register every ATTENTIONS entry but sdpa with transformers; returns a reset() for the RNG."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    gen = torch.Generator()

    def perturbed(module, query, key, value, attention_mask, **kw):
        with sdpa_kernel(SDPBackend.MATH):
            out, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                            attention_mask, **kw)
        if eps:
            out = out * (1 + eps * torch.randn(out.shape, generator=gen))
        return out.to(query.dtype), None

    def emulated(block_n: int, exp2: bool):
        def fwd(module, query, key, value, attention_mask, scaling=None, **kw):
            qn, kn = query.shape[-2], key.shape[-2]
            if attention_mask is None:  # causal, the queries being the last qn of the kn positions
                allowed = torch.ones(qn, kn, dtype=torch.bool).tril(kn - qn)
            elif attention_mask.dtype == torch.bool:
                allowed = attention_mask
            else:
                allowed = attention_mask == 0
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            out = flash_emulation(query.float(), key.float(), value.float(), allowed, scale, block_n, exp2)
            return out.to(query.dtype).transpose(1, 2).contiguous(), None
        return fwd

    fns = {"sdpa": sdpa_attention_forward, "perturbed": perturbed, "fa2": emulated(64, True),
           "seed": emulated(32, False)}
    for a in fns:
        for b in fns:
            def prefill_b(module, query, key, value, attention_mask, *, _a=fns[a], _b=fns[b], **kw):
                # as avo's integration: decode steps with a cache (fewer queries than keys) stay on A
                fn = _b if query.shape[-2] == key.shape[-2] else _a
                return fn(module, query, key, value, attention_mask, **kw)
            for name, fn in ((b, fns[b]), (f"{b}_prefill_else_{a}", prefill_b)):
                if name != "sdpa":
                    AttentionInterface.register(name, fn)
                    AttentionMaskInterface.register(name, sdpa_mask)
    return lambda: gen.manual_seed(1234)


def install_hooks(model, round16: bool) -> dict:
    """Round module outputs through fp16 (optional) and track the largest |activation|."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm
    peak = {"max_abs": 0.0, "nonfinite": 0}

    def see(t: torch.Tensor) -> torch.Tensor:
        if round16:
            t = t.half().float()
        peak["nonfinite"] += int((~torch.isfinite(t)).sum())
        peak["max_abs"] = max(peak["max_abs"], float(t.abs().max()))  # inf/nan: max_abs goes inf/nan
        return t

    def out_hook(mod, inp, out):
        if isinstance(out, tuple):
            return (see(out[0]),) + tuple(out[1:])
        return see(out)

    def down_pre(mod, inp):  # act(gate) * up, stored in fp16 on the GPU
        return (see(inp[0]),)

    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, LlamaRMSNorm, LlamaDecoderLayer)):
            m.register_forward_hook(out_hook)
        if name.endswith("mlp.down_proj"):
            m.register_forward_pre_hook(down_pre)
    return peak


def margins(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def q(x: torch.Tensor, p: float) -> float:
    return float(torch.quantile(x.flatten().double(), p))


def run(r: float, seed: int, pair: tuple[str, str], args, reset) -> dict:
    t0 = time.perf_counter()
    model = build(r, args, seed)
    peak = install_hooks(model, args.round16)
    P, N = args.prompt_len, args.new_tokens
    ids = torch.randint(1, args.vocab, (args.batch, P), generator=torch.Generator().manual_seed(seed + 1))
    mask = torch.ones_like(ids)
    a, b = pair
    res: dict = {"init_range": r, "seed": seed, "r_sqrt_hidden": r * (args.heads * args.head_dim) ** 0.5,
                 "a": a, "b": b}
    with torch.no_grad():
        model.set_attn_implementation(a)
        seq_a = model.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
        logits_a = model(seq_a).logits.float()  # teacher-forced: every position through A
        model.set_attn_implementation(b)
        reset()
        logits_b = model(seq_a).logits.float()  # ... and through B
        model.set_attn_implementation(f"{b}_prefill_else_{a}")
        reset()
        seq_b = model.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    gen_a, gen_b = seq_a[:, P:], seq_b[:, P:]
    steps = slice(P - 1, P + N - 1)  # the positions whose argmax is a greedy token
    ma, diff = margins(logits_a), (logits_a - logits_b).abs()
    ms, ds = ma[:, steps], diff[:, steps]
    flips_at_steps = int((logits_a[:, steps].argmax(-1) != logits_b[:, steps].argmax(-1)).sum())
    res.update({
        "greedy_tokens_identical": bool(torch.equal(gen_a, gen_b)),
        "tokens_differing": int((gen_a != gen_b).sum()),
        "teacher_forced_argmax_flips_at_steps": flips_at_steps,
        "teacher_forced_argmax_flips_all_positions": int((logits_a.argmax(-1) != logits_b.argmax(-1)).sum()),
        "forward_matches_generate": bool(torch.equal(logits_a[:, steps].argmax(-1), gen_a)),
        "steps_min_margin": float(ms.min()), "steps_p1_margin": q(ms, .01), "steps_median_margin": q(ms, .5),
        "steps_min_margin_per_step": [round(float(x), 4) for x in ms.min(0).values],
        "steps_max_diff": float(ds.max()),
        "all_min_margin": float(ma.min()), "all_p1_margin": q(ma, .01), "all_p01_margin": q(ma, .001),
        "all_median_margin": q(ma, .5), "all_max_diff": float(diff.max()), "all_p99_diff": q(diff.amax(-1), .99),
        "all_near_ties": int((ma <= diff.amax(-1)).sum()), "positions": ma.numel(),  # margin <= that row's diff
        "all_p1_margin_over_logit_std": q(ma, .01) / float(logits_a.std()),
        "all_max_diff_over_logit_std": float(diff.max()) / float(logits_a.std()),
        "positions_with_identical_logits": float((diff.amax(-1) == 0).float().mean()),
        "logit_std": float(logits_a.std()), "logit_max_abs": float(logits_a.abs().max()),
        "activation_max_abs": peak["max_abs"], "nonfinite_values": peak["nonfinite"],
        "distinct_generated_tokens": int(gen_a.unique().numel()), "generated_tokens": gen_a.numel(),
        "distinct_per_row": [int(row.unique().numel()) for row in gen_a],
        "generated_tokens_in_own_prompt": int(sum(torch.isin(g, p).sum() for g, p in zip(gen_a, ids))),
        "seconds": time.perf_counter() - t0,
    })
    res["margin_over_diff_steps"] = res["steps_min_margin"] / max(res["steps_max_diff"], 1e-30)
    res["margin_p01_over_diff_all"] = res["all_p01_margin"] / max(res["all_max_diff"], 1e-30)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-range", type=float, nargs="+", default=[0.02, 0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pairs", default="sdpa:perturbed,fa2:seed", help="A:B attentions to compare")
    ap.add_argument("--eps", type=float, default=1e-3, help="relative perturbation of 'perturbed'")
    ap.add_argument("--tie", action="store_true", help="tie the LM head to the embedding")
    ap.add_argument("--no-round16", dest="round16", action="store_false")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reset = register_attentions(args.eps)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    if any(len(p) != 2 or set(p) - set(ATTENTIONS) for p in pairs):
        ap.error(f"--pairs: A:B pairs of {', '.join(ATTENTIONS)}")
    for name, what in ATTENTIONS.items():
        print(f"  {name:<10} {what}")
    out = []
    print(f"{'A:B':>14} {'init':>6} {'r*sqrtH':>7} {'seed':>4} | steps: {'min marg':>8} {'p1 marg':>8} {'max diff':>8} "
          f"{'ratio':>7} {'flips':>5} {'same':>5} | all pos: {'p0.1 m':>7} {'max diff':>8} {'flips':>5} | "
          f"{'|act|max':>8} {'nonfin':>6} {'distinct':>8} {'copied':>6}", flush=True)
    for r, s, pair in ((r, s, p) for r in args.init_range for s in args.seeds for p in pairs):
        x = run(r, s, pair, args, reset)
        out.append(x)
        print(f"{':'.join(pair):>14} {r:6.3f} {x['r_sqrt_hidden']:7.2f} {s:4d} | {'':7}{x['steps_min_margin']:8.4f} "
              f"{x['steps_p1_margin']:8.4f} {x['steps_max_diff']:8.4f} {x['margin_over_diff_steps']:7.1f} "
              f"{x['teacher_forced_argmax_flips_at_steps']:5d} {str(x['greedy_tokens_identical']):>5} | "
              f"{'':9}{x['all_p01_margin']:7.4f} {x['all_max_diff']:8.4f} "
              f"{x['teacher_forced_argmax_flips_all_positions']:5d} | {x['activation_max_abs']:8.1f} "
              f"{x['nonfinite_values']:6d} {x['distinct_generated_tokens']:4d}/{x['generated_tokens']:<3d} "
              f"{x['generated_tokens_in_own_prompt']:6d}   ({x['seconds']:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": out}, indent=1))


if __name__ == "__main__":
    main()
