"""avo.apply: run evolved kernels inside real inference code.

    import avo

    @avo.apply("grammar_bitmask")
    def apply_bitmask(logits, bitmask, indices): ...   # the reference; the fallback

    avo.apply.enable("artifacts/")   # load exported artifacts (`avo export RUN --out artifacts`)
    avo.apply.reload()               # hot swap after a new export
    avo.apply.stats()                # hits / misses / fallbacks / errors per task
    with avo.apply.record("recorded/"): ...   # the shapes an engine serves, as workloads

`avo.apply` is this package made callable: `avo.apply("task")` is `avo.apply.apply("task")`.
"""
import sys
import types

from avo.apply.artifact import (Artifact, ArtifactError, ArtifactManifest, ArtifactMeta, KeyStat,
                                find_artifacts, load_entry, read_artifact, write_artifact)
from avo.apply.faults import DeviceFault
from avo.apply.record import Recorder, RecordError
from avo.apply.runtime import (Applied, apply, disable, enable, enabled, loaded, op, record, reload, stats,
                               synchronize)

__all__ = ["apply", "enable", "disable", "reload", "stats", "enabled", "loaded", "record", "synchronize", "op",
           "Applied", "DeviceFault", "Recorder", "RecordError",
           "Artifact", "ArtifactError", "ArtifactManifest", "ArtifactMeta", "KeyStat",
           "find_artifacts", "load_entry", "read_artifact", "write_artifact"]


class _CallableModule(types.ModuleType):
    """A module can't be called; this one can, so `@avo.apply("task")` reads like the docs."""

    def __call__(self, task: str, **kwargs):
        return apply(task, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
