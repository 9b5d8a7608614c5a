"""The inbox stack fixtures (simulator + sidecar + backend on loopback): see tests/backend/harness.py."""

from tests.backend.harness import make_stack, stack

__all__ = ["make_stack", "stack"]
