"""Egress resilience sidecar: one local proxy that owns timeouts, retries, breakers, bulkheads and caching."""

__version__ = "0.1.0"
