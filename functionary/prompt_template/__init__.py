"""Functionary prompt templates: render conversations byte-exactly, parse and stream completions.

Pure Python: importing this package never imports an engine or a web framework.
"""
from __future__ import annotations

from typing import Any, Optional

from .detect import FUNCTIONARY_VERSIONS, detect_format, detect_version
from .errors import PromptError
from .formats import FORMATS
from .inference import InferencePrompt, build_inference_prompt
from .template import PromptTemplate

VERSIONS: tuple[str, ...] = tuple(FORMATS)
_TEMPLATES = {version: PromptTemplate(fmt) for version, fmt in FORMATS.items()}


def get_prompt_template_by_version(version: str) -> PromptTemplate:
    """The template of a format version: one of `VERSIONS`."""
    try:
        return _TEMPLATES[version]
    except KeyError:
        raise PromptError(
            f"Unknown prompt template version {version!r}; known: {', '.join(VERSIONS)}.", "version"
        ) from None


def get_prompt_template_from_tokenizer(tokenizer: Any, version: Optional[str] = None) -> PromptTemplate:
    """The template for a tokenizer: `version` if given, else detected from the tokenizer
    (`detect_format`: a Functionary format, or the tool format the model's own template teaches).

    Raises `PromptError` when the tokenizer names no format.
    """
    if version is None:
        version = detect_format(tokenizer)
        if version is None:
            raise PromptError("Cannot detect prompt template based on tokenizer; pass a version explicitly.")
    return get_prompt_template_by_version(version)


__all__ = [
    "VERSIONS", "PromptTemplate", "PromptError", "InferencePrompt", "build_inference_prompt",
    "get_prompt_template_by_version", "get_prompt_template_from_tokenizer", "detect_version", "detect_format",
    "FUNCTIONARY_VERSIONS",
]
