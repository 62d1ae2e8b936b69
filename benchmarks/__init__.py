"""Benchmarks of DESIGN §7: ``python -m benchmarks`` (see benchmarks/run.py)."""
