"""Shared pytest configuration."""

import pytest
from hypothesis import settings

from minidiff.backend import performance_settings

# Deterministic property tests for CI: derandomized examples, no per-example deadline
# (the first call of a NumPy routine can be slow), and a moderate number of examples.
settings.register_profile("minidiff", derandomize=True, deadline=None, max_examples=40)
settings.load_profile("minidiff")


@pytest.fixture(autouse=True, scope="session")
def _tuned_as_the_command_line_runs():
    """The suite runs as ``python -m minidiff`` does, inside ``performance_settings()``: without
    it, BLAS's threads and the convolutions' chunk workers contend for the cores (the
    tests of what importing minidiff leaves alone run in fresh processes)."""
    with performance_settings():
        yield
