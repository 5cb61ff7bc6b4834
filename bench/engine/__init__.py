"""Measuring one cell: build, lower and compile ahead of time, read XLA's cost and memory
analyses, time steady-state steps, and the device facts (peaks, meshes) the numbers need."""
