"""Evaluation suites and speed benchmarks."""
