"""Grammar sampling on the real vLLM engine (CPU, default model), through both back ends: the
logits processor (lm-format-enforcer) and the structural tag (vLLM's xgrammar structured outputs).

The default model knows none of the Functionary formats, so whatever valid call it makes is the
grammar's doing: ~50 requests per back end with random schemas, every format and tool_choice,
temperatures from 0 to 1, must give existing names and arguments that validate with
`jsonschema` (a call cut by max_tokens excepted).
"""
from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip("vllm")

import jsonschema  # noqa: E402

from functionary.grammar import CONSTRAINT_KEY, VLLM_LOGITS_PROCESSOR, constraint_for_prompt  # noqa: E402
from functionary.grammar.structural_tag import structural_tag_json  # noqa: E402
from functionary.parsing import MessageBuilder, StreamParser  # noqa: E402
from functionary.prompt_template import build_inference_prompt, get_prompt_template_by_version  # noqa: E402
from functionary.prompt_template.formats import FORMATS  # noqa: E402

pytestmark = pytest.mark.slow

N_REQUESTS = 50
KV_CACHE_BYTES = 256 * 2**20
QUESTIONS = [
    "What is the weather in Paris?",
    "Book a table for two at 7pm, please.",
    "Search the catalogue for red shoes in size 42.",
    "Hello! Who are you?",
    "Convert 12 miles to km and tell me the result.",
]


@pytest.fixture(scope="module")
def llm():
    from functionary.backends.default_model import ensure_default_model

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    engine = LLM(
        model=str(ensure_default_model()), enforce_eager=True, dtype="bfloat16", max_model_len=2048,
        kv_cache_memory_bytes=KV_CACHE_BYTES, logits_processors=[VLLM_LOGITS_PROCESSOR], seed=0,
        structured_outputs_config={"backend": "xgrammar"},
    )
    yield engine
    del engine
    if saved is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "enum", "nullable", "short"]
    if depth < 2:
        kinds += ["object", "array"]
    kind = rng.choice(kinds)
    if kind == "enum":
        return {"type": "string", "enum": rng.sample(["celsius", "fahrenheit", "北京", "Zürich", "ok", "no"], 3)}
    if kind == "nullable":
        return {"type": ["string", "null"]}
    if kind == "short":
        return {"type": "string", "maxLength": rng.randint(1, 8)}
    if kind == "object":
        return random_object(rng, depth + 1)
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "maxItems": rng.randint(1, 4)}
    return {"type": kind}


def random_object(rng: random.Random, depth: int = 0) -> dict:
    keys = rng.sample(["city", "date", "count", "unit", "query", "size", "people", "tags"], rng.randint(0, 4))
    props = {k: random_schema(rng, depth) for k in keys}
    schema = {"type": "object", "properties": props}
    if keys:
        schema["required"] = rng.sample(keys, rng.randint(0, len(keys)))
    return schema


def random_request(rng: random.Random, i: int) -> tuple:
    version = list(FORMATS)[i % len(FORMATS)]
    choice = ["auto", "required", "named", "none"][(i // len(FORMATS)) % 4]
    names = rng.sample(["get_weather", "get_w", "book_table", "search", "convert"], rng.randint(1, 3))
    functions = [{"name": n, "description": f"{n.replace('_', ' ')}", "parameters": random_object(rng)} for n in names]
    if rng.random() < 0.2:
        # A parameter behind a $ref.
        fn = functions[0]
        fn["parameters"] = {"type": "object", "properties": {"where": {"$ref": "#/$defs/Place"}}, "required": ["where"],
                            "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}},
                                                "required": ["city"]}}}
    code = version != "v1" and rng.random() < 0.2
    template = get_prompt_template_by_version(version)
    messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    if version == "v1":  # legacy functions API; no `required`
        call = {"name": names[0]} if choice == "named" else ("auto" if choice == "required" else choice)
        prompt = build_inference_prompt(template, messages, functions=functions, function_call=call)
    else:
        tools = [{"type": "function", "function": f} for f in functions] + ([{"type": "code_interpreter"}] if code else [])
        tc = {"type": "function", "function": {"name": names[0]}} if choice == "named" else choice
        prompt = build_inference_prompt(template, messages, tools=tools, tool_choice=tc)
    spec = constraint_for_prompt(version, prompt)
    return version, prompt, spec, {f["name"]: f["parameters"] for f in functions}, code


@pytest.mark.parametrize("backend", ["lm-format-enforcer", "xgrammar"])
def test_random_requests_give_valid_calls(llm, backend):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from functionary.grammar import vllm_processor

    before = dict(vllm_processor.STATS)
    rng = random.Random(f"1234-{backend}")
    xgrammar = backend == "xgrammar"
    cases, prompts, params = [], [], []
    for i in range(N_REQUESTS):
        version, prompt, spec, schemas, code = random_request(rng, i)
        cases.append((version, prompt, spec, schemas, code))
        prompts.append(prompt.prompt)
        how = (dict(structured_outputs=StructuredOutputsParams(structural_tag=structural_tag_json(spec)))
               if xgrammar else dict(extra_args={CONSTRAINT_KEY: spec}, stop=list(prompt.stop)))
        params.append(SamplingParams(
            temperature=round(rng.uniform(0, 1), 2), max_tokens=rng.choice([48, 96, 160]),  # no per-request seed: vLLM CPU cannot
            skip_special_tokens=False, spaces_between_special_tokens=False, **how,
        ))
    # One request without the key: not constrained.
    prompts.append("Once upon a time")
    params.append(SamplingParams(temperature=0, max_tokens=16))
    outputs = llm.generate(prompts, params, use_tqdm=False)

    stats = {k: vllm_processor.STATS[k] - before.get(k, 0) for k in vllm_processor.STATS}
    # More than N when the small KV cache preempts requests: a resumed request gets a new
    # cursor that replays its output so far.
    if xgrammar:  # the structural tag, not the processor
        assert not stats.get("requests") and not stats.get("failed")
    else:
        assert stats.get("requests", 0) >= N_REQUESTS and not stats.get("failed")
    assert outputs[-1].outputs[0].text

    n_calls = 0
    for (version, prompt, spec, schemas, code), out in zip(cases, outputs):
        completion = out.outputs[0]
        text, cut = completion.text, completion.finish_reason == "length"
        syntax = FORMATS[version].syntax
        parser = StreamParser(syntax, prefix=get_prompt_template_by_version(version).get_generation_prefix(prompt.tool_choice),
                              json_arguments=True)
        builder = MessageBuilder()
        builder.add(parser.feed(text))
        builder.add(parser.finish())
        message = builder.message()
        calls = message["tool_calls"] or []
        where = f"{version} {prompt.tool_choice} {text!r}"
        for k, call in enumerate(calls):
            name, args = call["function"]["name"], call["function"]["arguments"]
            if cut and k == len(calls) - 1:
                break
            assert name in schemas or (code and name == "python"), where
            if name == "python":
                continue
            jsonschema.validate(json.loads(args), schemas[name])
            n_calls += 1
        choice = prompt.tool_choice
        if choice == "none":
            assert not calls, where
        elif not cut and (choice == "required" or isinstance(choice, dict)):
            assert calls, where
        if isinstance(choice, dict):
            assert [c["function"]["name"] for c in calls] == [choice["function"]["name"]], where
    if os.environ.get("GRAMMAR_E2E_VERBOSE"):
        for (version, prompt, *_), out in zip(cases, outputs):
            print(version, prompt.tool_choice, out.outputs[0].finish_reason, repr(out.outputs[0].text))
        print("valid calls:", n_calls)
    assert n_calls >= N_REQUESTS // 3
