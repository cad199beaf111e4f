"""Plain Python functions as tools: JSON Schema from the signature, validated calls.

The schema comes from pydantic (a model built from the signature with `create_model`) and the
parameter descriptions from the docstring (`docstring-parser`: Google, NumPy, reST and Epydoc
styles). Optional arguments, defaults, `Literal`/`Enum`, lists, nested pydantic models,
dataclasses, `Annotated[..., Field(...)]` and async functions all work as pydantic does them.

    @tool
    def get_car_price(car_name: str) -> dict:
        '''Get the price of a car.

        Args:
            car_name: The name of the car.
        '''

    get_car_price.to_openai()  # {"type": "function", "function": {"name": ..., "parameters": ...}}
"""
from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Union, overload

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

__all__ = ["FunctionTool", "ToolArgumentsError", "Toolbox", "tool", "serialize_result"]


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the function (bad JSON, a missing or wrong argument)."""


# ---------------------------------------------------------------------------------------------
# Schema clean-up: pydantic's schema, minus titles, with local $refs inlined


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")


def _walk(schema: Any, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """Apply `fn` to every subschema (bottom-up), following only schema positions."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: _walk(v, fn) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_walk(v, fn) for v in out[key]]
    for key in _SCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = _walk(out[key], fn)
    return fn(out)


def _drop_title(schema: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema.get("title"), str):
        schema.pop("title")
    return schema


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace `#/$defs/X` references by their definition; recursive ones stay as references."""
    defs: dict[str, Any] = schema.get("$defs", {})
    if not defs:
        return schema
    kept: set[str] = set()

    def resolve(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [resolve(v, stack) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref[len("#/$defs/"):]
            if name in stack or name not in defs:
                kept.add(name)
                return node
            siblings = {k: resolve(v, stack) for k, v in node.items() if k != "$ref"}
            target = resolve(copy.deepcopy(defs[name]), stack + (name,))
            return {**target, **siblings}
        return {k: (v if k == "$defs" else resolve(v, stack)) for k, v in node.items()}

    out = resolve(schema, ())
    out.pop("$defs", None)
    if kept:
        out["$defs"] = {name: resolve(copy.deepcopy(defs[name]), (name,)) for name in sorted(kept)}
    return out


def _simplify_optional(schema: dict[str, Any]) -> dict[str, Any]:
    """`x: Optional[T] = None` -> property `T`, not required (what a model should send)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    required = set(schema.get("required", []))
    for name, prop in list(props.items()):
        if name in required or not isinstance(prop, dict) or prop.get("default", 0) is not None:
            continue
        variants = prop.get("anyOf")
        if not isinstance(variants, list):
            continue
        others = [v for v in variants if v != {"type": "null"}]
        if len(others) == len(variants) - 1 and others:
            rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            props[name] = {**(others[0] if len(others) == 1 else {"anyOf": others}), **rest}
    return schema


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema = _walk(schema, _drop_title)
    schema = _inline_refs(schema)
    return _walk(schema, _simplify_optional)


# ---------------------------------------------------------------------------------------------
# FunctionTool


def serialize_result(value: Any) -> str:
    """What a function returned, as the text of a tool message."""
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
        return str(value)


@dataclass
class _Param:
    field: str  # field name in the arguments model
    name: str  # the function's parameter name (the JSON key)
    kind: inspect._ParameterKind


@dataclass
class FunctionTool:
    """A Python function the model can call. Calling the object calls the function."""

    fn: Callable[..., Any]
    name: str
    description: Optional[str]
    parameters: dict[str, Any]
    arguments_model: type[BaseModel]
    _params: list[_Param] = field(repr=False, default_factory=list)

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: Optional[str] = None, description: Optional[str] = None
    ) -> "FunctionTool":
        import docstring_parser

        target = fn.func if isinstance(fn, functools.partial) else fn
        doc = docstring_parser.parse(inspect.getdoc(target) or "")
        param_docs = {p.arg_name: p.description for p in doc.params if p.description}
        if description is None:
            parts = [doc.short_description, doc.long_description]
            description = "\n\n".join(p.strip() for p in parts if p and p.strip()) or None
        signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(target, include_extras=True)
        except Exception as exc:  # noqa: BLE001 - unresolvable forward references
            raise TypeError(f"cannot resolve the type hints of {target!r}: {exc}") from exc
        fields: dict[str, Any] = {}
        params: list[_Param] = []
        for i, (pname, p) in enumerate(signature.parameters.items()):
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue  # *args / **kwargs cannot be described; they are never passed
            annotation = hints.get(pname, Any)
            if isinstance(p.default, FieldInfo):
                info = copy.copy(p.default)
                info.alias = pname
                info.validation_alias = pname
                info.serialization_alias = pname
                if info.description is None and pname in param_docs:
                    info.description = param_docs[pname]
            else:
                extra = {"description": param_docs[pname]} if pname in param_docs else {}
                info = Field(default=... if p.default is p.empty else p.default, alias=pname, **extra)
            field_name = f"arg{i}"
            fields[field_name] = (annotation, info)
            params.append(_Param(field_name, pname, p.kind))
        tool_name = name or getattr(target, "__name__", None)
        if not tool_name or tool_name == "<lambda>":
            raise ValueError(f"give a name for {fn!r}")
        try:
            model = pydantic.create_model(  # type: ignore[call-overload]
                f"{tool_name}_arguments",
                __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
                **fields,
            )
            schema = model.model_json_schema(by_alias=True)
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
            raise TypeError(f"cannot describe the parameters of {tool_name!r} as JSON Schema: {exc}") from exc
        parameters = clean_schema(schema)
        parameters.setdefault("properties", {})
        return cls(fn=fn, name=tool_name, description=description, parameters=parameters,
                   arguments_model=model, _params=params)

    # ------------------------------------------------------------------ OpenAI shapes

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}

    # ------------------------------------------------------------------ calling

    def validate(self, arguments: Union[str, dict[str, Any], None]) -> tuple[list[Any], dict[str, Any]]:
        """(args, kwargs) for the function, or `ToolArgumentsError`."""
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            data: Any = {}
        elif isinstance(arguments, str):
            try:
                data = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise ToolArgumentsError(f"the arguments are not valid JSON ({exc.msg} at position {exc.pos})") from exc
        else:
            data = arguments
        if not isinstance(data, dict):
            raise ToolArgumentsError(f"the arguments must be a JSON object, got {type(data).__name__}")
        try:
            validated = self.arguments_model.model_validate(data)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or '(arguments)'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolArgumentsError(problems) from exc
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in self._params:
            value = getattr(validated, p.field)
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        return args, kwargs

    async def call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run the function: awaited when async, in a worker thread when not (so calls overlap)."""
        if inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(getattr(self.fn, "__call__", None)):
            return await self.fn(*args, **kwargs)
        result = await asyncio.to_thread(self.fn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def invoke(self, arguments: Union[str, dict[str, Any], None]) -> Any:
        args, kwargs = self.validate(arguments)
        return await self.call(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...
@overload
def tool(*, name: Optional[str] = None, description: Optional[str] = None) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(fn: Optional[Callable[..., Any]] = None, /, *, name: Optional[str] = None,
         description: Optional[str] = None) -> Any:
    """Decorator: `@tool` or `@tool(name=..., description=...)` -> `FunctionTool`."""
    if fn is None:
        return lambda f: FunctionTool.from_function(f, name=name, description=description)
    return FunctionTool.from_function(fn, name=name, description=description)


def as_tool(obj: Union[Callable[..., Any], FunctionTool]) -> FunctionTool:
    return obj if isinstance(obj, FunctionTool) else FunctionTool.from_function(obj)


class Toolbox:
    """Functions by name: `Toolbox([f, g])`, or `@toolbox.register` (with or without options)."""

    def __init__(self, functions: Iterable[Union[Callable[..., Any], FunctionTool]] = ()) -> None:
        self._tools: dict[str, FunctionTool] = {}
        for fn in functions:
            self.add(fn)

    def add(self, fn: Union[Callable[..., Any], FunctionTool], *, name: Optional[str] = None,
            description: Optional[str] = None) -> FunctionTool:
        if isinstance(fn, FunctionTool) and name is None and description is None:
            t = fn
        else:
            t = FunctionTool.from_function(fn.fn if isinstance(fn, FunctionTool) else fn,
                                           name=name, description=description)
        if t.name in self._tools:
            raise ValueError(f"a function named {t.name!r} is already registered")
        if t.name == "python":
            raise ValueError("'python' is the code interpreter's name; choose another")
        self._tools[t.name] = t
        return t

    def register(self, fn: Optional[Callable[..., Any]] = None, /, *, name: Optional[str] = None,
                 description: Optional[str] = None) -> Any:
        """Decorator; returns the `FunctionTool` (still callable like the function)."""
        if fn is None:
            return lambda f: self.add(f, name=name, description=description)
        return self.add(fn)

    def get(self, name: str) -> Optional[FunctionTool]:
        return self._tools.get(name)

    def openai_tools(self) -> list[dict[str, Any]]:
        return [t.to_openai() for t in self._tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[FunctionTool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)
