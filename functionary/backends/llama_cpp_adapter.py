"""The only module that touches llama-cpp-python's low-level (ctypes) API.

A thin, typed layer over one llama.cpp model + context: tokenize, token bytes, a multi-sequence
batch, `llama_decode`, logits rows as numpy views, and the per-sequence KV-cache operations
(`llama_memory_seq_rm` / `seq_cp` / `seq_pos_max`). Everything here must be called from one
thread (the engine thread of `functionary.backends.llama_cpp`): llama.cpp contexts are not
thread-safe.

llama_cpp is imported lazily, behind an error that names the extra to install.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

_INSTALL_HINT = "The llama.cpp backend needs llama-cpp-python: pip install 'functionary[llama-cpp]'"


def import_llama_cpp() -> Any:
    """`llama_cpp.llama_cpp` (the ctypes binding), or an ImportError naming the extra."""
    try:
        from llama_cpp import _logger
        from llama_cpp import llama_cpp as lib
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    # llama.cpp logs every graph it builds; keep its errors only (its own switch).
    _logger.set_verbose(False)
    return lib


@dataclass(frozen=True)
class LlamaConfig:
    """How to load the model and size its context."""

    model_path: str
    n_ctx: int  # tokens one sequence may hold (prompt + completion)
    n_seq: int  # sequences decoded together (slots)
    n_threads: int
    n_gpu_layers: int = 0
    n_batch: int = 512  # tokens per llama_decode call (prompt chunks + one per running sequence)
    n_ubatch: int = 32  # rows llama.cpp computes at once (prompts are split at multiples of it)
    weight_repack: bool = False  # llama.cpp's extra buffer types (AMX/CPU weight repacking)


class LlamaModelContext:
    """One GGUF model with one context whose unified KV cache holds `n_seq` sequences.

    The cache is unified (`kv_unified`) and sized `n_ctx * n_seq`, so every sequence can reach
    `n_ctx` tokens while sequences share the cells of a common prefix (`copy_prefix`).
    """

    def __init__(self, config: LlamaConfig) -> None:
        lib = import_llama_cpp()
        self._lib = lib
        self.config = config
        if not os.path.isfile(config.model_path):
            raise FileNotFoundError(f"no such GGUF file: {config.model_path}")
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = int(config.n_gpu_layers)
        # No "extra buffer types" (weights repacked at load for AMX / CPU-specific kernels): with
        # llama.cpp as built by llama-cpp-python 0.3.36, the AMX-repacked Q4_1 weights of the
        # default model crash `llama_decode` on any batch of more than one token on this
        # project's CPUs (Sapphire Rapids); the plain CPU kernels are correct and, measured
        # here, lose little on a 135M model.
        mparams.use_extra_bufts = bool(config.weight_repack)
        self.model = lib.llama_model_load_from_file(config.model_path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {config.model_path}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.model))

        cparams = lib.llama_context_default_params()
        cparams.n_ctx = int(config.n_ctx * config.n_seq)
        cparams.n_batch = int(config.n_batch)
        cparams.n_ubatch = int(config.n_ubatch)
        cparams.n_seq_max = int(config.n_seq)
        cparams.n_threads = int(config.n_threads)
        cparams.n_threads_batch = int(config.n_threads)
        cparams.kv_unified = True
        cparams.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (out of memory for the KV cache?)")
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_seq = int(lib.llama_n_seq_max(self.ctx))
        self._batch = lib.llama_batch_init(int(config.n_batch), 0, 1)
        self._batch_rows: list[int] = []  # batch index of each token, for logits lookup
        self._logits_ptr = ctypes.POINTER(ctypes.c_float)
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self.eog_ids = tuple(i for i in range(self.n_vocab) if lib.llama_vocab_is_eog(self.vocab, i))
        self.token_bytes = [self._piece(i) for i in range(self.n_vocab)]
        self.closed = False

    # ---- vocabulary ---------------------------------------------------------------
    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        if n < 0:  # a longer piece: ask again with room for it
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
        return bytes(buf.raw[:n])

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`, special tokens parsed, BOS added when the model wants one."""
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (ctypes.c_int32 * size)()
            n = self._lib.llama_tokenize(self.vocab, data, len(data), tokens, size, add_special and self.add_bos,
                                         True)
            if n >= 0:
                return list(tokens[:n])
            size = -n

    def meta(self, key: str) -> Optional[str]:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    # ---- decoding ---------------------------------------------------------------
    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> int:
        """Decode (token, position, sequence id, wants logits) items in one `llama_decode`.
        Returns llama.cpp's status (0 ok, 1 no KV slot, other values errors)."""
        batch = self._batch
        n = len(items)
        if n > self.config.n_batch:
            raise ValueError(f"batch of {n} tokens exceeds n_batch {self.config.n_batch}")
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = n
        return int(self._lib.llama_decode(self.ctx, batch))

    def logits(self, batch_index: int) -> np.ndarray:
        """The logits row of one batch item (a copy: the next decode overwrites the buffer)."""
        ptr = self._lib.llama_get_logits_ith(self.ctx, batch_index)
        if not ptr:
            raise RuntimeError(f"llama.cpp has no logits for batch item {batch_index}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def set_threads(self, n: int) -> None:
        """Threads the next decodes compute on."""
        self._lib.llama_set_n_threads(self.ctx, n, n)

    # ---- KV cache per sequence ---------------------------------------------------------
    def seq_clear(self, seq: int, start: int = 0) -> None:
        """Drop the cache of `seq` from position `start` on (cells nobody else uses are freed)."""
        self._lib.llama_memory_seq_rm(self.memory, seq, start if start > 0 else -1, -1)

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Let `dst` share positions [0, length) of `src` (same cells, no copy: unified cache)."""
        self._lib.llama_memory_seq_rm(self.memory, dst, -1, -1)
        if length > 0:
            self._lib.llama_memory_seq_cp(self.memory, src, dst, 0, length)

    def seq_tokens(self, seq: int) -> int:
        """How many positions `seq` holds in the KV cache (0: none)."""
        return int(self._lib.llama_memory_seq_pos_max(self.memory, seq)) + 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self.ctx)
        lib.llama_model_free(self.model)


__all__ = ["LlamaConfig", "LlamaModelContext", "import_llama_cpp"]
