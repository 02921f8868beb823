"""transformers integration: an attention implementation, registered through transformers'
`AttentionInterface`, that runs avo's `attention_mha_fwd` artifacts.

    import avo.apply.transformers_attn as avo_attn
    avo.apply.enable("artifacts/")
    avo_attn.register()                       # adds "avo" to AttentionInterface (+ its mask function)
    model.set_attn_implementation("avo")      # or from_pretrained(..., attn_implementation="avo")

What the task covers goes to the artifact: MHA (as many KV heads as query heads), queries = keys
(prefill without a KV-cache prefix), no mask other than plain causal, no dropout, the default
1/sqrt(d) scale, no softcap / sliding window / attention weights, no autograd. Everything else
(GQA, padding masks, decode steps with a cache, training) goes to transformers' SDPA path and is
counted as a fallback of `attention_mha_fwd` in `avo.apply.stats()`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from avo.apply.runtime import apply, note_fallback

TASK = "attention_mha_fwd"
NAME = "avo"
_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "position_bias", "s_aux", "sinks")


@apply(TASK)
def attention_mha_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """The reference semantics (and the fallback): [batch, heads, seq, dim] in, same out."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _unsupported(module, query, key, value, attention_mask, dropout, scaling, kwargs) -> Optional[str]:
    """Why this call is outside the task (None when the artifact can take it)."""
    if attention_mask is not None:
        return "transformers: attention mask (padding or custom)"
    if dropout and module.training:
        return "transformers: dropout"
    if key.shape[1] != query.shape[1]:
        return "transformers: GQA/MQA heads"
    if key.shape[2] != query.shape[2]:
        return "transformers: kv length != query length (decode with a cache)"
    if scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-6):
        return "transformers: non-default scale"
    if kwargs.get("output_attentions"):
        return "transformers: attention weights requested"
    if any(kwargs.get(k) is not None for k in _UNSUPPORTED_KWARGS):
        return "transformers: softcap/sliding window/bias"
    if kwargs.get("cache") is not None:
        return "transformers: paged cache"
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return "transformers: autograd"
    return None


def avo_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """AttentionInterface signature: q/k/v are [batch, heads, seq, dim]; returns
    ([batch, seq, heads, dim], None) like transformers' sdpa_attention_forward."""
    why = _unsupported(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if why is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        note_fallback(TASK, why)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and query.shape[2] > 1  # one query row: causal and full are the same
    out = attention_mha_fwd(query.contiguous(), key.contiguous(), value.contiguous(), causal)
    return out.transpose(1, 2).contiguous(), None


def register(name: str = NAME) -> str:
    """Register the avo attention (and, so transformers builds masks for it, SDPA's mask function
    under the same name). Returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(name, avo_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
