"""Errors of the grammar layer."""
from __future__ import annotations


class GrammarError(ValueError):
    """A constraint spec that cannot be compiled (unknown version, bad tool_choice, ...)."""


class GrammarViolation(ValueError):
    """Text or a token that the constraint does not allow at this point."""
