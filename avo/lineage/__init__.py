"""The git lineage of a run: the store (repo.py), what it records (records.py), and the crash
safety of its logs (durable.py). Format: docs/lineage.md."""
from avo.lineage.durable import LineageError
from avo.lineage.records import (AttemptRecord, GateRecord, MeasuredVersion, Measurement, Scores, Version, VersionMeta,
                                 version_message)
from avo.lineage.repo import ATTEMPTS_FILE, Lineage, branch_name, resolve_run

__all__ = ["ATTEMPTS_FILE", "AttemptRecord", "GateRecord", "Lineage", "LineageError", "MeasuredVersion", "Measurement",
           "Scores", "Version",
           "VersionMeta", "branch_name", "resolve_run", "version_message"]
