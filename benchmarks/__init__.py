"""Benchmark harness for jaxjac (issue 5): ``python -m benchmarks.run [--quick]``."""
