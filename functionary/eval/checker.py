"""BFCL's AST checker semantics for Python categories, written once.

`bfcl-eval`'s own checker (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`) cannot be imported
without its pinned dependencies: it imports BFCL's model registry, which imports every provider
SDK. This module implements the same rules (read from that file; the tests compare the two on many
outputs): the function name; required parameters present; no parameter the function or the
possible answer lacks; each value's type (an int is accepted for a float; a value of the possible
answer's type counts as a "variable") and value among the possible answers, strings compared after
BFCL's normalisation (no spaces or `,./-_*^`, lower case, `'` -> `"`), lists and dicts element-wise;
an optional parameter may be left out only where the possible answers include `""`; parallel calls
in any order; `multiple` = one call of the right function; `irrelevance` = no call.

Its quirks are kept on purpose (the score must be BFCL's), e.g. nested types are checked one level
deep, and `bool` is not an `int`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

# BFCL's PYTHON_TYPE_MAPPING.
PYTHON_TYPES: dict[str, type] = {
    "string": str, "integer": int, "float": float, "boolean": bool,
    "array": list, "tuple": list, "dict": dict, "any": str,
}
NESTED_TYPES = ("array", "tuple")  # types whose items are checked too (one level deep)


class CheckFailed(Exception):
    """A call does not match the possible answer; the message says why (BFCL's wording)."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    error: Optional[str] = None


# ---- value checks ---------------------------------------------------------------------------

def standardize_string(text: str) -> str:
    """BFCL's normalisation: `April 1, 2024` == `april 1 2024`."""
    return re.sub(r"[ \,\.\/\-\_\*\^]", "", text).lower().replace("'", '"')


def _answer_type(possible: list) -> Optional[type]:
    for answer in possible:
        if answer != "":  # "" marks an optional parameter
            return type(answer)
    return None


def _check_type(param: str, value: Any, possible: list, expected: type, nested: Optional[type]) -> bool:
    """Raise CheckFailed on a wrong type; return True when the value is a "variable" (it has the
    possible answer's type rather than the declared one, so only equality is checked)."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type != expected
    if type(value) == expected:  # noqa: E721 (exact type, as BFCL: True is not an int)
        if nested is None:
            return is_variable
        for answer in possible:
            if type(answer) != list:  # noqa: E721 ("" or a scalar: nothing to compare the items with)
                return is_variable
            try:
                for item in value:
                    _check_type(param, item, answer, nested, None)
            except CheckFailed:
                continue
            return is_variable
        raise CheckFailed(f"Nested type checking failed for parameter {param!r}. Parameter value: {value!r}.")
    if answer_type is not None and type(value) == answer_type:  # noqa: E721
        return True
    raise CheckFailed(f"Incorrect type for parameter {param!r}. Expected type {expected.__name__}, "
                      f"got {type(value).__name__}. Parameter value: {value!r}.")


def _check_string(param: str, value: str, possible: list) -> None:
    allowed = [standardize_string(a) for a in possible if type(a) == str]  # noqa: E721
    if standardize_string(value) not in allowed:
        raise CheckFailed(f"Invalid value for parameter {param!r}: {value!r}. Expected one of {possible}.")


def _standardize_items(values: Any) -> list:
    return [standardize_string(v) if type(v) == str else v for v in values]  # noqa: E721


def _check_list(param: str, value: list, possible: list) -> None:
    if _standardize_items(value) not in [_standardize_items(a) for a in possible]:
        raise CheckFailed(f"Invalid value for parameter {param!r}: {value!r}. Expected one of {possible}.")


def _dict_matches(value: dict, answer: dict) -> Optional[str]:
    """None when `value` matches one possible dict; else why not."""
    for key, item in value.items():
        if key not in answer:
            return f"Unexpected dict key parameter: {key!r}."
        item = standardize_string(item) if type(item) == str else item  # noqa: E721
        if item not in _standardize_items(answer[key]):
            return f"Invalid value for parameter {key!r}: {item!r}."
    for key, allowed in answer.items():
        if key not in value and "" not in allowed:
            return f"Missing dict key parameter: {key!r}."
    return None


def _check_dict(param: str, value: dict, possible: list) -> None:
    why = "No possible answer for a dict."
    for answer in possible:
        if answer == "":
            continue
        why = _dict_matches(value, answer)
        if why is None:
            return
    raise CheckFailed(why)


def _check_list_of_dicts(param: str, value: list, possible: list) -> None:
    why = "No possible answer for a list of dicts."
    for answer in possible:
        if len(value) != len(answer):
            why = "Wrong number of dictionaries in the list."
            continue
        for item, expected in zip(value, answer):
            why = _dict_matches(item, expected) if type(item) == dict else "Not a dict."  # noqa: E721
            if why is not None:
                break
        else:
            return
    raise CheckFailed(why)


# ---- one call ----------------------------------------------------------------------------------

def check_call(function: dict, call: dict, answer: dict) -> None:
    """One decoded call `{name: {param: value}}` against one function doc and one possible answer
    `{name: {param: [allowed values]}}`; raises CheckFailed."""
    possible = next(iter(answer.values()))
    name = function["name"]
    properties = function["parameters"]["properties"]
    if name not in call:
        raise CheckFailed(f"Function name {name!r} not found in model output.")
    arguments = call[name]
    for param in function["parameters"].get("required", []):
        if param not in arguments:
            raise CheckFailed(f"Missing required parameter: {param!r}.")
    for param, value in arguments.items():
        if param not in properties or param not in possible:
            raise CheckFailed(f"Unexpected parameter: {param!r}.")
        declared = properties[param]["type"]
        expected = PYTHON_TYPES[declared]
        nested = PYTHON_TYPES[properties[param]["items"]["type"]] if declared in NESTED_TYPES else None
        if declared == "float" and type(value) == int:  # noqa: E721 (Python widens an int)
            value = float(value)
        is_variable = _check_type(param, value, possible[param], expected, nested)
        if not is_variable:
            if expected == dict:
                _check_dict(param, value, possible[param])
                continue
            if expected == list and nested == dict:
                _check_list_of_dicts(param, value, possible[param])
                continue
            if expected == str:
                _check_string(param, value, possible[param])
                continue
            if expected == list:
                _check_list(param, value, possible[param])
                continue
        if value not in possible[param]:
            raise CheckFailed(f"Invalid value for parameter {param!r}: {value!r}. Expected one of {possible[param]}.")
    for param, allowed in possible.items():
        if param not in arguments and "" not in allowed:
            raise CheckFailed(f"Optional parameter {param!r} not provided and not marked as optional.")


def _function_named(functions: list, name: str) -> dict:
    for function in functions:
        if function["name"] == name:
            return function
    raise CheckFailed(f"The possible answer names {name!r}, which is not among the functions.")


def check_calls(category: str, functions: list, calls: list, possible_answer: list) -> None:
    """All decoded calls of one answer against BFCL's possible answer, per the category's rule."""
    if len(calls) != len(possible_answer):
        raise CheckFailed(f"Wrong number of functions: {len(calls)} instead of {len(possible_answer)}.")
    if "parallel" in category:  # any order: each expected call matches one distinct model call
        unmatched = list(range(len(calls)))
        for k, answer in enumerate(possible_answer):
            function = _function_named(functions, next(iter(answer)))
            errors = []
            for index in unmatched:
                try:
                    check_call(function, calls[index], answer)
                except CheckFailed as exc:
                    errors.append(str(exc))
                    continue
                unmatched.remove(index)
                break
            else:
                raise CheckFailed(f"No call matches possible answer {k}: {'; '.join(errors)}")
        return
    if "multiple" in category:  # one call, of the function the possible answer names
        check_call(_function_named(functions, next(iter(possible_answer[0]))), calls[0], possible_answer[0])
        return
    check_call(functions[0], calls[0], possible_answer[0])  # simple: BFCL checks the first function


# ---- a whole answer ----------------------------------------------------------------------------

class DecodeFailed(Exception):
    """The answer is not a list of function calls (BFCL's decode_ast would raise)."""


def decode_message(message: dict, original_name: Any = None) -> list:
    """An OpenAI assistant message -> BFCL's decoded form `[{name: {param: value}}, ...]`.

    As BFCL's OpenAI handler: without tool calls the content is the answer, which decodes only
    when empty (to no call); each call's arguments must be JSON. `original_name` maps an OpenAI
    function name back to BFCL's."""
    tool_calls = message.get("tool_calls") or []
    if not tool_calls:
        if message.get("content") == "":
            return []
        raise DecodeFailed("The answer has no function call.")
    decoded = []
    for call in tool_calls:
        function = call.get("function") or {}
        name = function.get("name", "")
        if original_name is not None:
            name = original_name(name)
        try:
            arguments = json.loads(function.get("arguments") or "")
        except (json.JSONDecodeError, TypeError) as exc:
            raise DecodeFailed(f"The arguments of {name!r} are not JSON: {exc}") from None
        decoded.append({name: arguments})
    return decoded


def is_call_list(decoded: Any) -> bool:
    """BFCL's is_function_calling_format_output: `[{name: {...}}, ...]`."""
    return type(decoded) == list and all(  # noqa: E721
        type(item) == dict and len(item) == 1 and type(next(iter(item.values()))) == dict  # noqa: E721
        for item in decoded)


def contains_call(decoded: list) -> bool:
    """BFCL's relevance rule: a call list that is not empty (nor one empty call)."""
    return is_call_list(decoded) and len(decoded) > 0 and not (len(decoded) == 1 and len(decoded[0]) == 0)


def score_answer(category: str, functions: list, message: dict, possible_answer: Optional[list],
                 original_name: Any = None) -> tuple[Verdict, list]:
    """The verdict on one single-turn answer and its decoded calls (for the report)."""
    try:
        decoded = decode_message(message, original_name)
    except DecodeFailed as exc:
        if "relevance" in category:  # irrelevance, live_irrelevance, live_relevance
            return Verdict("irrelevance" in category, None if "irrelevance" in category else str(exc)), []
        return Verdict(False, str(exc)), []
    if "relevance" in category:
        called = contains_call(decoded)
        if "irrelevance" in category:
            return Verdict(not called, "A function was called." if called else None), decoded
        return Verdict(called, None if called else "No function was called."), decoded
    if not is_call_list(decoded):
        return Verdict(False, "The arguments of a call are not a JSON object."), decoded
    try:
        check_calls(category, functions, decoded, possible_answer or [])
    except CheckFailed as exc:
        return Verdict(False, str(exc)), decoded
    except (KeyError, TypeError, AttributeError) as exc:  # a shape BFCL's checker would crash on
        return Verdict(False, f"Cannot check this answer: {exc!r}"), decoded
    return Verdict(True), decoded
