"""xgrammar integration: route `xgrammar.apply_token_bitmask_inplace` to avo's `grammar_bitmask`
artifacts (the task is that function's semantics).

    import avo.apply.xgrammar_bitmask as avo_xgr
    avo.apply.enable("artifacts/")
    avo_xgr.install()     # patches xgrammar.apply_token_bitmask_inplace (module attributes)

Engines that call `xgr.apply_token_bitmask_inplace(...)` through the module pick it up; code that
bound the function earlier (`from xgrammar import apply_token_bitmask_inplace`) keeps xgrammar's
own, so install() before the engine imports it, or call `avo_xgr.apply_token_bitmask_inplace`.
Calls outside the task (an explicit backend, a padded vocab_size, a bitmask narrower or wider than
ceil(vocab / 32), 1-D logits) go to xgrammar's own kernel and count as fallbacks.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from avo.apply.runtime import apply, note_fallback

TASK = "grammar_bitmask"
REPLACES = "xgrammar"  # the call this integration replaces: speed records must be measured against it
_ORIGINAL: Optional[Callable] = None  # xgrammar's function while install() is in effect


def _xgrammar_apply() -> Callable:
    if _ORIGINAL is not None:
        return _ORIGINAL
    import xgrammar.matcher
    return xgrammar.matcher.apply_token_bitmask_inplace


@apply(TASK, replaces=REPLACES)
def grammar_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, indices: torch.Tensor) -> None:
    """The task's semantics, with xgrammar's own kernel as the fallback: mask rows `indices` of
    logits in place where the bitmask bit is 0."""
    _xgrammar_apply()(logits, bitmask, indices=indices.tolist())


def apply_token_bitmask_inplace(logits: torch.Tensor, bitmask: torch.Tensor, *, vocab_size: Optional[int] = None,
                                indices: Optional[List[int]] = None, backend: str = "auto") -> None:
    """Drop-in for xgrammar.apply_token_bitmask_inplace."""
    why = None
    if backend != "auto":
        why = "xgrammar: explicit backend"
    elif logits.dim() != 2 or bitmask.dim() != 2:
        why = "xgrammar: logits or bitmask not 2-D"
    elif vocab_size is not None and vocab_size != logits.shape[-1]:
        why = "xgrammar: vocab_size != logits width (padded vocab)"
    elif bitmask.shape[-1] != (logits.shape[-1] + 31) // 32:
        why = "xgrammar: bitmask width != ceil(vocab / 32)"
    elif bitmask.device != logits.device:
        why = "xgrammar: logits and bitmask on different devices"
    if why is not None:
        note_fallback(TASK, why)
        _xgrammar_apply()(logits, bitmask, vocab_size=vocab_size, indices=indices, backend=backend)
        return
    if indices is None:
        rows = torch.arange(logits.shape[0], dtype=torch.int32, device=logits.device)
    else:
        rows = torch.tensor(list(indices), dtype=torch.int32, device=logits.device)
    grammar_bitmask(logits, bitmask, rows)


def install() -> None:
    """Patch xgrammar's module attributes to route through avo (idempotent)."""
    global _ORIGINAL
    import xgrammar
    import xgrammar.matcher
    if _ORIGINAL is None:
        _ORIGINAL = xgrammar.matcher.apply_token_bitmask_inplace
    xgrammar.apply_token_bitmask_inplace = apply_token_bitmask_inplace
    xgrammar.matcher.apply_token_bitmask_inplace = apply_token_bitmask_inplace


def uninstall() -> None:
    """Restore xgrammar's own function."""
    global _ORIGINAL
    if _ORIGINAL is None:
        return
    import xgrammar
    import xgrammar.matcher
    xgrammar.apply_token_bitmask_inplace = _ORIGINAL
    xgrammar.matcher.apply_token_bitmask_inplace = _ORIGINAL
    _ORIGINAL = None


def installed() -> bool:
    return _ORIGINAL is not None
