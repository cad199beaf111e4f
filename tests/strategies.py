"""Hypothesis strategies shared by the parser and template tests."""
from __future__ import annotations

import json

from hypothesis import strategies as st

from functionary.prompt_template import get_prompt_template_by_version

VERSIONS = ("v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1", "hermes", "llama3-json")
# Names that are prefixes of each other, as the grammar and the parser must tell them apart.
NAMES = ("get_w", "get_weather", "get_weather_v2", "search", "a", "ping_1")

MARKER_PIECES = (
    ">>>", ">>", ">", "<function=", "</function>", "<|python_tag|>", "<|reserved_special_token_249|>",
    "<|eot_id|>", "<|eom_id|>", "<|from|>", "<|recipient|>", "<|content|>", "<|stop|>",
    "<|START_OF_FUNCTION_CALL|>", "<|END_OF_FUNCTION_CALL|>", "<|END_OF_ASSISTANT|>", "\n<|from|>assistant\n<|recipient|>",
    "all", "all\n", "python", "python\n", "\n", " ", "  ", ":", ":\n", "<", "<|", "{", "}", '"', "é", "😀",
    '<tool_call>\n{"name": "', '", "arguments": ', "}\n</tool_call>", "<|im_end|>", '{"name": "', '", "parameters": ',
) + NAMES


def chunkings(text_strategy):
    """(text, split points) pairs: any split of any text."""
    return text_strategy.flatmap(
        lambda text: st.tuples(
            st.just(text),
            st.lists(st.integers(0, len(text)), max_size=max(1, len(text))).map(sorted),
        )
    )


def split(text: str, cuts: list[int]) -> list[str]:
    points = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(points, points[1:])]


# Raw model output: free text mixed with every marker of every format, so that openers,
# partial markers and stop tokens fall on chunk edges.
raw_outputs = st.lists(
    st.one_of(st.sampled_from(MARKER_PIECES), st.text(alphabet="ab c\n{}\":,.é", max_size=6)), max_size=25
).map("".join)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet="abc xyzé\"\\/", max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text("abcdef", min_size=1, max_size=5), children, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=8), json_values, max_size=4).map(
    lambda d: json.dumps(d, ensure_ascii=False)
)
# Visible text that is not whitespace-padded and carries no marker of any format.
plain_text = st.text(alphabet="Hello wrd,.!?é\n0123", min_size=1, max_size=40).map(str.strip).filter(bool)


# Arguments whose strings spell the markers of every format (only grammar sampling's
# JSON-aware parsing keeps them whole).
marker_arguments = st.dictionaries(
    st.text("abc", min_size=1, max_size=3),
    st.lists(st.sampled_from(MARKER_PIECES), min_size=1, max_size=4).map("".join),
    min_size=1, max_size=3,
).map(lambda d: json.dumps(d, ensure_ascii=False))


@st.composite
def assistant_turns(draw, version: str, argument_values=arguments, code: bool = True):
    """(assistant message, the output a model writes for it) in `version`'s own syntax."""
    content = draw(st.none() | plain_text)
    max_calls = 1 if version == "v1" else 4
    calls = draw(st.lists(st.tuples(st.sampled_from(NAMES), argument_values), max_size=max_calls))
    if code and version != "v1" and draw(st.booleans()):
        code = draw(st.text(alphabet="print(x)=1+2\n #", min_size=1, max_size=30).map(str.strip).filter(bool))
        # hermes calls the code interpreter like a function: {"code": ...}
        calls.append(("python", json.dumps({"code": code}) if version == "hermes" else code))
    if content is None and not calls:
        content = draw(plain_text)
    if version == "llama3-json" and calls:
        content = None  # Meta's template drops the text of a calling turn
    message = {"role": "assistant", "content": content}
    if version == "v1":
        if calls:
            message["function_call"] = {"name": calls[0][0], "arguments": calls[0][1]}
    else:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ] or None
    template = get_prompt_template_by_version(version)
    if template.format.render_conversation is not None:
        rendered = template.format.render_conversation([message], [], False)
        output = rendered[rendered.rindex(template.get_generation_prompt()) + len(template.get_generation_prompt()):]
    else:
        rendered = template.format.render_message(message)
        output = rendered[len(template.get_generation_prompt()):]
    return message, calls, output
