"""BFCL's own AST checker, loaded for tests as an independent oracle for `functionary.eval.checker`.

`bfcl_eval.eval_checker.ast_eval.ast_checker` imports `bfcl_eval.constants.model_config`, which
imports every provider SDK BFCL supports (anthropic, cohere, google-genai, ...; none installed
here). The checker only reads `MODEL_CONFIG_MAPPING[model].underscore_to_dot` from it, so a
one-entry stand-in for that module is enough to run BFCL's checker code unchanged.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

REFERENCE_MODEL = "reference-model"  # the model name the stand-in registry knows


@dataclass
class _Config:
    underscore_to_dot: bool = False  # our harness maps names back itself; compare original names


def bfcl_ast_checker():
    """(ast_checker, Language) from the installed bfcl-eval package."""
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stand_in = types.ModuleType(name)
        stand_in.MODEL_CONFIG_MAPPING = {REFERENCE_MODEL: _Config()}
        sys.modules[name] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker, Language


def bfcl_verdict(category: str, functions: list, decoded: list, possible_answer: list) -> bool:
    """BFCL's verdict on decoded calls, as its eval runner reaches it for an AST category."""
    ast_checker, language = bfcl_ast_checker()
    return bool(ast_checker(functions, decoded, possible_answer, language.PYTHON, category, REFERENCE_MODEL)["valid"])
