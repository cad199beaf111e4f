"""Grammar sampling: only outputs that parse into valid calls can be generated.

Layers (engine-free except the vLLM adapter):

* `spec`: the JSON spec a request carries (`CONSTRAINT_KEY` in vLLM's `extra_args`);
  `constraint_for_prompt` builds it from a rendered request;
* `constraint`: the character-level grammar compiled from the format's `OutputSyntax`, the
  tools and tool_choice (`compile_constraint`, cached by the spec's digest), with a cheap `Cursor`;
* `tokens`: per-tokenizer data (`TokenizerIndex`, built once) and the per-request
  `TokenCursor` (allowed-token masks, advance by token id);
* `vllm_processor`, `vllm_processor_v2`: the vLLM logits processor for vLLM's V1 and V2 model
  runners (import vllm); load it by its class path, `VLLM_LOGITS_PROCESSOR`, which gives each
  runner the processor of its interface.

Importing this package is cheap: the spec API needs neither numpy nor lm-format-enforcer;
the rest is imported on first use.
"""
from __future__ import annotations

from typing import Any

from .errors import GrammarError, GrammarViolation
from .spec import CONSTRAINT_KEY, ConstraintSpec, constraint_for_prompt, parse_spec

#: The class path to pass to vLLM (`logits_processors=[...]`, `--logits-processors`), on either
#: model runner (`vllm_processor_v2.FunctionaryLogitsProcessorAnyRunner`).
VLLM_LOGITS_PROCESSOR = "functionary.grammar.vllm_processor_v2:FunctionaryLogitsProcessorAnyRunner"

_LAZY = {
    "Cursor": "constraint",
    "Grammar": "constraint",
    "compile_constraint": "constraint",
    "TokenCursor": "tokens",
    "TokenizerIndex": "tokens",
    "index_for_tokenizer": "tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CONSTRAINT_KEY", "ConstraintSpec", "Cursor", "Grammar", "GrammarError", "GrammarViolation",
    "TokenCursor", "TokenizerIndex", "VLLM_LOGITS_PROCESSOR", "compile_constraint", "constraint_for_prompt",
    "index_for_tokenizer", "parse_spec",
]
