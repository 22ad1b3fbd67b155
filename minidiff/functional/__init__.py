"""Differentiable ops with PyTorch names and semantics, each a Function with forward and
backward side by side. Grouped by kind; everything is importable from here."""
from .elementwise import *  # noqa: F401,F403
