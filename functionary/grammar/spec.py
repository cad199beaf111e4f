"""What a request asks the grammar to enforce: a small, JSON-serialisable spec.

The spec crosses process boundaries (vLLM's engine core may run in another process), so it is
plain JSON: ``{"version", "tools", "tool_choice", "parallel_tool_calls"?}``. `ConstraintSpec`
is its validated, hashable form; `digest` keys the compiled-constraint cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import GrammarError

#: `SamplingParams.extra_args` key (HTTP: `vllm_xargs`) that carries the spec to the processor.
CONSTRAINT_KEY = "functionary_constraint"

ToolChoice = Union[str, Mapping[str, Any]]
_MODES = ("auto", "none", "required")


@dataclass(frozen=True)
class ConstraintSpec:
    """A validated constraint request. `functions` keeps the tools' order.

    `tool_choice` is "auto" | "none" | "required" or the name of the forced function.
    """

    version: str
    functions: tuple[tuple[str, str], ...]  # (name, parameters schema as JSON, key order kept)
    tool_choice: str
    named: bool = False  # tool_choice names a function
    code_interpreter: bool = False
    parallel: bool = True
    digest: str = field(default="", compare=False)

    @property
    def function_names(self) -> list[str]:
        return [name for name, _ in self.functions]

    def parameters(self, name: str) -> Optional[dict]:
        for fname, schema in self.functions:
            if fname == name:
                return json.loads(schema)
        return None

    @property
    def tool_choice_object(self) -> ToolChoice:
        """The tool_choice in OpenAI form (what `Format.prefix_for` takes)."""
        if self.named:
            return {"type": "function", "function": {"name": self.tool_choice}}
        return self.tool_choice

    def to_json(self) -> dict:
        tools: list[dict] = [
            {"type": "function", "function": {"name": n, "parameters": json.loads(s)}} for n, s in self.functions
        ]
        if self.code_interpreter:
            tools.append({"type": "code_interpreter"})
        return {
            "version": self.version,
            "tools": tools,
            "tool_choice": self.tool_choice_object,
            "parallel_tool_calls": self.parallel,
        }


def _choice(value: Any) -> tuple[str, bool]:
    if value is None:
        return "auto", False
    if isinstance(value, str):
        if value not in _MODES:
            raise GrammarError(f"tool_choice must be one of {', '.join(_MODES)} or name a function, got {value!r}")
        return value, False
    if isinstance(value, Mapping):
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else value.get("name")
        if isinstance(name, str) and name:
            return name, True
    raise GrammarError(f"tool_choice names no function: {value!r}")


def _functions(tools: Any) -> tuple[list[tuple[str, Any]], bool]:
    if tools is None:
        return [], False
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise GrammarError("tools must be a list")
    out: list[tuple[str, Any]] = []
    code = False
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise GrammarError(f"tools[{i}] must be an object")
        if tool.get("type") == "code_interpreter":
            code = True
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool  # legacy `functions`
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise GrammarError(f"tools[{i}] has no function name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise GrammarError(f"tools[{i}].parameters must be a JSON Schema object")
        out.append((name, params))
    return out, code


def parse_spec(raw: Union[ConstraintSpec, Mapping[str, Any]]) -> ConstraintSpec:
    """Validate a JSON spec (cheap: no schema compilation). Raises `GrammarError` (a ValueError)."""
    if isinstance(raw, ConstraintSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise GrammarError(f"the constraint spec must be an object, got {type(raw).__name__}")
    from ..prompt_template.formats import FORMATS

    version = raw.get("version")
    if version not in FORMATS:
        raise GrammarError(f"unknown format version {version!r}; known: {', '.join(FORMATS)}")
    functions, code = _functions(raw.get("tools"))
    if raw.get("code_interpreter") is not None:
        code = bool(raw.get("code_interpreter"))
    choice, named = _choice(raw.get("tool_choice"))
    names = [n for n, _ in functions]
    if len(set(names)) != len(names):
        raise GrammarError("tools contain duplicate function names")
    if named:
        if choice not in names:
            raise GrammarError(f"tool_choice names {choice!r}, which is not among the tools")
        # As the prompt does (`inference._enforce`): a named choice keeps only that function.
        functions = [f for f in functions if f[0] == choice]
        code = False
    if choice == "none":
        functions, code = [], False
    parallel = raw.get("parallel_tool_calls")
    parallel = True if parallel is None else bool(parallel)
    # The schemas keep their own key order: a tool's property order is part of its meaning (the
    # grammar makes the model write arguments in it), so it is part of the digest too.
    canon = tuple((n, json.dumps(p, ensure_ascii=False)) for n, p in functions)
    payload = json.dumps([version, canon, choice, named, code, parallel], ensure_ascii=False)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return ConstraintSpec(version, canon, choice, named, code, parallel, digest)


def constraint_for_prompt(version: str, prompt: Any, parallel_tool_calls: Optional[bool] = None) -> dict:
    """The JSON spec for a rendered request (`functionary.prompt_template.InferencePrompt`).

    Uses the effective tool_choice and the enforced tools of the prompt, so that the grammar and
    the generation prefix at the end of the prompt agree. Legacy `functions` requests allow
    one call (the server keeps only the first).
    """
    parallel = True if parallel_tool_calls is None else bool(parallel_tool_calls)
    if getattr(prompt, "legacy_functions", False):
        parallel = False
    return {
        "version": version,
        "tools": list(prompt.tools),
        "tool_choice": prompt.tool_choice,
        "parallel_tool_calls": parallel,
    }
