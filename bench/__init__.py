"""Benchmarking: measurement of one cell, the matrix, result files, reports and the CLI."""
