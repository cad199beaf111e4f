"""Grammar sampling on llama.cpp's logits through xgrammar's engine-independent API.

The constraint is the same xgrammar structural tag the vLLM back end hands to vLLM's
structured outputs (`functionary.grammar.structural_tag.structural_tag_json`, built from the
one format description), compiled here with `xgrammar.GrammarCompiler` for the GGUF's own
vocabulary (or the Hugging Face tokenizer given with `--tokenizer`) and cached per tool set;
each choice drives its own `GrammarMatcher` and gets a boolean mask of the tokens allowed next.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from functionary.grammar.cache import LRUCache

_COMPILED_CACHE_SIZE = 64


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:
        raise ImportError(f"Grammar sampling on llama.cpp needs xgrammar: pip install xgrammar ({exc})") from exc
    return xgrammar


class GrammarCompilerCache:
    """Compiles structural tags for one vocabulary, at most once per tag (thread-safe enough:
    xgrammar's compiler is, and a race only compiles twice)."""

    def __init__(self, token_bytes: Sequence[bytes], stop_ids: Sequence[int], hf_tokenizer: Any = None) -> None:
        xgr = _xgrammar()
        vocab_size = len(token_bytes)
        if hf_tokenizer is not None:
            # As vLLM builds it for the same tokenizer: the same special-token handling.
            info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size,
                                                      stop_token_ids=list(stop_ids))
        else:
            # The GGUF's pieces are the tokens' exact bytes.
            info = xgr.TokenizerInfo(list(token_bytes), xgr.VocabType.RAW, vocab_size=vocab_size,
                                     stop_token_ids=list(stop_ids))
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)
        self._compiled: LRUCache[Any] = LRUCache(_COMPILED_CACHE_SIZE)

    def compile(self, structural_tag_json: str) -> Any:
        """The compiled grammar of one structural tag (JSON text), cached."""
        return self._compiled.get(structural_tag_json,
                                  lambda: self._compiler.compile_structural_tag(structural_tag_json))


class GrammarState:
    """One choice's position in the grammar: the tokens allowed next, then `accept` the one drawn."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        xgr = _xgrammar()
        self._matcher = xgr.GrammarMatcher(compiled)
        # A numpy bitmask (xgrammar fills any DLPack array): no torch needed on this path.
        self._bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
        self._vocab_size = vocab_size

    def allowed(self) -> Optional[np.ndarray]:
        """Boolean mask over the vocabulary, or None when every token is allowed."""
        if not self._matcher.fill_next_token_bitmask(self._bitmask, 0):
            return None
        words = self._bitmask[0].view(np.uint8)
        return np.unpackbits(words, bitorder="little")[: self._vocab_size].astype(bool)

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    @property
    def terminated(self) -> bool:
        return bool(self._matcher.is_terminated())


__all__ = ["GrammarCompilerCache", "GrammarState"]
