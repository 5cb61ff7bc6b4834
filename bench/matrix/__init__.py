"""The benchmark matrix: which cells to run, the pytest-benchmark suite that times them, and
the results file it writes (resume, merge, flatten)."""
