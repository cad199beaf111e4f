"""Draft tokens for speculative decoding of tool calls: what the grammar forces, what the prompt holds.

Under grammar sampling many tokens of a tool call are fixed before the model computes anything:
the rest of a function name once its prefix is unique, the JSON keys in schema order, quotes,
colons, braces. Many argument values are copied from the user's message. A draft of both lets
the target model check several tokens in one forward pass; the engine verifies every drafted
token against the model (and vLLM against the grammar), so drafts change speed, never output.

* `prompt_lookup`: n-gram prompt lookup (the continuation of the latest earlier occurrence of
  the history's last n tokens, longest n first).
* `RequestDrafter`: one request's xgrammar `GrammarMatcher`, advanced by the tokens the
  request has produced; `draft(history, k)` drafts up to k tokens: the jump-forward string the
  grammar forces (tokenised as the model's tokenizer writes it), then prompt lookup, each token
  checked against the grammar, alternating until k tokens or neither has anything.
* `GrammarCache`: structural tag JSON -> xgrammar `CompiledGrammar`, compiled on a background
  thread so that a new tool set never stalls the caller (the engine's step); until it is ready
  the request is drafted by prompt lookup alone.

Engine-free: needs xgrammar, numpy and a tokenizer's `encode`; no vLLM. The vLLM side (which
request is which, where the tag travels) is `functionary.backends.vllm_speculation`.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: n-gram sizes for prompt lookup. 1 is worth it under a grammar: a value's first token after a
#: quote rarely matches a longer n-gram of the prompt (" Paris" in the message, "Paris" after
#: `"`), and the grammar already rejects most wrong guesses before they cost a verification.
DEFAULT_MIN_NGRAM = 1
DEFAULT_MAX_NGRAM = 4
#: Separators tried after a forced string (or at a point of JSON structure): json.dumps's.
JSON_SEPARATOR_PROBES = (': "', ": ", ', "', ", ", ' "', "}")
#: A character JSON allows only inside strings (and free text allows anywhere).
_ANY_CHAR = "@"


def _accepts_string(m: Any, text: str) -> bool:
    """Whether the matcher accepts `text` from its state (state left unchanged)."""
    if not text:
        return False
    if m.accept_string(text):
        m.rollback(1)  # accept_string is one rollback step
        return True
    return False


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_lookup(history: Sequence[int], k: int, min_n: int = DEFAULT_MIN_NGRAM,
                  max_n: int = DEFAULT_MAX_NGRAM) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the history's last n
    tokens (n from `max_n` down to `min_n`; the longest match wins). [] when nothing matches."""
    h = np.asarray(history, dtype=np.int64)
    size = len(h)
    if k <= 0 or size < 2:
        return []
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        pattern = h[size - n:]
        # starts s with s + n <= size - 1: an occurrence that has at least one token after it
        starts = np.flatnonzero(h[: size - n] == pattern[0])
        for j in range(1, n):
            if not starts.size:
                break
            starts = starts[h[starts + j] == pattern[j]]
        if starts.size:
            s = int(starts[-1]) + n
            return h[s: s + k].tolist()
    return []


@dataclass(frozen=True)
class Draft:
    """Drafted tokens; `forced[i]` says whether token i was forced by the grammar (else looked up)."""

    tokens: tuple[int, ...] = ()
    forced: tuple[bool, ...] = ()

    @property
    def num_forced(self) -> int:
        return sum(self.forced)


class _EncodeCache:
    """A tokenizer's encoding of forced strings, cached (the same keys and separators recur)."""

    def __init__(self, encode: Callable[[str], Sequence[int]], size: int = 4096) -> None:
        self._encode = encode
        self._size = size
        self._items: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()

    def __call__(self, text: str) -> tuple[int, ...]:
        hit = self._items.get(text)
        if hit is not None:
            self._items.move_to_end(text)
            return hit
        ids = tuple(int(t) for t in self._encode(text))
        self._items[text] = ids
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return ids


#: One tokenizer's cache shared by many drafters (the llama.cpp engine keeps one for all requests).
EncodeCache = _EncodeCache


class RequestDrafter:
    """One request's drafting state: a grammar matcher (None: unconstrained, or the grammar is not
    compiled yet) and how many of the request's output tokens it has consumed."""

    def __init__(self, encode: Callable[[str], Sequence[int]], *, min_n: int = DEFAULT_MIN_NGRAM,
                 max_n: int = DEFAULT_MAX_NGRAM, probes: Sequence[str] = JSON_SEPARATOR_PROBES) -> None:
        self._encode = encode if isinstance(encode, _EncodeCache) else _EncodeCache(encode)
        self.min_n = min_n
        self.max_n = max_n
        self.probes = tuple(probes)
        self.matcher: Any = None
        self.consumed = 0  # output tokens the matcher has accepted (or skipped, once broken)
        self.broken = False  # the matcher refused a real token: stop trusting it

    def attach(self, matcher: Any, output: Sequence[int]) -> None:
        """Start using `matcher` (fresh, at the grammar's start), catching up on `output`."""
        self.matcher = matcher
        self.consumed = 0
        self.advance(output)

    def advance(self, output: Sequence[int]) -> None:
        """Feed the request's output tokens not yet seen (`output` is all of them so far)."""
        if len(output) < self.consumed:  # output shrank (never in vLLM today): start over
            self.matcher = None if self.matcher is None else self._reset()
        new = output[self.consumed:]
        self.consumed = len(output)
        m = self.matcher
        if m is None or self.broken:
            return
        for token in new:
            if m.is_terminated():
                return
            if not m.accept_token(int(token)):
                logger.debug("grammar refused produced token %s; drafting by lookup only", token)
                self.broken = True
                return

    def _reset(self) -> Any:
        self.matcher.reset()
        self.consumed = 0
        self.broken = False
        return self.matcher

    @property
    def constrained(self) -> bool:
        return self.matcher is not None and not self.broken

    def draft(self, history: Sequence[int], k: int) -> Draft:
        """Up to `k` tokens to follow `history` (prompt + output, all consumed by `advance`)."""
        if k <= 0:
            return Draft()
        if not self.constrained:
            looked = prompt_lookup(history, k, self.min_n, self.max_n)
            return Draft(tuple(looked), (False,) * len(looked))
        m = self.matcher
        tokens: list[int] = []
        forced: list[bool] = []
        accepted = 0
        try:
            while len(tokens) < k and not m.is_terminated():
                progressed = False
                jump, probe = self._forced_text(m)
                if jump or probe:
                    ids = self._encode(jump + probe)
                    # Tokens inside the forced string are forced; where it merges into the
                    # guessed separator (`"` + `: ` -> `":`, ` `) they are guesses.
                    n_forced = _common_prefix(ids, self._encode(jump)) if probe else len(ids)
                    for i, token in enumerate(ids):
                        if len(tokens) >= k or not m.accept_token(token):
                            break
                        accepted += 1
                        tokens.append(token)
                        forced.append(i < n_forced)
                        progressed = True
                if len(tokens) >= k or m.is_terminated():
                    break
                if progressed:
                    continue  # the grammar may force more after that
                for token in self._lookup(history, tokens, k - len(tokens)):
                    if not m.accept_token(token):
                        break
                    accepted += 1
                    tokens.append(token)
                    forced.append(False)
                    progressed = True
                    if m.is_terminated() or self._forced_text(m) != ("", ""):
                        break  # the grammar takes over again (a value ended: `", "key": "`)
                if not progressed:
                    break
        finally:
            if accepted:
                m.rollback(accepted)
        return Draft(tuple(tokens), tuple(forced))

    def _forced_text(self, m: Any) -> tuple[str, str]:
        """(the string the grammar forces from here, the likeliest separator after it).

        JSON in most formats allows whitespace around `:` and `,`, so the grammar forces
        `"city"` but not the `: ` the model writes after it (json.dumps's separators, as in
        the prompts' examples). Guessing the separator lets the draft run on into the next
        forced key. Only in JSON's structure, never inside a string or free text, where any
        character may come next (`_ANY_CHAR` tells them apart)."""
        try:
            jump = m.find_jump_forward_string()
        except UnicodeDecodeError:  # the forced bytes end inside a character: draft nothing forced
            jump = ""
        if self.probes and not _accepts_string(m, jump + _ANY_CHAR):
            for probe in self.probes:
                if _accepts_string(m, jump + probe):
                    return jump, probe
        return jump, ""

    def _lookup(self, history: Sequence[int], drafted: list[int], k: int) -> list[int]:
        """Prompt lookup continuing the draft so far (its suffix may end in drafted tokens)."""
        if drafted:
            history = np.concatenate([np.asarray(history, dtype=np.int64), np.asarray(drafted, dtype=np.int64)])
        return prompt_lookup(history, k, self.min_n, self.max_n)


class GrammarCache:
    """Structural tag JSON -> compiled xgrammar grammar, compiled on one background thread.

    `get(tag)` returns the compiled grammar, or None while it compiles (the first call starts
    the compile) or when it failed (logged once; vLLM itself refuses such a request)."""

    def __init__(self, compiler: Any, size: int = 64) -> None:
        self._compiler = compiler
        self._size = size
        self._items: "OrderedDict[str, concurrent.futures.Future]" = OrderedDict()
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="functionary-draft-grammar")

    def get(self, tag_json: str, wait_s: float = 0.0) -> Any:
        with self._lock:
            future = self._items.get(tag_json)
            if future is None:
                future = self._pool.submit(self._compiler.compile_structural_tag, tag_json)
                self._items[tag_json] = future
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(tag_json)
        if not future.done():
            if wait_s <= 0:
                return None
            try:
                return future.result(timeout=wait_s)
            except concurrent.futures.TimeoutError:
                return None
            except Exception:  # noqa: BLE001 - reported below
                pass
        exc = future.exception()
        if exc is not None:
            if not getattr(future, "_functionary_logged", False):
                future._functionary_logged = True  # type: ignore[attr-defined]
                logger.warning("cannot compile a structural tag for drafting: %s", exc)
            return None
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class DraftStats:
    """What drafting did: tokens drafted (forced / looked up), accepted (of which forced), and the
    requests' output tokens seen. Acceptance = accepted / drafted; forced share = forced_accepted / output."""

    drafted: int = 0
    drafted_forced: int = 0
    accepted: int = 0
    accepted_forced: int = 0
    output_tokens: int = 0
    steps: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "drafted": self.drafted,
            "drafted_forced": self.drafted_forced,
            "accepted": self.accepted,
            "accepted_forced": self.accepted_forced,
            "output_tokens": self.output_tokens,
            "steps": self.steps,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "forced_share": self.accepted_forced / self.output_tokens if self.output_tokens else 0.0,
        }


__all__ = [
    "DEFAULT_MAX_NGRAM",
    "DEFAULT_MIN_NGRAM",
    "Draft",
    "DraftStats",
    "EncodeCache",
    "GrammarCache",
    "RequestDrafter",
    "prompt_lookup",
]
