"""A scripted engine for tests of the layers above the engine (serving, HTTP).

`FakeBackend(outputs)` answers every request with scripted text instead of a model:

* `outputs` is a list of texts (choice `i` of every request gets `outputs[i % len(outputs)]`)
  or a callable `(prompt_text) -> str | list[str]` (a list gives one text per choice).
  A text may itself be a list of strings: those are then the exact deltas, one "token" each.
* Otherwise a text is cut into tokens by a small deterministic tokenizer (special tokens such
  as `<|eot_id|>` are single tokens, then words, spaces and punctuation) and streamed
  `tokens_per_delta` tokens at a time, `delay` seconds apart.
* It honours `max_tokens` (finish "length"), `stop` strings (held back until they cannot be
  the start of a stop string; never emitted), `stop_token_ids` (the token is not emitted),
  `n` (choices interleaved round-robin) and `abort` (the stream ends with finish "abort").

Everything it saw is recorded: `requests` (id, prompt ids and text, params) and `aborted`.
"""
from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional, Sequence, Union

from functionary.backends.base import GenerationDelta, GenerationParams, TokenLogprob

ScriptText = Union[str, Sequence[str]]
Script = Union[Sequence[ScriptText], Callable[[str], Union[ScriptText, Sequence[ScriptText]]]]

BOS_TOKEN = "<s>"
BOS_ID = 1
_VOCAB_BASE = 1000
_VOCAB_SIZE = 1_000_000

# Special tokens <|...|> and <s>/</s>, then runs of word characters, single whitespace
# characters (so "\n\n" is two tokens), and any other single character.
_TOKEN_RE = re.compile(r"<\|[^<>|]*\|>|</?s>|\w+|\s|[^\w\s]", re.UNICODE)


@dataclass
class RecordedRequest:
    request_id: str
    prompt_token_ids: list[int]
    prompt: str
    params: GenerationParams


@dataclass
class _ChoiceRun:
    index: int
    tokens: list[tuple[str, int]]  # (text, id) still to emit, in order
    pos: int = 0
    emitted_tokens: int = 0
    text: str = ""  # all text accepted so far (after stop handling)
    sent: int = 0  # how much of `text` was sent
    finish: Optional[str] = None


class FakeBackend:
    """Implements `functionary.backends.base.Backend` with scripted outputs."""

    def __init__(
        self,
        outputs: Script = ("Hello!",),
        *,
        model_name: str = "fake-model",
        max_model_len: int = 4096,
        tokens_per_delta: int = 1,
        delay: float = 0.0,
        add_bos: bool = True,
    ) -> None:
        self.outputs = outputs
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.tokens_per_delta = max(1, tokens_per_delta)
        self.delay = delay
        self.add_bos = add_bos
        self.healthy = True
        # When set, `generate` raises it after `error_after` deltas (0: before any; a dead engine).
        self.generate_error: Optional[BaseException] = None
        self.error_after = 0
        self.requests: list[RecordedRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.shut_down = False
        self._abort_flags: set[str] = set()
        self._pieces: dict[int, str] = {BOS_ID: BOS_TOKEN}

    # ---------------------------------------------------------------- tokenizer

    def _piece_id(self, piece: str) -> int:
        if piece == BOS_TOKEN:
            return BOS_ID
        token_id = _VOCAB_BASE + zlib.crc32(piece.encode("utf-8")) % _VOCAB_SIZE
        self._pieces.setdefault(token_id, piece)
        return token_id

    def split(self, text: str) -> list[str]:
        """The pieces `text` is cut into (concatenating them gives `text` back)."""
        return _TOKEN_RE.findall(text)

    def tokenize(self, text: str) -> list[int]:
        ids = [BOS_ID] if self.add_bos else []
        ids.extend(self._piece_id(piece) for piece in self.split(text))
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self._pieces.get(t, "") for t in token_ids if t != BOS_ID)

    # ---------------------------------------------------------------- protocol

    def _script_for(self, prompt: str, n: int) -> list[ScriptText]:
        if callable(self.outputs):
            result = self.outputs(prompt)
            if isinstance(result, str):
                return [result] * n
            result = list(result)  # one script per choice
            return [result[i % len(result)] for i in range(n)]
        texts = list(self.outputs)
        return [texts[i % len(texts)] for i in range(n)]

    def _tokens_of(self, script: ScriptText) -> list[tuple[str, int]]:
        if isinstance(script, str):
            return [(p, self._piece_id(p)) for p in self.split(script)]
        # Exact deltas: each counts as one token.
        return [(p, self._piece_id(p)) for p in script]

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams
    ) -> AsyncIterator[GenerationDelta]:
        if self.generate_error is not None and self.error_after <= 0:
            raise self.generate_error
        if request_id in self.running:
            raise ValueError(f"request id {request_id!r} is already running")
        prompt = self.decode(prompt_token_ids)
        self.requests.append(RecordedRequest(request_id, list(prompt_token_ids), prompt, params))
        n = max(1, params.n)
        runs = [
            _ChoiceRun(index=i, tokens=self._tokens_of(s))
            for i, s in enumerate(self._script_for(prompt, n))
        ]
        stops = [s for s in params.stop if s]
        hold = max((len(s) for s in stops), default=1) - 1
        stop_ids = set(params.stop_token_ids)
        self.running.add(request_id)
        finished = False
        yielded = 0
        try:
            while any(r.finish is None for r in runs):
                for run in runs:
                    if run.finish is not None:
                        continue
                    if request_id in self._abort_flags:
                        run.finish = "abort"
                        yield GenerationDelta(index=run.index, text="", finish_reason="abort")
                        continue
                    if self.generate_error is not None and yielded >= self.error_after:
                        raise self.generate_error
                    delta = self._step(run, params, stops, hold, stop_ids)
                    if delta is not None:
                        yielded += 1
                        yield delta
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    else:
                        await asyncio.sleep(0)
            finished = True
        except Exception:
            finished = True  # an engine failure, not an abort
            raise
        finally:
            self.running.discard(request_id)
            if not finished and request_id not in self.aborted:
                self.aborted.append(request_id)
            self._abort_flags.discard(request_id)

    def _step(
        self,
        run: _ChoiceRun,
        params: GenerationParams,
        stops: list[str],
        hold: int,
        stop_ids: set[int],
    ) -> Optional[GenerationDelta]:
        new_ids: list[int] = []
        new_pieces: list[str] = []
        finish: Optional[str] = None
        for _ in range(self.tokens_per_delta):
            if params.max_tokens is not None and run.emitted_tokens >= params.max_tokens:
                finish = "length"
                break
            if run.pos >= len(run.tokens):
                finish = "stop"  # end of script = EOS
                break
            piece, token_id = run.tokens[run.pos]
            run.pos += 1
            run.emitted_tokens += 1
            new_ids.append(token_id)
            new_pieces.append(piece)
            if token_id in stop_ids:
                finish = "stop"  # the stop token's text is not delivered
                break
            run.text += piece
            cut = _find_stop(run.text, stops, run.sent)
            if cut is not None:
                run.text = run.text[:cut]
                finish = "stop"
                break
        if finish is None and params.max_tokens is not None and run.emitted_tokens >= params.max_tokens:
            finish = "length"
        if finish is None and run.pos >= len(run.tokens):
            finish = "stop"
        if finish is None:
            upto = max(run.sent, len(run.text) - hold) if stops else len(run.text)
        else:
            upto = len(run.text)
        text = run.text[run.sent:upto]
        run.sent = upto
        run.finish = finish
        if not text and not new_ids and finish is None:
            return None
        logprobs = None if params.logprobs is None else [_fake_logprob(p, params.logprobs) for p in new_pieces]
        return GenerationDelta(index=run.index, text=text, token_ids=new_ids, finish_reason=finish, logprobs=logprobs)

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self._abort_flags.add(request_id)
            if request_id not in self.aborted:
                self.aborted.append(request_id)

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("fake engine is unhealthy")

    async def shutdown(self) -> None:
        self.shut_down = True


def _fake_logprob(piece: str, top: int) -> TokenLogprob:
    """A made-up but well-formed log probability: the sampled piece is the most likely token,
    followed by `top - 1` alternatives."""
    logprob = -0.25
    alternatives = [TokenLogprob(token=piece, logprob=logprob)]
    alternatives += [TokenLogprob(token=f"<alt{k}>", logprob=logprob - k) for k in range(1, top)]
    return TokenLogprob(token=piece, logprob=logprob, top=alternatives[:top])


def _find_stop(text: str, stops: list[str], sent: int) -> Optional[int]:
    """Index where the earliest stop string in `text` starts (searching only new text)."""
    best: Optional[int] = None
    for stop in stops:
        start = max(0, sent - len(stop) + 1)
        i = text.find(stop, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best
