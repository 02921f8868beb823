"""transformers integration: an attention implementation, registered through transformers'
`AttentionInterface`, that runs avo's attention artifacts.

    import avo.apply.transformers_attn as avo_attn
    avo.apply.enable("artifacts/")
    avo_attn.register()                       # adds "avo" to AttentionInterface (+ its mask function)
    model.set_attn_implementation("avo")      # or from_pretrained(..., attn_implementation="avo")

It computes exactly what transformers' `sdpa_attention_forward` computes for the same call, and
sends to avo what the tasks cover; calls without a mask (transformers builds none for a plain
causal prefill, nor for a decode step over a dynamic cache without padding):

* decode, one query token over the cache (q_len 1): `attention_gqa_decode` (MHA and GQA/MQA);
  q is the [B, Hq, 1, D] view as [B, Hq, D], the cache tensors are passed as they are (a
  DynamicCache's are contiguous: no copy), the output viewed back as [B, 1, Hq, D] (no copy);
* prefill, causal, q_len > 1: `attention_gqa_fwd` (`attention_mha_fwd` first when the heads are
  equal, which falls back to `attention_gqa_fwd`); a static cache's prefill (keys longer than the
  queries, no mask: an empty StaticCache) uses the first q_len keys, as SDPA does; non-causal
  prefill with q_len == kv_len too. The kernels take contiguous inputs: transformers' q (and k/v
  without a cache, or sliced from a static cache) is a transposed view, copied when an artifact
  serves the key (`stats()[task]['copies']`; register(copy_inputs=False) falls back instead).

Everything else goes to transformers' own SDPA path, counted as a fallback of the task it would
have gone to, by reason: a mask (padding; a static cache's decode, whose mask hides the unfilled
slots: attention_gqa_decode takes a fully valid cache), dropout, a non-default scale, attention
weights, softcap / sliding window / sinks / position bias, varlen (continuous batching) kwargs,
autograd, mismatched head counts or dims. Under torch.compile the tasks run as custom ops
(avo/apply/ops.py); fallbacks decided while tracing are not counted.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from avo.apply import runtime
from avo.apply.runtime import Applied, apply, note_fallback

TASK = "attention_mha_fwd"  # kept for callers of the first version
MHA, GQA, DECODE = "attention_mha_fwd", "attention_gqa_fwd", "attention_gqa_decode"
NAME = "avo"
_FEATURE_KWARGS = ("softcap", "sliding_window", "position_bias", "s_aux", "sinks")
_VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "cu_seqlens_q", "cu_seqlens_k")
_SPECIAL_KWARGS = frozenset(_FEATURE_KWARGS + _VARLEN_KWARGS + ("cache", "output_attentions"))
DECISIONS_MAX = 4096  # shapes remembered per dispatch table (then it starts over)
# maskless call (shapes, dtypes, device, causal, scale) -> the counts of a call avo does not serve,
# or None when avo may serve it; valid for one dispatch table (_DECIDED[0]), dropped on any other
_DECIDED: list = [None, {}]
_UNKNOWN = object()


def _sdpa(q, k, v, causal):
    """What sdpa_attention_forward runs for a maskless call (enable_gqa where the heads differ)."""
    gqa = q.shape[1] != k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=bool(causal),
                                                            scale=q.shape[-1] ** -0.5, enable_gqa=gqa)


def _make(copy_inputs: bool) -> tuple[Applied, Applied, Applied]:
    @apply(GQA, copy_inputs=copy_inputs, op_name=f"transformers_{GQA}{'' if copy_inputs else '_nocopy'}")
    def attention_gqa_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """[batch, q_heads, seq, dim] x [batch, kv_heads, seq, dim] -> [batch, q_heads, seq, dim]."""
        return _sdpa(q, k, v, causal)

    @apply(MHA, copy_inputs=copy_inputs, op_name=f"transformers_{MHA}{'' if copy_inputs else '_nocopy'}")
    def attention_mha_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """Equal heads: an attention_mha_fwd artifact, else the GQA task (group 1)."""
        return attention_gqa_fwd(q, k, v, causal)

    @apply(DECODE, copy_inputs=copy_inputs, op_name=f"transformers_{DECODE}{'' if copy_inputs else '_nocopy'}")
    def attention_gqa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """[batch, q_heads, dim] over [batch, kv_heads, kv_len, dim] -> [batch, q_heads, dim]."""
        return _sdpa(q.unsqueeze(2), k, v, False).squeeze(2)

    return attention_mha_fwd, attention_gqa_fwd, attention_gqa_decode


attention_mha_fwd, attention_gqa_fwd, attention_gqa_decode = _make(copy_inputs=True)
_STRICT: Optional[tuple] = None  # the copy_inputs=False set, made on demand
_COPY_INPUTS = True


def _functions() -> tuple[Applied, Applied, Applied]:
    global _STRICT
    if _COPY_INPUTS:
        return attention_mha_fwd, attention_gqa_fwd, attention_gqa_decode
    if _STRICT is None:
        _STRICT = _make(copy_inputs=False)
    return _STRICT


_SDPA_FORWARD: list = []


def _transformers_sdpa():
    """transformers' sdpa_attention_forward (imported once)."""
    if not _SDPA_FORWARD:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        _SDPA_FORWARD.append(sdpa_attention_forward)
    return _SDPA_FORWARD[0]


def _default_scale(scaling: Optional[float], dim: int) -> bool:
    return scaling is None or math.isclose(scaling, dim ** -0.5, rel_tol=1e-12) or \
        math.isclose(scaling, 1.0 / math.sqrt(dim), rel_tol=1e-12)


def _unsupported(module, query, key, value, attention_mask, dropout, scaling, kwargs) -> Optional[str]:
    """Why this call is outside the tasks (None when they can take it)."""
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return "transformers: autograd"
    if dropout and module.training:
        return "transformers: dropout"
    if kwargs and not _SPECIAL_KWARGS.isdisjoint(kwargs):  # the usual call passes none of them
        if kwargs.get("output_attentions"):
            return "transformers: attention weights requested"
        if any(kwargs.get(k) is not None for k in _FEATURE_KWARGS):
            return "transformers: softcap/sliding window/sinks/position bias"
        if any(kwargs.get(k) is not None for k in _VARLEN_KWARGS) or kwargs.get("cache") is not None:
            return "transformers: varlen or paged (continuous batching)"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "transformers: not [batch, heads, seq, dim]"
    b, hq, _, d = query.shape
    if key.shape[0] != b or value.shape[0] != b or key.shape[-1] != d or value.shape[-1] != d \
            or value.shape[1] != key.shape[1] or value.shape[2] != key.shape[2]:
        return "transformers: batch, head dim or k/v shapes differ"
    if key.shape[1] == 0 or hq % key.shape[1]:
        return "transformers: query heads not a multiple of kv heads"
    if d > 256:
        return "transformers: head dim above 256"
    if not (query.dtype == key.dtype == value.dtype):
        return "transformers: q/k/v dtypes differ"
    if not _default_scale(scaling, d):
        return "transformers: non-default scale"
    if attention_mask is not None:
        if query.shape[2] == 1:
            return "transformers: decode with a mask (padding, or a static cache's unfilled slots)"
        return "transformers: prefill with a mask (padding, chunked prefill or custom)"
    return None


def avo_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """AttentionInterface signature: q/k/v are [batch, heads, seq, dim]; returns
    ([batch, seq, heads, dim], None) like transformers' sdpa_attention_forward.

    A call avo does not serve costs close to nothing over transformers' SDPA: for a maskless call
    the decision (shape checks, avo's route) is kept per shape for the dispatch table in force
    (`_decision`), and such a call goes straight to `sdpa_attention_forward` with its counts."""
    if attention_mask is None and (not kwargs or _SPECIAL_KWARGS.isdisjoint(kwargs)) \
            and not (dropout and module.training) and not runtime.recording() \
            and not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)) \
            and not torch.compiler.is_compiling():
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        token = runtime.table_token()
        if _DECIDED[0] is not token:
            _DECIDED[0], _DECIDED[1] = token, {}
        memo = _DECIDED[1]
        k = (query.shape, key.shape, query.dtype, key.dtype, query.device, causal, scaling)  # v follows k
        counts = memo.get(k, _UNKNOWN)
        if counts is _UNKNOWN:
            counts = _decision(module, query, key, value, dropout, scaling, causal, kwargs, token)
            if len(memo) >= DECISIONS_MAX:
                memo.clear()
            memo[k] = counts
        if counts is not None:  # avo serves nothing here: transformers' own SDPA call, as "sdpa" makes it
            for c in counts:
                runtime.count(*c)
            return _transformers_sdpa()(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, is_causal=is_causal, **kwargs)
    return _through_avo(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)


def _plan(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs) -> tuple:
    """(why not, task, key, value, causal, mha, q_len): why is None when a task can take the call
    (key/value then sliced as SDPA slices an empty static cache's prefill)."""
    q_len = query.shape[2] if query.dim() == 4 else 0
    mha = query.dim() == 4 and key.dim() == 4 and key.shape[1] == query.shape[1]
    task = DECODE if q_len == 1 else MHA if mha else GQA
    why = _unsupported(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    kv_len = key.shape[2] if why is None else 0
    if why is None and q_len > 1 and kv_len != q_len:
        if causal and kv_len > q_len:  # an empty StaticCache's prefill: SDPA uses the first q_len keys too
            key, value = key[:, :, :q_len], value[:, :, :q_len]
        else:
            why = "transformers: kv length != query length without a mask"
    return why, task, key, value, causal, mha, q_len


def _decision(module, query, key, value, dropout, scaling, causal, kwargs, token) -> Optional[tuple]:
    """For a maskless call: the counts ((task, outcome, reason), ...) to make when no artifact
    serves it (the caller then runs SDPA itself), None when avo's dispatch must run. A table swap
    (enable/reload/disable) changes `token` and drops every decision; a key a device fault disables
    later was a "serve" decision, which the dispatch itself turns into a fallback."""
    why, task, key, value, causal, mha, q_len = _plan(module, query, key, value, None, dropout, scaling, causal,
                                                      kwargs)
    if token is None:  # avo disabled: SDPA, nothing counted
        return ()
    if why is not None:
        return ((task, "fallback", why),)
    mha_fn, gqa_fn, decode_fn = _functions()
    if q_len == 1:
        d = decode_fn.decide((query.squeeze(2), key, value))
        return None if d is None else ((DECODE,) + d,)
    dm = mha_fn.decide((query, key, value, bool(causal))) if mha else ()
    if dm is None:
        return None
    dg = gqa_fn.decide((query, key, value, bool(causal)))
    if dg is None:
        return None
    got = (((MHA,) + dm,) if mha else ()) + ((GQA,) + dg,)
    return tuple(c for c in got if c[1] != "off")


def _through_avo(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs):
    why, task, key, value, causal, mha, q_len = _plan(module, query, key, value, attention_mask, dropout, scaling,
                                                      is_causal, kwargs)
    if why is not None:
        note_fallback(task, why)
        return _transformers_sdpa()(module, query, key, value, attention_mask, dropout=dropout,
                                    scaling=scaling, is_causal=is_causal, **kwargs)
    mha_fn, gqa_fn, decode_fn = _functions()
    b, hq, _, d = query.shape
    if q_len == 1:
        out = decode_fn(query.squeeze(2), key, value)  # [B, Hq, D]
        return out.reshape(b, 1, hq, d), None
    fn = mha_fn if mha else gqa_fn
    out = fn(query, key, value, bool(causal))  # [B, Hq, S, D]
    return out.transpose(1, 2).contiguous(), None  # as SDPA's path: one copy into [B, S, Hq, D]


def register(name: str = NAME, copy_inputs: bool = True) -> str:
    """Register the avo attention (and, so transformers builds masks for it, SDPA's mask function
    under the same name). Returns the name to pass as attn_implementation. copy_inputs=False:
    a non-contiguous q/k/v falls back to SDPA instead of being copied for the kernel."""
    global _COPY_INPUTS
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    _COPY_INPUTS = bool(copy_inputs)
    _functions()
    AttentionInterface.register(name, avo_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
