"""The Jinja chat templates in ``prompts/`` render byte-identically to the Python renderer.

1. Every golden prompt vector with a non-null ``prompt`` renders exactly, through transformers'
   own chat-template renderer (the sandboxed environment ``apply_chat_template`` and vLLM use).
2. Parity with ``functionary.prompt_template.inference.build_inference_prompt`` on every vector
   and on hypothesis-generated conversations (nested schemas, $refs, tool calls, tool_choice).
3. Each template starts with its ``{# version=... #}`` marker (how the format is detected).

Where the Python renderer rejects a request (``PromptError``), the template must raise too.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parents[2]
PROMPTS_DIR = ROOT / "prompts"
VERSIONS = ["v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1", "hermes", "llama3-json"]
# Formats of other model families: their templates get tool-call arguments decoded into objects,
# as vLLM and transformers pass them (the Python renderer prints a JSON object as `tojson` does).
JSON_ARGUMENT_VERSIONS = ("hermes", "llama3-json")
TS_VERSIONS = ["v1", "v2", "v2.llama3", "v3.llama3"]  # the ones that render the TypeScript namespace

GOLDEN_DIRS = [ROOT / "tests" / "golden", ROOT.parent / "shared" / "spec" / "vectors"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def template_text(version: str) -> str:
    return (PROMPTS_DIR / f"{version}.jinja").read_text(encoding="utf-8")


def render_jinja(
    version: str,
    messages: list[dict],
    tools: list[dict] | None,
    tool_choice: Any = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render with transformers' own chat-template renderer (as apply_chat_template does)."""
    messages = copy.deepcopy(messages)
    if version in JSON_ARGUMENT_VERSIONS:
        messages = decode_arguments(messages, code_is_json=version == "hermes")
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=copy.deepcopy(tools),
        chat_template=template_text(version),
        add_generation_prompt=add_generation_prompt,
        tool_choice=copy.deepcopy(tool_choice),
        bos_token="",
    )
    return rendered[0]


def decode_arguments(messages: Any, code_is_json: bool) -> Any:
    """Tool-call arguments that are a JSON object, decoded (what vLLM does before a chat template);
    python calls carry code, not JSON, unless the format calls python with `{"code": ...}`."""
    for m in messages if isinstance(messages, list) else []:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        functions = [c.get("function") if isinstance(c, dict) else None for c in (calls if isinstance(calls, list) else [])]
        if isinstance(m, dict) and isinstance(m.get("function_call"), dict):  # legacy
            functions.append(m["function_call"])
        for f in functions:
            if not isinstance(f, dict) or not isinstance(f.get("arguments"), str):
                continue
            if f.get("name") == "python" and not code_is_json:
                continue
            try:
                value = json.loads(f["arguments"])
            except ValueError:
                continue
            if isinstance(value, dict):
                f["arguments"] = value
    return messages


def render_python(
    version: str,
    *,
    messages: list[dict],
    tools: list[dict] | None = None,
    functions: list[dict] | None = None,
    tool_choice: Any = None,
    function_call: Any = None,
) -> str:
    from functionary.prompt_template import get_prompt_template_by_version
    from functionary.prompt_template.inference import build_inference_prompt

    template = get_prompt_template_by_version(version)
    return build_inference_prompt(
        template,
        messages=copy.deepcopy(messages),
        tools=copy.deepcopy(tools),
        functions=copy.deepcopy(functions),
        tool_choice=copy.deepcopy(tool_choice),
        function_call=copy.deepcopy(function_call),
    ).prompt


def _find_golden(name: str) -> Path | None:
    for d in GOLDEN_DIRS:
        if d.is_dir():
            hits = sorted(d.rglob(name))
            if hits:
                return hits[0]
    return None


def load_prompt_vectors() -> list[tuple[str, dict]]:
    out = []
    for version in VERSIONS:
        path = _find_golden(f"prompts_{version}.json")
        if path is None:
            continue
        for vec in json.loads(path.read_text(encoding="utf-8")):
            out.append((version, vec))
    return out


PROMPT_VECTORS = load_prompt_vectors()


def _vector_params(only_with_prompt: bool):
    params = [
        pytest.param(v, vec, id=f"{v}-{vec['id']}")
        for v, vec in PROMPT_VECTORS
        if not only_with_prompt or vec.get("prompt") is not None
    ]
    # Never skip silently: without vectors the test fails and says why.
    return params or [pytest.param(None, None, id="no-golden-vectors")]


def _require_vector(version, vec):
    if vec is None:
        pytest.fail(f"no prompts_<version>.json golden vectors found in {[str(d) for d in GOLDEN_DIRS]}")


def assert_matches_golden(rendered: str, expected: str) -> None:
    assert rendered == expected


def assert_parity(version: str, req: dict) -> None:
    """The template renders what build_inference_prompt renders, or raises where it raises."""
    from functionary.prompt_template import PromptError

    tools = req["tools"] if req["tools"] is not None else req["functions"]
    tool_choice = req["tool_choice"] if req["tool_choice"] is not None else req["function_call"]
    try:
        expected = render_python(version, **req)
    except PromptError:
        with pytest.raises(Exception):
            render_jinja(version, req["messages"], tools, tool_choice)
        return
    assert render_jinja(version, req["messages"], tools, tool_choice) == expected


# --------------------------------------------------------------------------------------------
# 3. version marker
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_template_starts_with_version_marker(version):
    text = template_text(version)
    assert text.split("\n", 1)[0] == f"{{# version={version} #}}"
    # the detection regex of FORMAT_SPEC section 1 finds exactly this version
    m = re.search(r"\{\# version=(?P<version_name>.+) \#\}", text)
    assert m is not None and m.group("version_name") == version


def _block(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_shared_blocks_are_identical_across_templates():
    """The templates are self-contained, so shared code is copied: keep the copies identical."""
    texts = {v: template_text(v) for v in VERSIONS}
    ts = {v: _block(texts[v], "{#- ===== Tools -> TypeScript", "{#- ===== Effective tool_choice") for v in TS_VERSIONS}
    assert len(set(ts.values())) == 1, "the TypeScript schema macros differ between templates"
    pre = {v: _block(texts[v], "{#- ===== Effective tool_choice", "{#- ===== Rendering") for v in VERSIONS if v != "v1"}
    assert len(set(pre.values())) == 1, "the tool_choice / message preamble differs between templates"
    assert _block(texts["v1"], "{#- ===== Effective tool_choice", "{#- ===== Rendering") in pre["v2"]


# --------------------------------------------------------------------------------------------
# 1. golden vectors, rendered by transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,vec", _vector_params(only_with_prompt=True))
def test_golden_prompt_vectors_through_transformers(version, vec):
    _require_vector(version, vec)
    tools = vec.get("tools") or vec.get("functions")
    tool_choice = vec.get("tool_choice") or vec.get("function_call")
    rendered = render_jinja(version, vec["messages"], tools, tool_choice)
    assert_matches_golden(rendered, vec["prompt"])


def test_golden_schema_vectors_through_transformers():
    """schema_typescript.json: tools -> TypeScript namespace, via every TS-rendering template."""
    path = _find_golden("schema_typescript.json")
    if path is None:
        pytest.fail(f"schema_typescript.json not found in {[str(d) for d in GOLDEN_DIRS]}")
    system_open = {
        "v1": "system:\n",
        "v2": "<|from|>system\n<|recipient|>all\n<|content|>",
        "v2.llama3": "<|start_header_id|>system<|end_header_id|>\n\n",
        "v3.llama3": "<|start_header_id|>system<|end_header_id|>\n\n"
        "You are capable of executing available function(s) if required.\n"
        "Only execute function(s) when absolutely necessary.\n"
        "Ask for the required input to:recipient==all\nUse JSON for function arguments.\n"
        "Respond in this format:\n>>>${recipient}\n${content}\nAvailable functions:\n",
    }
    system_close = {"v1": "<|END_OF_SYSTEM|>\n", "v2": "\n", "v2.llama3": "<|eot_id|>", "v3.llama3": "<|eot_id|>"}
    for case in json.loads(path.read_text(encoding="utf-8")):
        functions = case["function"] if isinstance(case["function"], list) else [case["function"]]
        tools = [{"type": "function", "function": f} for f in functions] or None
        for version in TS_VERSIONS:
            out = render_jinja(version, [], tools, None, add_generation_prompt=False)
            assert out.startswith(system_open[version])
            schema = out[len(system_open[version]) :]
            schema = schema[: schema.index("} // namespace functions") + len("} // namespace functions")]
            assert out[len(system_open[version]) + len(schema) :].startswith(system_close[version])
            assert_matches_golden(schema, case["rendered"])


def test_through_a_tokenizer_apply_chat_template():
    """The same bytes through PreTrainedTokenizerFast.apply_chat_template (what vLLM calls)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<|begin_of_text|>": 1}, unk_token="<unk>")),
        bos_token="<|begin_of_text|>",
        unk_token="<unk>",
    )
    checked = 0
    for version, vec in PROMPT_VECTORS:
        if vec.get("prompt") is None or vec["id"] not in ("C06", "C10", "C12", "C14", "C16"):
            continue
        tok.chat_template = template_text(version)
        kwargs = {"tools": vec.get("tools") or vec.get("functions")}
        choice = vec.get("tool_choice") or vec.get("function_call")
        if choice is not None:
            kwargs["tool_choice"] = choice
        out = tok.apply_chat_template(
            copy.deepcopy(vec["messages"]), add_generation_prompt=True, tokenize=False, bos_token="", **kwargs
        )
        assert_matches_golden(out, vec["prompt"])
        # without bos_token="" the tokenizer's BOS is emitted first (FORMAT_SPEC 2.8 / 9.2)
        with_bos = tok.apply_chat_template(copy.deepcopy(vec["messages"]), add_generation_prompt=True, tokenize=False, **kwargs)
        assert with_bos == "<|begin_of_text|>" + out
        checked += 1
    assert checked > 0, "no golden vectors found"


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_named_tool_raises(version):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(Exception, match="nope"):
        render_jinja(version, messages, tools, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(Exception, match="nope"):
        render_jinja(version, messages, [t["function"] for t in tools], {"name": "nope"})


# --------------------------------------------------------------------------------------------
# 2. parity with the Python renderer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,vec", _vector_params(only_with_prompt=False))
def test_vectors_parity_with_python_renderer(version, vec):
    _require_vector(version, vec)
    req = {k: vec.get(k) for k in ("messages", "tools", "functions", "tool_choice", "function_call")}
    expected = render_python(version, **req)  # every vector is a valid request
    tools = req["tools"] if req["tools"] is not None else req["functions"]
    tool_choice = req["tool_choice"] if req["tool_choice"] is not None else req["function_call"]
    assert render_jinja(version, vec["messages"], tools, tool_choice) == expected


@pytest.mark.parametrize("version", TS_VERSIONS)
def test_oneof_type_order_parity_exhaustive(version):
    """oneOf member types in the seed's set order: every ordered subset of the type names."""
    names = ["string", "integer", "number", "boolean", "object", "array", "null", "float"]
    cases = [list(p) for k in range(1, 5) for p in itertools.permutations(names, k)]
    cases += [["string", "x-custom", "string"], ["integer", ["string", "null"]], ["float", "integer", "number"]]
    properties = {
        f"p{i}": {"oneOf": [{"type": t} for t in case] + [{"description": "no type"}]} for i, case in enumerate(cases)
    }
    req = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": properties}}}],
        "functions": None,
        "tool_choice": None,
        "function_call": None,
    }
    assert_parity(version, req)


# ---- hypothesis strategies -----------------------------------------------------------------

SPECIAL_STRINGS = st.sampled_from(
    ["", ".", "ends.", "two\nlines", "trailing \n ", "  ", ">>>all\n", "<|eot_id|>", '"quoted"', "it's", "é😀 ü", "a\\nb"]
)
TEXT = st.one_of(SPECIAL_STRINGS, st.text(st.characters(exclude_categories=("Cs",)), max_size=24))
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
PROP_NAME = st.one_of(NAME, st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6)).filter(
    lambda s: not s.startswith("$")
)
NUMBER = st.one_of(
    st.integers(-1000, 1000), st.sampled_from([0, 0.0, 1.5, -2.25, 1e-7, 1e20]), st.floats(allow_nan=False, allow_infinity=False)
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PROP_NAME, inner, max_size=3),
    max_leaves=5,
)
TYPE_NAME = st.sampled_from(["string", "integer", "number", "boolean", "null", "float", "object", "array"])
ANNOTATIONS = {
    "description": TEXT,
    "default": JSON_VALUE,
    "format": st.sampled_from(["date", "date-time", "uuid", "email"]),
    "minimum": NUMBER,
    "maximum": NUMBER,
    "minLength": st.integers(0, 5),
    "maxLength": st.integers(0, 50),
    "nullable": st.booleans(),
    "examples": st.lists(JSON_VALUE, max_size=3),
    "enum": st.lists(JSON_SCALAR, min_size=1, max_size=4),
    "pattern": st.just("^[a-z]+$"),
    "exclusiveMinimum": NUMBER,
    "title": TEXT,
}


def annotated(base: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    """Add a random subset of the keywords the renderer cares about (or ignores)."""

    @st.composite
    def build(draw):
        schema = dict(draw(base))
        keys = draw(st.lists(st.sampled_from(sorted(ANNOTATIONS)), max_size=4, unique=True))
        for k in keys:
            schema[k] = draw(ANNOTATIONS[k])
        return schema

    return build()


SCALAR_SCHEMA = annotated(
    st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null", "float"])}),
        st.fixed_dictionaries({"type": st.lists(TYPE_NAME, min_size=1, max_size=3)}),
        st.fixed_dictionaries(
            {
                "oneOf": st.lists(
                    st.one_of(
                        st.fixed_dictionaries({"type": TYPE_NAME}, optional={"format": st.sampled_from(["uuid", "date"])}),
                        st.fixed_dictionaries({"format": st.sampled_from(["email"])}),
                        st.just({"const": 1}),
                    ),
                    max_size=4,
                )
            }
        ),
        st.fixed_dictionaries({"anyOf": st.lists(st.fixed_dictionaries({"type": TYPE_NAME}), max_size=3)}),
        st.just({}),
        st.fixed_dictionaries({"const": JSON_SCALAR}),
    )
)


@st.composite
def object_schema(draw, children, nested_key="properties"):
    props = draw(st.dictionaries(PROP_NAME, children, max_size=4))
    schema: dict[str, Any] = {"type": "object"}
    mode = draw(st.sampled_from(["props", "props", "props", "none", "empty"]))
    if mode == "props":
        schema["properties"] = props
    elif mode == "empty":
        schema["properties"] = {}
    req = draw(st.sampled_from(["subset", "subset", "missing"]))
    if req == "subset" and props:
        names = list(props)
        schema["required"] = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    for k in draw(st.lists(st.sampled_from(["description", "examples", "default"]), unique=True, max_size=2)):
        schema[k] = draw(ANNOTATIONS[k])
    return schema


@st.composite
def array_schema(draw, children):
    schema: dict[str, Any] = {"type": "array"}
    kind = draw(st.sampled_from(["child", "child", "child", "empty", "missing", "untyped"]))
    if kind == "child":
        schema["items"] = draw(children)
    elif kind == "empty":
        schema["items"] = {}
    elif kind == "untyped":
        schema["items"] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    for k in draw(st.lists(st.sampled_from(["description", "examples", "default", "minItems"]), unique=True, max_size=2)):
        schema[k] = draw(ANNOTATIONS[k]) if k in ANNOTATIONS else 1
    return schema


def schema_tree(leaves: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    return st.recursive(leaves, lambda c: object_schema(c) | array_schema(c), max_leaves=8)


@st.composite
def parameters_schema(draw):
    kind = draw(st.sampled_from(["full", "full", "full", "refs", "no_properties", "empty_properties"]))
    if kind == "no_properties":
        return {"type": "object"}
    if kind == "empty_properties":
        return {"type": "object", "properties": {}}
    leaves = SCALAR_SCHEMA
    params: dict[str, Any] = {"type": "object"}
    if kind == "refs":
        defs_key = draw(st.sampled_from(["$defs", "definitions"]))
        defs = draw(st.dictionaries(NAME, schema_tree(SCALAR_SCHEMA), min_size=1, max_size=3))
        params[defs_key] = defs
        ref = st.sampled_from(sorted(defs)).map(lambda n: f"#/{defs_key}/{n}")
        ref_schema = st.one_of(
            ref.map(lambda r: {"$ref": r}),
            st.tuples(ref, TEXT).map(lambda t: {"$ref": t[0], "description": t[1]}),  # sibling keys are dropped
        )
        leaves = st.one_of(SCALAR_SCHEMA, ref_schema)
    props = draw(st.dictionaries(PROP_NAME, schema_tree(leaves), min_size=1, max_size=5))
    params["properties"] = props
    if draw(st.booleans()):
        params["required"] = draw(st.lists(st.sampled_from(list(props)), unique=True))
    return params


@st.composite
def function_def(draw):
    f: dict[str, Any] = {"name": draw(NAME)}
    if draw(st.integers(0, 4)):
        f["description"] = draw(TEXT)
    p = draw(st.integers(0, 5))
    if p == 1:
        f["parameters"] = None
    elif p > 1:
        f["parameters"] = draw(parameters_schema())
    return f


@st.composite
def tool_call_args(draw):
    if draw(st.booleans()):
        return json.dumps(draw(st.dictionaries(PROP_NAME, JSON_VALUE, max_size=3)), ensure_ascii=draw(st.booleans()))
    return draw(TEXT)


def _maybe_normalise(draw, msg: dict) -> dict:
    """Sometimes add every key the server's pydantic model would add, with null."""
    if draw(st.booleans()):
        for k in ("content", "name", "tool_calls", "tool_call_id", "function_call"):
            msg.setdefault(k, None)
    return msg


CONTENT = st.one_of(st.none(), TEXT)


@st.composite
def conversation(draw, call_names: list[str], legacy: bool):
    messages: list[dict] = []
    if draw(st.booleans()):
        messages.append(_maybe_normalise(draw, {"role": "system", "content": draw(TEXT)}))
    counter = 0
    for _ in range(draw(st.integers(1, 3))):
        messages.append(_maybe_normalise(draw, {"role": "user", "content": draw(CONTENT)}))
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["text", "calls", "calls"]))
            if kind == "text":
                messages.append(_maybe_normalise(draw, {"role": "assistant", "content": draw(TEXT)}))
                continue
            name_st = st.sampled_from(call_names + ["python"]) if call_names else st.just("python")
            content = draw(CONTENT)
            if legacy:
                name = draw(name_st)
                messages.append(
                    _maybe_normalise(
                        draw,
                        {"role": "assistant", "content": content, "function_call": {"name": name, "arguments": draw(tool_call_args())}},
                    )
                )
                messages.append({"role": "function", "name": name, "content": draw(TEXT)})
                continue
            with_ids = draw(st.booleans())
            calls, results = [], []
            for _ in range(draw(st.integers(1, 3))):
                counter += 1
                name = draw(name_st)
                call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": draw(tool_call_args())}}
                result: dict[str, Any] = {"role": "tool", "name": name, "content": draw(CONTENT)}
                if with_ids:
                    call["id"] = f"call_{counter}"
                    result["tool_call_id"] = f"call_{counter}"
                calls.append(call)
                results.append(result)
            messages.append(_maybe_normalise(draw, {"role": "assistant", "content": content, "tool_calls": calls}))
            if with_ids:
                results = draw(st.permutations(results))
            messages.extend(results)
            if draw(st.booleans()):
                messages.append({"role": "assistant", "content": draw(TEXT)})
    return messages


@st.composite
def request(draw):
    """kwargs for build_inference_prompt (tools or legacy functions)."""
    legacy = draw(st.integers(0, 4)) == 0
    functions = draw(st.lists(function_def(), max_size=4))
    names = [f["name"] for f in functions]
    req: dict[str, Any] = {"tools": None, "functions": None, "tool_choice": None, "function_call": None}
    if legacy:
        if functions:
            req["functions"] = functions
            choice = draw(st.sampled_from([None, "auto", "none", "named"]))
            req["function_call"] = {"name": draw(st.sampled_from(names))} if choice == "named" else choice
    else:
        tools = [{"type": "function", "function": f} for f in functions]
        if draw(st.booleans()):
            tools.insert(draw(st.integers(0, len(tools))), {"type": "code_interpreter"})
        if tools:
            req["tools"] = tools
            choice = draw(st.sampled_from([None, "auto", "none", "required", "named", "named", "named_with_definition"]))
            if choice == "named" and names:
                choice = {"type": "function", "function": {"name": draw(st.sampled_from(names))}}
            elif choice == "named_with_definition" and names:
                definition = draw(function_def())
                definition["name"] = draw(st.sampled_from(names))
                choice = {"type": "function", "function": definition}
            elif choice in ("named", "named_with_definition"):
                choice = "auto"
            req["tool_choice"] = choice
    req["messages"] = draw(conversation(names, legacy))
    return req


@pytest.mark.parametrize("version", VERSIONS)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(req=request())
def test_random_conversations_parity_with_python_renderer(version, req):
    assert_parity(version, req)
