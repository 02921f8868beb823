"""The winners shipped under kernels/<family>/evolved/: each is a valid artifact (read_artifact checks
the manifest, the sources' sha256 and that every trace PASSED), names the H100 lineage commit it came
from, imports through avo.apply, and is still correct on its task's CPU workloads in the Triton
interpreter: the evaluator's full check, so an edit to a task's reference or inputs that the shipped
kernels no longer meet fails here, not in a user's engine. Gluon artifacts (Hopper only) have no
interpreter: tests/test_gluon_compile.py compiles each for sm_90 instead.

Each is exactly what `avo export RUN --task T --ship DIR` writes: re-exported here, it gives the same
bytes, and one that carries its lineage commit (lineage/) hashes back to that commit."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from avo.apply.artifact import find_artifacts, load_entry, read_artifact, verify_provenance
from avo.apply.export import reexport_diff
from avo.schema import EvaluationStatus
from avo.tasks import load_task

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
SHIPPED = find_artifacts(KERNELS)
# Exported before artifacts kept their lineage commit: those lineages lived on lent GPU machines and
# are gone, so these are re-checked against their own kernel and traces only. One re-shipped from a
# new lineage (`avo export RUN --task T --ship DIR`) carries lineage/ and leaves this list.
WITHOUT_LINEAGE_RECORD = {"attention/gqa_decode_h100", "attention/gqa_fwd_gluon_h100", "attention/gqa_fwd_h100",
                          "attention/mha_fwd_gluon_h100", "attention/mha_fwd_h100", "grammar/bitmask_h100",
                          "layout/transpose2d_h100", "megakernel/decode_layer_h100"}


def _id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.name}"


def test_every_kernel_family_ships_an_evolved_artifact():
    assert {p.relative_to(KERNELS).parts[0] for p in SHIPPED} == {"grammar", "attention", "layout", "megakernel"}
    assert all(p.parent.name == "evolved" and p.name.endswith("_h100") for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_shipped_artifact_is_what_avo_export_writes(path):
    assert reexport_diff(path) == []
    if (path / "lineage").is_dir():
        verify_provenance(read_artifact(path))
        assert _id(path) not in WITHOUT_LINEAGE_RECORD, "it has its lineage record now: take it off the list"
    else:
        assert _id(path) in WITHOUT_LINEAGE_RECORD, "ship winners with `avo export RUN --task T --ship DIR`"


def test_the_list_of_artifacts_without_a_lineage_record_only_names_shipped_ones():
    assert WITHOUT_LINEAGE_RECORD <= {_id(p) for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_shipped_artifact_is_valid_and_passes_the_interpreter_evaluation(path, quick_evaluator):
    art = read_artifact(path)
    m = art.manifest
    assert m.device_mode == "cuda" and "H100" in m.hardware and re.fullmatch(r"[0-9a-f]{40}", m.commit)
    assert m.keys and all(k.latency_ms > 0 and k.workload.startswith("gpu_") for k in m.keys)  # vs a fast peer for attention: speedup may be < 1
    assert callable(load_entry(art))
    if "triton.experimental import gluon" in art.solution.sources[0].content:
        return  # GPU only: compiled for sm_90 by test_gluon_compile.py::test_shipped_gluon_artifact_compiles
    rep = quick_evaluator.evaluate(load_task(m.task), art.solution)
    assert rep.status == EvaluationStatus.PASSED and rep.traces, rep.message
