"""Drafting for tool-call speculation (`functionary.grammar.forced`), on the default model's real
tokenizer and real xgrammar, without an engine.

What vLLM needs from a draft: every token is one the grammar allows in sequence (else vLLM cuts
the draft there), and drafting leaves the request's matcher where it was. What makes it worth
it: the tokens a format forces (the published hermes call syntax, a schema's required key) are
drafted as the tokenizer writes them, and argument values are copied from the prompt.
"""
from __future__ import annotations

import json
import random
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

xgr = pytest.importorskip("xgrammar")

from functionary.backends.vllm_speculation import (  # noqa: E402
    PROPOSER_CLASS, configure_speculation, speculative_config,
)
from functionary.grammar.forced import GrammarCache, RequestDrafter, prompt_lookup  # noqa: E402
from functionary.grammar.structural_tag import structural_tag_json  # noqa: E402
from tests.support.tokenizers import default_tokenizer  # noqa: E402
from tests.unit.test_grammar_property import requests  # noqa: E402

BOOK = {"type": "function", "function": {"name": "book_table", "parameters": {
    "type": "object", "required": ["restaurant", "party_size"],
    "properties": {"restaurant": {"type": "string"}, "party_size": {"type": "integer"}}}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}

_STATE: dict = {}


def tok():
    if "tok" not in _STATE:
        t = default_tokenizer()
        info = xgr.TokenizerInfo.from_huggingface(t)
        _STATE.update(tok=t, info=info, compiler=xgr.GrammarCompiler(info))
    return _STATE["tok"]


def encode(text):
    return tok().encode(text, add_special_tokens=False)


def matcher(spec):
    tok()
    grammar = _STATE["compiler"].compile_structural_tag(structural_tag_json(spec))
    return xgr.GrammarMatcher(grammar, override_stop_tokens=[tok().eos_token_id])


def drafter(spec, output=()):
    d = RequestDrafter(encode)
    d.attach(matcher(spec), list(output))
    return d


# -- prompt lookup -----------------------------------------------------------------------------------


def test_prompt_lookup_takes_the_longest_latest_match():
    history = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 7, 2, 3]
    # suffix [2, 3] occurs at 1 and 6; the latest (6) is followed by 4, 5, 7
    assert prompt_lookup(history, 3, 1, 4) == [4, 5, 7]
    # [7, 2, 3] is the longest suffix: no earlier occurrence, so the 2-gram decides
    assert prompt_lookup(history, 1, 3, 4) == []
    assert prompt_lookup([5, 6, 5], 4, 1, 1) == [6, 5]
    assert prompt_lookup([1, 2], 3) == []
    assert prompt_lookup([1, 1], 0) == []


# -- what the grammar forces --------------------------------------------------------------------------


def test_hermes_name_and_arguments_are_drafted_as_the_tokenizer_writes_them():
    """hermes calls are `<tool_call>\\n{"name": "N", "arguments": {...}}` (its published template);
    with the name's prefix `book` unique and `restaurant` the schema's first required key, all
    of `_table", "arguments": {"restaurant": "` is forced."""
    spec = {"version": "hermes", "tools": [BOOK, WEATHER], "tool_choice": "required"}
    written = encode("book")
    d = drafter(spec, written)
    draft = d.draft(written, 8)
    assert list(draft.tokens) == encode('_table", "arguments": {"restaurant": "')[:8]
    assert all(draft.forced)
    # drafting left the matcher where it was: the model's own next token is still accepted
    assert d.matcher.accept_token(encode("_")[0])


def test_optional_whitespace_gets_json_dumps_separators_not_forced():
    """v3.llama3's JSON allows whitespace around `:`; the draft guesses json.dumps's `: ` and runs
    on, the key itself counted as forced, the separator as a guess."""
    spec = {"version": "v3.llama3", "tools": [BOOK], "tool_choice": {"type": "function", "function": {"name": "book_table"}}}
    written = encode('{"')
    d = drafter(spec, written)
    draft = d.draft(written, 6)
    text = tok().decode(list(draft.tokens))
    assert text.startswith('restaurant": "'), text
    assert draft.forced[0] and not all(draft.forced)


def test_argument_values_are_copied_from_the_prompt():
    spec = {"version": "hermes", "tools": [BOOK], "tool_choice": "required"}
    prompt = encode("Please book a table at Luigi's Trattoria for four.")
    output = encode('book_table", "arguments": {"restaurant": "Luigi\'s')
    d = drafter(spec, output)
    draft = d.draft(prompt + output, 4)
    assert tok().decode(list(draft.tokens)).startswith(" Trattoria"), tok().decode(list(draft.tokens))
    assert not any(draft.forced)


def test_unconstrained_requests_get_prompt_lookup_only():
    d = RequestDrafter(encode)
    prompt = encode("the quick brown fox jumps over the lazy dog. the quick")
    d.advance([])
    draft = d.draft(prompt, 3)
    assert tok().decode(list(draft.tokens)) == " brown fox jumps"


def test_nothing_is_drafted_after_the_grammar_ends():
    spec = {"version": "hermes", "tools": [WEATHER], "tool_choice": "none"}
    d = drafter(spec)
    eos = tok().eos_token_id
    d.advance([*encode("hi"), eos])
    assert d.matcher.is_terminated()
    assert d.draft(encode("hi hi"), 4).tokens == ()


# -- every draft is one vLLM keeps whole, for random schemas, formats and tool_choice ----------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=requests(), seed=st.integers(0, 2**32 - 1))
def test_drafts_are_valid_under_the_grammar_and_leave_the_matcher_unchanged(spec, seed):
    rng = random.Random(seed)
    walk = matcher(spec)  # the "model": random allowed tokens, or the draft's first token
    d = drafter(spec)
    info = _STATE["info"]
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    prompt = encode("Call get_weather for Paris, then answer in JSON: {\"city\": \"Paris\"}.")
    output: list[int] = []
    for _ in range(60):
        if walk.is_terminated():
            break
        draft = d.draft(prompt + output, 5)
        check = walk.fork()
        for token in draft.tokens:  # vLLM's validate_tokens keeps it all
            assert check.accept_token(token), (spec, tok().decode(output), draft)
        if draft.tokens and rng.random() < 0.6:
            token = draft.tokens[0]
        else:
            walk.fill_next_token_bitmask(bitmask)
            bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[: info.vocab_size]
            token = int(rng.choice(np.flatnonzero(bits)))
        assert walk.accept_token(token)
        output.append(token)
        d.advance(output)
        assert not d.broken  # the drafter's matcher accepted what the walk accepted
    assert d.consumed == len(output)


def test_grammar_cache_compiles_in_the_background_and_reports_failures():
    tok()
    cache = GrammarCache(_STATE["compiler"])
    tag = structural_tag_json({"version": "hermes", "tools": [BOOK], "tool_choice": "required"})
    try:
        assert cache.get(tag, wait_s=60) is not None
        assert cache.get(tag) is not None  # ready at once from then on
        assert cache.get('{"type": "structural_tag", "format": {"type": "nonsense"}}', wait_s=60) is None
    finally:
        cache.close()


# -- the server's configuration -------------------------------------------------------------------------


def _engine(speculative=None):
    return types.SimpleNamespace(speculative_config=speculative)


def test_configure_speculation():
    e = _engine()
    assert configure_speculation(e, True, grammar_backend="xgrammar", grammar_sampling=None, default_on=False)
    assert e.speculative_config == {"method": "custom_class", "model": PROPOSER_CLASS, "num_speculative_tokens": 5}
    assert speculative_config(3)["num_speculative_tokens"] == 3

    e = _engine()
    assert not configure_speculation(e, None, grammar_backend="xgrammar", grammar_sampling=None, default_on=False)
    assert e.speculative_config is None
    assert configure_speculation(e, None, grammar_backend="xgrammar", grammar_sampling=None, default_on=True)

    theirs = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    e = _engine(dict(theirs))
    assert not configure_speculation(e, None, grammar_backend="xgrammar", grammar_sampling=None, default_on=True)
    assert e.speculative_config == theirs  # a user's own proposer is kept
    with pytest.raises(ValueError, match="--speculative-config"):
        configure_speculation(e, True, grammar_backend="xgrammar", grammar_sampling=None, default_on=False)

    with pytest.raises(ValueError, match="lm-format-enforcer"):
        configure_speculation(_engine(), True, grammar_backend="lm-format-enforcer", grammar_sampling=None,
                              default_on=False)
    e = _engine()  # lm-format-enforcer with grammar sampling off: nothing to conflict with
    assert configure_speculation(e, True, grammar_backend="lm-format-enforcer", grammar_sampling=False,
                                 default_on=False)
    assert not configure_speculation(_engine(), None, grammar_backend="lm-format-enforcer", grammar_sampling=None,
                                     default_on=True)


# -- the proposer's bookkeeping over a batch (vLLM's model runner shape, no engine) ------------------


def _runner(requests):
    return types.SimpleNamespace(
        input_batch=types.SimpleNamespace(req_ids=list(requests)),
        requests={r: types.SimpleNamespace(sampling_params=p, num_prompt_tokens=n) for r, (p, n) in requests.items()},
    )


def test_proposer_drafts_per_request_counts_acceptance_and_forgets_finished_requests():
    from functionary.backends import vllm_speculation as vs

    spec = {"version": "hermes", "tools": [BOOK, WEATHER], "tool_choice": "required"}
    constrained = types.SimpleNamespace(
        structured_outputs=types.SimpleNamespace(structural_tag=structural_tag_json(spec)), all_stop_token_ids=[], temperature=0.0)
    plain = types.SimpleNamespace(structured_outputs=None, all_stop_token_ids=[], temperature=0.0)
    prompt_a = encode("Book Luigi's for 4.")
    prompt_b = encode("the quick brown fox jumps over the lazy dog. the quick")
    runner = _runner({"a": (constrained, len(prompt_a)), "b": (plain, len(prompt_b))})
    proposer = vs.ToolCallProposer.for_runner(runner, tok(), k=5)
    proposer.grammars.get(structural_tag_json(spec), wait_s=60)  # compiled: drafting uses it from step one
    vs.reset_stats()

    def step(histories, sampled):
        width = max(len(h) for h in histories)
        ids = np.zeros((len(histories), width + 8), dtype=np.int64)
        for i, h in enumerate(histories):
            ids[i, : len(h)] = h
        return proposer.propose(sampled, np.array([len(h) for h in histories]), ids)

    out_a = encode("book")
    drafts = step([prompt_a + out_a, prompt_b], [out_a, [prompt_b[-1]]])
    assert drafts[0] == encode('_table", "arguments": {"restaurant": "')[:5]
    assert tok().decode(drafts[1]) == " brown fox jumps over the"
    # the model took 3 of a's draft (then its own token) and none of b's
    took = drafts[0][:3] + encode(' "')  # `_`, `table`, `",` then the model's own ` "`
    out_a = out_a + took
    again = step([prompt_a + out_a, prompt_b + encode(" red")], [took, encode(" red")])
    assert not proposer._requests["a"].drafter.broken
    stats = vs.stats_snapshot()
    assert stats["accepted"] == 3 and stats["accepted_forced"] == 3 and stats["drafted"] == 10 + sum(map(len, again))
    assert vs.live_request_ids() >= {"a", "b"}
    # b finished (or was aborted): the next step's batch no longer holds it
    runner.input_batch.req_ids = ["a"]
    step([prompt_a + out_a], [took[-1:]])
    assert "b" not in proposer._requests and "a" in proposer._requests
    # prefill chunks get no draft
    assert step([prompt_a + out_a], [[]]) == [[]]
    # a sampled request is drafted for in a small batch only (most of its draft is refused)
    sampled = types.SimpleNamespace(structured_outputs=constrained.structured_outputs, all_stop_token_ids=[],
                                    temperature=0.7)
    book = encode("book")
    big = [f"s{i}" for i in range(vs.SAMPLED_BATCH_LIMIT + 1)]
    runner.input_batch.req_ids = big
    runner.requests.update({r: types.SimpleNamespace(sampling_params=sampled, num_prompt_tokens=len(prompt_a))
                            for r in big})
    assert step([prompt_a + book] * len(big), [book] * len(big)) == [[]] * len(big)
    runner.input_batch.req_ids = big[:1]
    assert step([prompt_a + book], [book]) == [encode('_table", "arguments": {"restaurant": "')[:5]]


def dataclass_free(ns, **changes):
    return types.SimpleNamespace(**{**vars(ns), **changes})


def test_server_refuses_both_speculation_flags_at_start(capsys):
    pytest.importorskip("vllm")
    import server_vllm

    ngram = json.dumps({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2})
    with pytest.raises(SystemExit) as exit_info:
        server_vllm.main(["--speculate-tool-calls", "--speculative-config", ngram])
    assert exit_info.value.code == 2
    assert "--speculate-tool-calls cannot be combined with --speculative-config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server_vllm.main(["--speculate-tool-calls", "--grammar-backend", "lm-format-enforcer"])
    assert "needs --grammar-backend xgrammar" in capsys.readouterr().err
