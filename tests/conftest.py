"""Shared pytest configuration."""

from hypothesis import settings

# Deterministic property tests for CI: derandomized examples, no per-example deadline
# (the first call of a NumPy routine can be slow), and a moderate number of examples.
settings.register_profile("minidiff", derandomize=True, deadline=None, max_examples=40)
settings.load_profile("minidiff")
