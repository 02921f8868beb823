"""The evaluator. Only names that readers outside the harness need without importing torch live here."""

# EvalReport.phase_s keys: the worker's phases in order, then the runner's work inside them.
HARNESS_PHASES = ("spawn", "import", "build", "compile", "check", "time")  # spawn: waiting for a worker to start
RUNNER_WORK = ("reference", "compare")
