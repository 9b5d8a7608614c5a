"""Benchmarks for the egress sidecar: `python -m bench.overhead` measures what the sidecar costs."""
