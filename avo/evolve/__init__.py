"""The evolution: a run's state (state.py, resolved from setup.py), one attempt shared by both
backends (attempt.py: judge through gate.py, settle, record), the supervisor (supervision.py),
stop signals (stop.py) and the local loop (loop.py). The Ray backend (avo/ray/) drives the same
state and attempt functions; what a run prints lives in avo/ui/."""
