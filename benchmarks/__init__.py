"""Reproducible throughput and memory benchmarks: every figure is a ratio against a reference
measured in the same command (``python -m benchmarks.run``, ``make bench``)."""
