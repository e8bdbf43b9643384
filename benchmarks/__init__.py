"""Benchmark harness for jaxjac: ``python -m benchmarks.run [--quick]``."""
