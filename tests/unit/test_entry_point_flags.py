"""Each entry point's `main()` hands every flag the README documents to what acts on it: the
server settings (whose effects tests/integration tests: CORS, auth, limits, max_n, template),
uvicorn (host, port, the bounded request head), vLLM's engine arguments, the back end's start
options. Nothing is started: `serve` and the back end's start are replaced by recorders, and the
app's back-end factory is called to see what the back end would be started with."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

SHARED_ARGV = [
    "--host", "127.0.0.2", "--port", "8123", "--api-key", "sk-test", "--max-n", "3",
    "--allowed-origins", '["https://a.example"]', "--allowed-methods", "POST,GET", "--allowed-headers", "X-Trace",
    "--allow-credentials", "--prompt-template-version", "hermes", "--enable-grammar-sampling",
    "--max-request-body-bytes", "1000", "--max-header-bytes", "2000", "--request-timeout", "7.5",
    "--max-concurrent-requests", "9", "--max-tools", "5", "--max-tool-schema-depth", "6", "--max-tools-bytes", "3000",
]


@dataclass
class Started:
    """What `main()` asked for: the app's settings and back-end factory, and uvicorn's arguments."""

    settings: Any = None
    backend_factory: Any = None
    serve: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def started(monkeypatch) -> Started:
    import functionary.api
    import functionary.api.serve

    record = Started()

    def create_app(settings, backend_factory, **_):
        record.settings, record.backend_factory = settings, backend_factory
        return type("App", (), {"state": type("State", (), {"settings": settings})()})()

    def serve(app, host, port, log_level="info", **options):
        record.serve = {"host": host, "port": port, **options}
        return 0

    monkeypatch.setattr(functionary.api, "create_app", create_app)
    monkeypatch.setattr(functionary.api.serve, "serve", serve)
    return record


def assert_shared_settings(record: Started) -> None:
    s = record.settings
    assert (s.api_key, s.max_n, s.prompt_template_version, s.grammar_sampling) == ("sk-test", 3, "hermes", True)
    assert (s.allowed_origins, s.allowed_methods, s.allowed_headers, s.allow_credentials) == (
        ["https://a.example"], ["POST", "GET"], ["X-Trace"], True)
    assert (s.max_request_body_bytes, s.max_header_bytes, s.request_timeout, s.max_concurrent_requests) == (
        1000, 2000, 7.5, 9)
    assert (s.max_tools, s.max_tool_schema_depth, s.max_tools_bytes) == (5, 6, 3000)
    # Where to listen, and the request head bounded through h11 (functionary.api.limits.uvicorn_options).
    assert record.serve["host"] == "127.0.0.2" and record.serve["port"] == 8123
    assert record.serve["http"] == "h11" and record.serve["h11_max_incomplete_event_size"] > 2000


def test_server_vllm_hands_every_flag_on(started, monkeypatch, tmp_path):
    pytest.importorskip("vllm")
    import server_vllm
    from functionary.backends.vllm_backend import VLLMBackend
    from functionary.grammar import VLLM_LOGITS_PROCESSOR

    async def start(engine, **kwargs):
        started.backend = {"engine": engine, **kwargs}
        return "backend"

    monkeypatch.setattr(VLLMBackend, "start", start)
    adapter = tmp_path / "adapter"
    assert server_vllm.main([
        *SHARED_ARGV, "--grammar-backend", "lm-format-enforcer", "--no-engine-in-process", "--no-adaptive-cpu-threads",
        "--model", "/models/m", "--served-model-name", "m", "alias", "--max-model-len", "1024", "--dtype", "float32",
        "--enable-lora", "--max-lora-rank", "16", "--lora-modules", f"ad={adapter}",
        '{"name": "ad2", "path": "/x", "base_model_name": "m"}',
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "3", "--data-parallel-size", "2",
        "--distributed-executor-backend", "ray", "--no-enforce-eager", "--block-size", "64",
        "--kv-cache-memory-bytes", "123456",
    ]) == 0
    assert_shared_settings(started)
    assert started.settings.served_model_names == ["m", "alias"]
    assert started.settings.grammar_backend == "lm-format-enforcer"
    assert asyncio.run(started.backend_factory()) == "backend"
    backend = started.backend
    assert backend["in_process"] is False and backend["adaptive_threads"] is False
    assert [(m.name, m.path, m.base_model_name) for m in backend["lora_modules"]] == [
        ("ad", str(adapter), None), ("ad2", "/x", "m")]
    engine = backend["engine"]
    assert (engine.model, engine.served_model_name, engine.max_model_len, engine.dtype) == (
        "/models/m", ["m", "alias"], 1024, "float32")
    assert (engine.enable_lora, engine.max_lora_rank) == (True, 16)
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size, engine.data_parallel_size) == (2, 3, 2)
    assert engine.distributed_executor_backend == "ray"
    # Given on the command line, so not replaced by the CPU defaults (README: "flags you do not give").
    assert (engine.enforce_eager, engine.block_size, engine.kv_cache_memory_bytes) == (False, 64, 123456)
    assert VLLM_LOGITS_PROCESSOR in engine.logits_processors  # lm-format-enforcer loaded at engine start


def test_server_vllm_engine_mode_flags_the_other_way(started, monkeypatch):
    pytest.importorskip("vllm")
    import server_vllm
    from functionary.backends.vllm_backend import VLLMBackend

    async def start(engine, **kwargs):
        started.backend = {"engine": engine, **kwargs}

    monkeypatch.setattr(VLLMBackend, "start", start)
    server_vllm.main(["--model", "/models/m", "--engine-in-process", "--adaptive-cpu-threads",
                      "--no-enable-grammar-sampling", "--enforce-eager"])
    asyncio.run(started.backend_factory())
    assert started.backend["in_process"] is True and started.backend["adaptive_threads"] is True
    assert started.settings.grammar_sampling is False
    assert started.backend["engine"].enforce_eager is True
    assert not started.backend["engine"].logits_processors  # grammar sampling off: nothing loaded


def test_server_llama_cpp_hands_every_flag_on(started, monkeypatch):
    import server_llama_cpp
    from functionary.backends.llama_cpp import LlamaCppBackend

    async def start(options):
        started.backend = {"options": options}
        return "backend"

    monkeypatch.setattr(LlamaCppBackend, "start", start)
    assert server_llama_cpp.main([
        *SHARED_ARGV, "--model", "m.gguf", "--tokenizer", "hf-folder", "--n-ctx", "1024", "--parallel", "4",
        "--n-threads", "3", "--n-gpu-layers", "-1", "--n-batch", "256", "--served-model-name", "a", "b",
    ]) == 0
    assert_shared_settings(started)
    assert started.settings.served_model_names == ["a", "b"]
    assert asyncio.run(started.backend_factory()) == "backend"
    options = started.backend["options"]
    assert (options.model_path, options.tokenizer, options.n_ctx, options.parallel) == ("m.gguf", "hf-folder", 1024, 4)
    assert (options.n_threads, options.n_gpu_layers, options.n_batch, options.model_name) == (3, -1, 256, "a")


def test_server_tgi_hands_every_flag_on(started, monkeypatch, tmp_path):
    import functionary.backends.tgi_docker as tgi_docker
    import server_tgi
    from functionary.backends.tgi import TGIBackend

    def ensure_endpoint(endpoint, model, **kwargs):
        started.backend["ensure_endpoint"] = {"endpoint": endpoint, "model": model, **kwargs}
        return None  # an endpoint answers: no container

    async def connect(endpoint, model, **kwargs):
        started.backend["connect"] = {"endpoint": endpoint, "model": model, **kwargs}
        return "backend"

    monkeypatch.setattr(tgi_docker, "ensure_endpoint", ensure_endpoint)
    monkeypatch.setattr(TGIBackend, "connect", connect)
    save = str(tmp_path / "tgi-data")
    assert server_tgi.main([
        *SHARED_ARGV, "--model", "org/model", "--endpoint", "http://127.0.0.1:9999/", "--remote_model_save_folder", save,
        "--max_total_tokens", "2048", "--startup_timeout", "33", "--served-model-name", "t",
    ]) == 0
    assert_shared_settings(started)
    assert started.settings.served_model_names == ["t"]
    assert started.backend["ensure_endpoint"] == {
        "endpoint": "http://127.0.0.1:9999", "model": "org/model", "save_folder": save, "max_total_tokens": 2048,
        "startup_timeout": 33.0, "docker_factory": None}
    assert asyncio.run(started.backend_factory()) == "backend"
    connect_kwargs = started.backend["connect"]
    assert (connect_kwargs["endpoint"], connect_kwargs["model"], connect_kwargs["max_total_tokens"]) == (
        "http://127.0.0.1:9999", "org/model", 2048)
