"""Benchmarks of memesys: ``python -m bench.run [--quick]`` (see bench/README.md)."""
