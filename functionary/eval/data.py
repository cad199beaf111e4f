"""BFCL test entries and possible answers, read from the installed `bfcl-eval` package.

The files are JSON lines inside the package (`bfcl_eval/data/`); we read them directly instead of
importing `bfcl_eval.utils`, which creates result folders and lock files next to the package when
imported. Nothing is downloaded.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

VERSION_PREFIX = "BFCL_v4"

# Categories scored by the AST checker (Python semantics), by relevance, or by execution.
AST_CATEGORIES = (
    "simple_python", "multiple", "parallel", "parallel_multiple",
    "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
)
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
MULTI_TURN_CATEGORIES = ("multi_turn_base",)
CATEGORIES = AST_CATEGORIES + RELEVANCE_CATEGORIES + MULTI_TURN_CATEGORIES

# BFCL appends this to every function description of a Python category (utils._get_language_specific_hint).
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."


class DataError(Exception):
    """The BFCL data cannot be read (package missing, unknown category)."""


@dataclass(frozen=True)
class Entry:
    """One BFCL test entry: its question turns, functions (BFCL's own format) and ground truth."""

    id: str
    category: str
    turns: list  # list of turns, each a list of chat messages
    functions: list  # BFCL function docs (Python-style type names)
    possible_answer: Optional[list] = None  # AST categories: [{name: {param: [allowed values]}}]
    ground_truth: Optional[list] = None  # multi-turn: per turn, the list of call strings
    initial_config: dict = field(default_factory=dict)
    involved_classes: list = field(default_factory=list)


def package_dir() -> Path:
    """Where `bfcl_eval` is installed (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the BFCL data is not installed: pip install --no-deps 'bfcl-eval==2026.3.23' "
                        "(see the `eval` extra in pyproject.toml)")
    return Path(list(spec.submodule_search_locations)[0])


def _read_lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _multi_turn_functions(involved_classes: list[str], data: Path) -> list[dict]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    functions: list[dict] = []
    for name in involved_classes:
        functions.extend(_read_lines(data / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[name]))
    return functions


def load_category(category: str) -> list[Entry]:
    """Every entry of one category, in the package's order, with BFCL's Python hint added."""
    if category not in CATEGORIES:
        raise DataError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    data = package_dir() / "data"
    questions = _read_lines(data / f"{VERSION_PREFIX}_{category}.json")
    answers: dict[str, dict] = {}
    answer_file = data / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
    if answer_file.exists():
        answers = {a["id"]: a for a in _read_lines(answer_file)}
    entries = []
    for q in questions:
        if category in MULTI_TURN_CATEGORIES:
            functions = _multi_turn_functions(q["involved_classes"], data)
        else:
            functions = copy.deepcopy(q["function"])
        for function in functions:
            function["description"] = function.get("description", "") + PYTHON_HINT
        answer = answers.get(q["id"], {}).get("ground_truth")
        entries.append(Entry(
            id=q["id"], category=category, turns=q["question"], functions=functions,
            possible_answer=answer if category in AST_CATEGORIES else None,
            ground_truth=answer if category in MULTI_TURN_CATEGORIES else None,
            initial_config=q.get("initial_config", {}), involved_classes=q.get("involved_classes", []),
        ))
    return entries


def parse_categories(text: str) -> list[str]:
    """`a,b,c` -> the list, each checked (DataError names an unknown one)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise DataError("no category given")
    for name in names:
        if name not in CATEGORIES:
            raise DataError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}")
    return list(dict.fromkeys(names))


