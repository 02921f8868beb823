"""The evaluator. Only names that readers outside the harness need without importing torch live here."""

# EvalReport.phase_s keys: the worker's phases in order, then the runner's work inside them.
HARNESS_PHASES = ("import", "compile", "check", "time")
RUNNER_WORK = ("reference", "compare")
