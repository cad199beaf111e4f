"""Token level: which token ids may come next, for a character-level state.

`TokenizerIndex` is built once per tokenizer: every token's bytes (byte-level BPE and
SentencePiece byte fallback are handled at the byte level, so characters split over several
tokens, such as most CJK characters, can be generated), a byte trie of the regular tokens, and
per set of "interesting" characters a mask of the tokens that free text accepts as they are plus
a trie of the rest. Special tokens are left out of the trie; those whose text is (part of) one of
the format's markers are checked one by one, and end-of-sequence ids are allowed where the
output may end.

`TokenCursor` is the per-request cursor: `mask()` (a numpy bool array over the vocabulary,
cached by state where the state allows it) and `advance(token_id)`.
"""
from __future__ import annotations

import codecs
import re
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .cache import LRUCache
from .errors import GrammarViolation
from .states import DONE

MASK_CACHE_SIZE = 512
# A walk that enters free text inside a token uses a per-node index instead of walking the
# node's subtree, when the subtree holds at least this many tokens.
SHORTCUT_MIN_TOKENS = 48

# A trie node: [children {byte: node}, token ids, token ids reached after a boring prefix,
# number of tokens in the subtree (main trie only; 0 elsewhere)]
Node = list


def _new_node() -> Node:
    return [{}, [], [], 0]


def _count(node: Node) -> int:
    n = len(node[1]) + sum(_count(child) for child in node[0].values())
    node[3] = n
    return n


def _descendants(node: Node, prefix: bytes, out: list) -> None:
    """(token id, bytes after `node`) of every token strictly below `node`."""
    for b, child in node[0].items():
        rest = prefix + bytes((b,))
        out.extend((tid, rest) for tid in child[1])
        _descendants(child, rest, out)


class _Acc:
    """Token ids collected by a walk: single ids and whole arrays."""

    __slots__ = ("ids", "arrays")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.arrays: list[np.ndarray] = []

    def mark(self, m: np.ndarray) -> None:
        if self.ids:
            m[self.ids] = True
        for a in self.arrays:
            m[a] = True


def _utf8_len(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 0  # continuation byte or invalid lead


def _valid_partial(buf: bytes) -> bool:
    """`buf` (shorter than its character) can still become a valid UTF-8 character (no
    overlong form, no surrogate, nothing above U+10FFFF). Python's incremental decoder keeps
    surrogate prefixes (ED A0..BF) pending, so the ranges are checked here."""
    lead = buf[0]
    if _utf8_len(lead) < 2 or len(buf) >= _utf8_len(lead):
        return False
    if len(buf) >= 2:
        lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))
        if not lo <= buf[1] <= hi:
            return False
    return all(0x80 <= b <= 0xBF for b in buf[2:])


def _split_utf8(data: bytes) -> Optional[tuple[str, bytes]]:
    """(complete characters, bytes of a last unfinished one) or None if `data` is not UTF-8
    from a character boundary."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return None
    rest = decoder.getstate()[0]
    if rest and not _valid_partial(rest):
        return None
    return text, rest


def _prefix_ok(chars: Iterable[str], buf: bytes) -> bool:
    """Some (non-ASCII) character in `chars` starts with the bytes `buf`."""
    return any(ord(c) >= 0x80 and c.encode("utf-8").startswith(buf) for c in chars)


def _subtree_tokens(node: Node, out: list) -> None:
    out.extend(node[1])
    out.extend(node[2])
    for child in node[0].values():
        _subtree_tokens(child, out)


class _FreeIndex:
    """For one set of interesting ASCII characters and some tokens (all regular tokens, or the
    ones below a trie node with their remaining bytes): the tokens free text takes as they are
    (`ids`, `char_len`: no interesting character, valid UTF-8 from a character boundary, maybe
    ending inside a character) and a trie of the others keyed by their bytes from the first
    interesting character (a free state is unchanged by what comes before it)."""

    def __init__(self, items: Iterable[tuple[int, bytes]], interesting: frozenset) -> None:
        self.root: Node = _new_node()
        pattern = re.compile(b"[" + b"".join(re.escape(bytes([ord(c)])) for c in sorted(interesting)) + b"]")
        ids: list[int] = []
        lens: list[int] = []
        for tid, data in items:
            m = pattern.search(data)
            if m is None:
                if data.isascii():
                    ids.append(tid)
                    lens.append(len(data))
                    continue
                split = _split_utf8(data)
                if split is None:
                    continue
                ids.append(tid)
                lens.append(len(split[0]) + (1 if split[1] else 0))
                continue
            k = m.start()
            try:
                j = len(data[:k].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            node = self.root
            for b in data[k:]:
                child = node[0].get(b)
                if child is None:
                    child = node[0][b] = _new_node()
                node = child
            (node[1] if j == 0 else node[2]).append(tid)
        self.ids = np.array(ids, dtype=np.int64)
        self.char_len = np.array(lens, dtype=np.int32)

    def boring(self, max_len: Optional[int]) -> np.ndarray:
        return self.ids if max_len is None else self.ids[self.char_len <= max_len]


class TokenizerIndex:
    """Everything the token layer needs about one tokenizer (build once, share)."""

    def __init__(
        self,
        token_bytes: Sequence[Optional[bytes]],
        special_tokens: Mapping[int, str],
        eos_token_ids: Iterable[int],
        vocab_size: Optional[int] = None,
    ) -> None:
        self.vocab_size = int(vocab_size if vocab_size is not None else len(token_bytes))
        self.token_bytes = list(token_bytes[: self.vocab_size])
        self.token_bytes += [None] * (self.vocab_size - len(self.token_bytes))
        self.special_tokens = {i: s for i, s in special_tokens.items() if 0 <= i < self.vocab_size}
        self.eos_token_ids = tuple(sorted({i for i in eos_token_ids if i is not None and 0 <= i < self.vocab_size}))
        self.regular = [
            (tid, data) for tid, data in enumerate(self.token_bytes)
            if data and tid not in self.special_tokens
        ]
        self.root: Node = _new_node()
        self.first_byte = np.full(self.vocab_size, -1, dtype=np.int16)
        for tid, data in self.regular:
            node = self.root
            for b in data:
                child = node[0].get(b)
                if child is None:
                    child = node[0][b] = _new_node()
                node = child
            node[1].append(tid)
            self.first_byte[tid] = data[0]
        _count(self.root)
        self.eos_mask = np.zeros(self.vocab_size, dtype=bool)
        self.eos_mask[list(self.eos_token_ids)] = True
        self.eos_mask.flags.writeable = False
        self._free: dict[frozenset, tuple[_FreeIndex, np.ndarray]] = {}
        self._sub: dict[tuple, _FreeIndex] = {}
        self._specials: dict[tuple, tuple] = {}
        self._masks: "LRUCache[np.ndarray]" = LRUCache(MASK_CACHE_SIZE)
        self._lock = threading.RLock()

    # -- construction from a Hugging Face tokenizer ---------------------------------------------

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, vocab_size: Optional[int] = None, eos_token_ids: Optional[Iterable[int]] = None
    ) -> "TokenizerIndex":
        token_bytes, specials = hf_token_bytes(tokenizer)
        eos = set(eos_token_ids or ())
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(tokenizer.eos_token_id)
        return cls(token_bytes, specials, eos, vocab_size if vocab_size is not None else len(token_bytes))

    # -- per grammar -----------------------------------------------------------------------------

    def marker_specials(self, marker_texts: Iterable[str]) -> tuple:
        """(id, bytes) of the special tokens whose text is part of one of the markers."""
        key = tuple(sorted(set(marker_texts)))
        hit = self._specials.get(key)
        if hit is None:
            hit = tuple(
                (tid, text.encode("utf-8")) for tid, text in sorted(self.special_tokens.items())
                if text and any(text in m for m in key)
            )
            self._specials[key] = hit
        return hit

    def cursor(self, grammar: Any, state: Any = None) -> "TokenCursor":
        return TokenCursor(self, grammar, state)

    # -- stepping --------------------------------------------------------------------------------

    def feed(self, state: Any, pending: bytes, data: bytes) -> Optional[tuple]:
        """(state, pending bytes) after `data`, or None where a byte is not allowed."""
        for b in data:
            if pending:
                if not 0x80 <= b < 0xC0:
                    return None
                buf = pending + bytes((b,))
                if len(buf) < _utf8_len(buf[0]):
                    if not _valid_partial(buf):
                        return None
                    allowed = state.allowed()
                    if not allowed.negated and not _prefix_ok(allowed.chars, buf):
                        return None
                    pending = buf
                    continue
                try:
                    c = buf.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                pending = b""
            elif b < 0x80:
                c = chr(b)
            else:
                if _utf8_len(b) < 2:
                    return None
                allowed = state.allowed()
                if not allowed.negated and not _prefix_ok(allowed.chars, bytes((b,))):
                    return None
                pending = bytes((b,))
                continue
            if c not in state.allowed():
                return None
            state = state.step(c)
            if state is None:
                return None
        return state, pending

    # -- masks -----------------------------------------------------------------------------------

    def mask(self, state: Any, pending: bytes = b"", specials: Sequence[tuple] = ()) -> np.ndarray:
        """Allowed token ids after `state` (+ `pending` bytes of a split character), as a bool
        array. Do not modify the result: it may be cached."""
        if state is DONE:
            return self.eos_mask
        k = state.key()
        return self._cached(None if k is None else ("mask", k, pending),
                            lambda: self._compute(state, pending, specials))

    @staticmethod
    def is_cached(mask: np.ndarray) -> bool:
        """Whether `mask` is a shared cached array (read-only; safe to key by identity)."""
        return not mask.flags.writeable

    def _cached(self, key: Any, build: Callable[[], np.ndarray]) -> np.ndarray:
        """`build()`, cached (read-only) under `key`; uncached (and writeable) when key is None."""
        if key is None:
            return build()

        def frozen() -> np.ndarray:
            m = build()
            m.flags.writeable = False
            return m

        return self._masks.get(key, frozen)

    def _compute(self, state: Any, pending: bytes, specials: Sequence[tuple]) -> np.ndarray:
        acc = _Acc()
        fi = None if pending else state.free()
        if fi is None:
            m = np.zeros(self.vocab_size, dtype=bool)
            self._walk(self.root, state, pending, acc, False)
        elif not fi.pending:
            m = self._free_mask(state, fi).copy()
        else:
            cont = bytes(sorted(ord(c) for c in fi.pending))
            m = self._free_mask(fi.base, fi) & ~np.isin(self.first_byte, np.frombuffer(cont, dtype=np.uint8))
            self._walk(self.root, state, b"", acc, False, restrict=cont)
        for tid, data in specials:
            if self.feed(state, pending, data) is not None:
                acc.ids.append(tid)
        acc.mark(m)
        if not pending and state.can_end():
            m |= self.eos_mask
        return m

    def _free_mask(self, state: Any, fi: Any) -> np.ndarray:
        """Tokens a free state (no partial marker pending) accepts. Cached when `state` has a key."""
        k = state.key()
        return self._cached(None if k is None else ("free", k, fi.max_len), lambda: self._build_free_mask(state, fi))

    def _build_free_mask(self, state: Any, fi: Any) -> np.ndarray:
        entry = self._free.get(fi.interesting)
        if entry is None:
            with self._lock:
                entry = self._free.get(fi.interesting)
                if entry is None:
                    fx = _FreeIndex(self.regular, fi.interesting)
                    dense = np.zeros(self.vocab_size, dtype=bool)
                    dense[fx.ids] = True
                    entry = self._free[fi.interesting] = (fx, dense)
        fx, dense = entry
        bounded = fi.max_len is not None
        if bounded:
            m = np.zeros(self.vocab_size, dtype=bool)
            m[fx.boring(fi.max_len)] = True
        else:
            m = dense.copy()
        acc = _Acc()
        self._walk(fx.root, state, b"", acc, bounded)
        acc.mark(m)
        return m

    def _sub_index(self, node: Node, interesting: frozenset) -> _FreeIndex:
        key = (id(node), interesting)
        sub = self._sub.get(key)
        if sub is None:
            items: list = []
            _descendants(node, b"", items)
            with self._lock:
                sub = self._sub.setdefault(key, _FreeIndex(items, interesting))
        return sub

    def _walk(self, node: Node, state: Any, pending: bytes, out: _Acc, bounded: bool,
              restrict: Optional[bytes] = None) -> None:
        """Collect the tokens below `node` whose remaining bytes `state` accepts."""
        children = node[0]
        if not children:
            return
        allowed = state.allowed()
        if pending:
            need = _utf8_len(pending[0])
            for b, child in children.items():
                if not 0x80 <= b < 0xC0:
                    continue
                buf = pending + bytes((b,))
                if len(buf) < need:
                    if not _valid_partial(buf) or (not allowed.negated and not _prefix_ok(allowed.chars, buf)):
                        continue
                    self._take(child, state, buf, out, bounded)
                    continue
                try:
                    c = buf.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if c not in allowed:
                    continue
                nxt = state.step(c)
                if nxt is not None:
                    self._take(child, nxt, b"", out, bounded)
            return
        if restrict is not None:
            items = [(b, children[b]) for b in restrict if b in children]
        elif not allowed.negated and len(allowed.chars) < len(children):
            wanted = {ord(c) if ord(c) < 0x80 else c.encode("utf-8")[0] for c in allowed.chars}
            items = [(b, children[b]) for b in wanted if b in children]
        else:
            items = children.items()
        for b, child in items:
            if b < 0x80:
                c = chr(b)
                if c not in allowed:
                    continue
                nxt = state.step(c)
                if nxt is not None:
                    self._take(child, nxt, b"", out, bounded)
            elif _utf8_len(b) >= 2:
                buf = bytes((b,))
                if not allowed.negated and not _prefix_ok(allowed.chars, buf):
                    continue
                self._take(child, state, buf, out, bounded)

    def _take(self, child: Node, state: Any, pending: bytes, out: _Acc, bounded: bool) -> None:
        if state is DONE and not pending:
            # The turn ended inside this token: the rest of the token is cut by the engine.
            sub: list = []
            _subtree_tokens(child, sub)
            out.ids.extend(sub)
            return
        out.ids.extend(child[1])
        if not bounded and child[2]:
            out.ids.extend(child[2])
        if not child[0]:
            return
        if not pending and child[3] >= SHORTCUT_MIN_TOKENS:
            fi = state.free()
            if fi is not None and not fi.pending:
                # Free text from here on: take the subtree from its index instead of walking it.
                sub_index = self._sub_index(child, fi.interesting)
                out.arrays.append(sub_index.boring(fi.max_len))
                self._walk(sub_index.root, state, b"", out, fi.max_len is not None)
                return
        self._walk(child, state, pending, out, bounded)


class TokenCursor:
    """One request's position: the character-level state plus bytes of a split character."""

    __slots__ = ("index", "grammar", "state", "pending", "specials", "_special_bytes", "tokens")

    def __init__(self, index: TokenizerIndex, grammar: Any, state: Any = None) -> None:
        self.index = index
        self.grammar = grammar
        self.state = grammar.initial_state if state is None else state
        self.pending = b""
        self.specials = index.marker_specials(grammar.marker_texts())
        self._special_bytes = dict(self.specials)
        self.tokens = 0

    @property
    def done(self) -> bool:
        return self.state is DONE

    def can_end(self) -> bool:
        """Whether the output may end here (an end-of-sequence token is allowed)."""
        return not self.pending and self.state.can_end()

    def mask(self) -> np.ndarray:
        return self.index.mask(self.state, self.pending, self.specials)

    def _next(self, token_id: int) -> Optional[tuple]:
        index = self.index
        data = self._special_bytes.get(token_id)
        if data is None and 0 <= token_id < index.vocab_size and token_id not in index.special_tokens:
            data = index.token_bytes[token_id]
        if data:
            r = index.feed(self.state, self.pending, data)
            if r is not None:
                return r
        if token_id in index.eos_token_ids and not self.pending and self.state.can_end():
            return DONE, b""
        return None

    def allows(self, token_id: int) -> bool:
        return self._next(token_id) is not None

    def advance(self, token_id: int) -> None:
        r = self._next(token_id)
        if r is None:
            raise GrammarViolation(f"token {token_id} is not allowed in state {self.state!r}")
        self.state, self.pending = r
        self.tokens += 1


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizers -> token bytes


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (byte-level BPE vocabularies use it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def hf_token_bytes(tokenizer: Any) -> tuple[list[Optional[bytes]], dict[int, str]]:
    """(bytes of every token id or None, {special token id: text})."""
    size = len(tokenizer)
    specials: dict[int, str] = {}
    added_regular: dict[int, str] = {}
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        content = getattr(tok, "content", str(tok))
        if getattr(tok, "special", False):
            specials[tid] = content
        else:
            added_regular[tid] = content
    for tid in getattr(tokenizer, "all_special_ids", ()) or ():
        if tid is not None and tid not in specials:
            specials[tid] = tokenizer.convert_ids_to_tokens(tid)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    out: list[Optional[bytes]] = [None] * size
    if _is_byte_level(tokenizer):
        for tid, piece in enumerate(pieces):
            if tid in specials:
                continue
            if tid in added_regular:
                out[tid] = added_regular[tid].encode("utf-8")
            elif piece is not None and all(ch in _BYTE_DECODER for ch in piece):
                out[tid] = bytes(_BYTE_DECODER[ch] for ch in piece)
        return out, specials
    # SentencePiece-like: decode after a "0" token to keep a word's leading space.
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    zero_text = tokenizer.decode([zero])
    for tid, piece in enumerate(pieces):
        if tid in specials:
            continue
        m = _BYTE_FALLBACK.match(piece or "")
        if m:
            out[tid] = bytes([int(m.group(1), 16)])
            continue
        text = tokenizer.decode([zero, tid])[len(zero_text):]
        if text and "\ufffd" not in text:
            out[tid] = text.encode("utf-8")
    return out, specials


_INDEXES: "OrderedDict[tuple, TokenizerIndex]" = OrderedDict()
_INDEX_LOCK = threading.Lock()


def index_for_tokenizer(tokenizer: Any, vocab_size: Optional[int] = None,
                        eos_token_ids: Optional[Iterable[int]] = None) -> TokenizerIndex:
    """A `TokenizerIndex`, built once per (tokenizer object, vocab size, eos ids)."""
    key = (id(tokenizer), vocab_size, tuple(sorted(eos_token_ids or ())))
    with _INDEX_LOCK:
        entry = _INDEXES.get(key)
        if entry is not None and entry[0] is tokenizer:
            return entry[1]
    index = TokenizerIndex.from_tokenizer(tokenizer, vocab_size, eos_token_ids)
    with _INDEX_LOCK:
        _INDEXES[key] = (tokenizer, index)
        while len(_INDEXES) > 4:
            _INDEXES.popitem(last=False)
    return index
