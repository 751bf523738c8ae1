"""Throughput benchmarks: one module per measured thing, plus the suite entry point (``python -m benchmarks``)."""
