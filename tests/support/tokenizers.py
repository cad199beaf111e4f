"""Real Hugging Face tokenizers for each Functionary format, built locally (no hub download).

Each is the default model's tokenizer (SmolLM2-135M-Instruct, from the converted folder of
`functionary.backends.default_model`) plus that format's special strings as single added
special tokens, so that a format marker such as ``<|eot_id|>`` is one token, as in the real
model's tokenizer. Like the real ones (FORMAT_SPEC §BOS), ``tokenizer(text)`` with
``add_special_tokens=True`` prepends a BOS: ``<s>`` for v1/v2, ``<|begin_of_text|>`` for the
Llama-3 templates. The plain default tokenizer (version ``"default"``) is left untouched.

Token ids of the added tokens are not the real models' ids (e.g. ``<|reserved_special_token_249|>``
is not 128254): compare texts, or look ids up with ``convert_tokens_to_ids``.

Cheap: each (version, chat_template) is built once, saved under ``cache_dir`` and kept in
memory for the session. Returned tokenizers are shared: do not mutate them (copy first).

Independent of pytest; usable from scripts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

LLAMA3_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|reserved_special_token_249|>",
    "<|reserved_special_token_250|>",
)
LLAMA31_EXTRA_TOKENS = ("<|eom_id|>", "<|python_tag|>")

# version -> (added special tokens, bos (None: the tokenizer adds none), eos)
FORMATS: dict[str, tuple[tuple[str, ...], Optional[str], Optional[str]]] = {
    "v1": (
        (
            "<s>",
            "</s>",
            "<|START_OF_FUNCTION_CALL|>",
            "<|END_OF_SYSTEM|>",
            "<|END_OF_USER|>",
            "<|END_OF_ASSISTANT|>",
            "<|END_OF_FUNCTION_RESULT|>",
            "<|END_OF_FUNCTION_CALL|>",
        ),
        "<s>",
        "</s>",
    ),
    "v2": (
        ("<s>", "</s>", "<|from|>", "<|recipient|>", "<|content|>", "<|stop|>"),
        "<s>",
        "</s>",
    ),
    "v2.llama3": (LLAMA3_TOKENS, "<|begin_of_text|>", "<|eot_id|>"),
    "v3.llama3": (LLAMA3_TOKENS, "<|begin_of_text|>", "<|eot_id|>"),
    "v3-llama3.1": (LLAMA3_TOKENS + LLAMA31_EXTRA_TOKENS, "<|begin_of_text|>", "<|eot_id|>"),
    # Other model families: ChatML (Qwen, Hermes: no BOS; the default tokenizer already has
    # <|im_start|> and <|im_end|> as special tokens) and Llama 3.1.
    "hermes": (("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>"),
    "llama3-json": (LLAMA3_TOKENS + LLAMA31_EXTRA_TOKENS, "<|begin_of_text|>", "<|eot_id|>"),
}
DEFAULT_VERSION = "default"
VERSIONS = (DEFAULT_VERSION, *FORMATS)

_BUILD_VERSION = 1  # bump when the recipe changes (invalidates saved tokenizers)
_memo: dict[tuple[str, Optional[str], str], "PreTrainedTokenizerFast"] = {}
_memo_lock = threading.Lock()


def default_cache_dir() -> Path:
    from functionary.backends.default_model import cache_dir

    return cache_dir() / "test-tokenizers"


def format_special_tokens(version: str) -> tuple[str, ...]:
    """The special strings added for `version` (BOS/EOS included)."""
    if version == DEFAULT_VERSION:
        return ()
    try:
        return FORMATS[version][0]
    except KeyError:
        raise ValueError(f"unknown format version {version!r}; known: {', '.join(VERSIONS)}") from None


def build_format_tokenizer(
    version: str,
    chat_template: Optional[str] = None,
    *,
    cache_dir: Optional[Path] = None,
) -> "PreTrainedTokenizerFast":
    """The tokenizer for Functionary format `version` (or ``"default"``), optionally with
    `chat_template` set. Built once per (version, template), saved under `cache_dir`
    (default: ``<functionary cache>/test-tokenizers``) and memoised for the process."""
    format_special_tokens(version)  # validates the version
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = (version, chat_template, str(root))
    with _memo_lock:
        tok = _memo.get(key)
        if tok is None:
            tok = _load_or_build(version, chat_template, root)
            _memo[key] = tok
        return tok


def default_tokenizer(*, cache_dir: Optional[Path] = None) -> "PreTrainedTokenizerFast":
    """The default model's own tokenizer, as the engine uses it."""
    return build_format_tokenizer(DEFAULT_VERSION, cache_dir=cache_dir)


def _base_dir() -> Path:
    from functionary.backends.default_model import ensure_default_model

    return ensure_default_model()


def _folder_name(version: str, chat_template: Optional[str], base: Path) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([_BUILD_VERSION, version, chat_template]).encode())
    digest.update((base / "tokenizer.json").read_bytes())
    return f"{version}-{digest.hexdigest()[:16]}"


def _load_or_build(version: str, chat_template: Optional[str], root: Path) -> "PreTrainedTokenizerFast":
    from transformers import PreTrainedTokenizerFast

    base = _base_dir()
    folder = root / _folder_name(version, chat_template, base)
    if not (folder / "tokenizer.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
        try:
            _build(version, chat_template, base, tmp)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process won the race: use its folder
                if not (folder / "tokenizer.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _build(version: str, chat_template: Optional[str], base: Path, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    base_config = json.loads((base / "tokenizer_config.json").read_text())
    tk = Tokenizer.from_file(str(base / "tokenizer.json"))
    kwargs = {
        name: base_config[name]
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if base_config.get(name)
    }
    if version != DEFAULT_VERSION:
        tokens, bos, eos = FORMATS[version]
        tk.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
                for t in tokens
            ]
        )
        for t in tokens:
            ids = tk.encode(t, add_special_tokens=False).ids
            assert ids == [tk.token_to_id(t)], (t, ids)
        if bos is not None:
            bos_id = tk.token_to_id(bos)
            # Prepend BOS like the real models' tokenizers do.
            tk.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos} $B",
                special_tokens=[(bos, bos_id)],
            )
            kwargs.update(bos_token=bos)
        kwargs.update(eos_token=eos)
        kwargs["additional_special_tokens"] = [t for t in tokens if t not in (bos, eos)]
    if chat_template is None and version == DEFAULT_VERSION:
        template_file = base / "chat_template.jinja"
        if template_file.is_file():
            chat_template = template_file.read_text()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=chat_template, **kwargs)
    fast.save_pretrained(str(out))


__all__ = [
    "DEFAULT_VERSION",
    "FORMATS",
    "VERSIONS",
    "build_format_tokenizer",
    "default_cache_dir",
    "default_tokenizer",
    "format_special_tokens",
]
