"""BFCL multi-turn (`multi_turn_base`): run the conversation against BFCL's simulated APIs, score
the end state as BFCL does.

The simulated APIs (file system, trading bot, travel booking, ...) ship in `bfcl-eval` as plain
Python classes and run offline; `MathAPI` needs `mpmath` (in the `eval` extra). We reuse BFCL's
own executor and checker (`eval_checker/multi_turn_eval/`, which import without BFCL's pinned
dependencies), and follow its FC inference loop (`BaseHandler.inference_multi_turn_FC`): per
turn, add the user's messages, then ask, execute the calls, send the results back as `tool`
messages, until an answer without a call; more than 20 steps in a turn ends the conversation
(BFCL's MAXIMUM_STEP_LIMIT), and the item fails.

BFCL's executor `eval`s each call as Python text. A call reaches it only when its function name
is one of the entry's functions and its argument names are identifiers; values are `repr`s of
JSON values. Anything else becomes a call of an unknown function, which fails as BFCL would.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from .client import Completion
from .data import Entry
from .tools import ToolSet

MAXIMUM_STEP_LIMIT = 20  # BFCL's constants/default_prompts.py
_UNKNOWN_CALL = "unknown_function()"


@dataclass
class Conversation:
    """The outcome of one multi-turn run: per turn, per step, the calls as Python text."""

    decoded: list = field(default_factory=list)  # [turn][step] -> ["name(arg=value)", ...]
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    force_quit: bool = False


def call_texts(message: dict, tools: ToolSet, known: set) -> list[str]:
    """BFCL's decode_execute for FC models (`convert_to_function_call`), guarded (module doc).
    Raises ValueError when the answer has no call or a call's arguments are not a JSON object."""
    calls = message.get("tool_calls") or []
    if not calls:
        raise ValueError("no function call")
    texts = []
    for call in calls:
        function = call.get("function") or {}
        name = tools.original_name(function.get("name", ""))
        arguments = json.loads(function.get("arguments") or "")
        if not isinstance(arguments, dict):
            raise ValueError("arguments are not a JSON object")
        if name not in known or not all(isinstance(k, str) and k.isidentifier() for k in arguments):
            texts.append(_UNKNOWN_CALL)
            continue
        texts.append(f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})")
    return texts


def _instance_tag(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


async def run_conversation(entry: Entry, tools: ToolSet, ask: Callable[[list], Awaitable[Completion]],
                           run_tag: str) -> Conversation:
    """Drive one conversation. `ask(messages)` returns the endpoint's completion; `run_tag` keeps
    this run's API instances apart from every other run's in BFCL's executor."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    known = {f["name"] for f in entry.functions}
    tag = _instance_tag(run_tag)
    messages: list = []
    result = Conversation()
    for turn in entry.turns:
        messages.extend(turn)
        steps: list = []
        count = 0
        while True:
            completion = await ask(messages)
            result.completion_tokens += completion.completion_tokens
            result.latency_s += completion.latency_s
            result.finish_reason = completion.finish_reason
            message = completion.message
            assistant = {"role": "assistant", "content": message.get("content")}
            if message.get("tool_calls"):
                assistant["tool_calls"] = message["tool_calls"]
            messages.append(assistant)
            try:
                texts = call_texts(message, tools, known)
            except (ValueError, json.JSONDecodeError):
                break  # an answer without a (decodable) call ends the turn, as in BFCL
            steps.append(texts)
            outputs, _ = execute_multi_turn_func_call(texts, entry.initial_config, entry.involved_classes,
                                                      tag, entry.id, long_context=False, is_evaL_run=False)
            for output, call in zip(outputs, message["tool_calls"]):
                messages.append({"role": "tool", "content": output, "tool_call_id": call.get("id")})
            count += 1
            if count > MAXIMUM_STEP_LIMIT:
                result.force_quit = True
                break
        result.decoded.append(steps)
        if result.force_quit:
            break
    return result


def score_conversation(entry: Entry, conversation: Conversation, run_tag: str) -> tuple[bool, str | None]:
    """BFCL's multi-turn verdict (state and responses after every turn) and why it failed."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(conversation.decoded) != len(entry.ground_truth or []):
        return False, f"Stopped after {len(conversation.decoded)} of {len(entry.ground_truth or [])} turns " \
                      f"(more than {MAXIMUM_STEP_LIMIT} steps in a turn)."
    test_entry = {"id": entry.id, "initial_config": entry.initial_config, "involved_classes": entry.involved_classes}
    verdict = multi_turn_checker(conversation.decoded, entry.ground_truth, test_entry, entry.category,
                                 _instance_tag(run_tag))
    if verdict.get("valid"):
        return True, None
    return False, " ".join(str(verdict.get("error_message") or verdict.get("error_type") or "wrong end state").split())[:300]
