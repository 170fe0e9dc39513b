"""Benchmarks: step throughput (`steps`) and the paper's experiments (see docs/BENCHMARKS.md).

A tool on top of the core: it imports the core only through `kamal_jax.api`, and the core never
imports it."""
