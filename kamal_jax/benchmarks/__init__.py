"""Benchmarks: step throughput (`steps`) and the paper's experiments (see docs/BENCHMARKS.md)."""
