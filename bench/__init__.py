"""Benchmark suite: each figure measured beside its floor in the same run."""
