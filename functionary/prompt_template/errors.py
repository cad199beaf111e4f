"""Errors the template layer raises for input it cannot render (mapped to HTTP 400 by the server)."""
from __future__ import annotations

from typing import Optional


class PromptError(ValueError):
    """A request that cannot be turned into a prompt; `param` names the offending field."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
