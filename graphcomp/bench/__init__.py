"""Benchmark tooling: latency, memory, size and accuracy of original vs compressed."""
