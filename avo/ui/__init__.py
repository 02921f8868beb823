"""What people see: `avo evolve`'s start lines, live progress and summary (run.py, progress.py),
`avo lineage` tables (lineage_view.py), `avo report` (report.py, report_html.py), and the marked
sections of docs/benchmarks.md that the bench scripts rewrite (doc_section.py)."""
