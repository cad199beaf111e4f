"""LoRA without an engine: the `--lora-modules` flag (checked against vLLM's own parsing), the
adapters' `LoRARequest`s, and the app routing a request that names an adapter (fake backend,
real `openai` client over the ASGI transport). The engine side runs in tests/e2e/test_lora.py."""
from __future__ import annotations

import argparse
import json

import httpx
import pytest
from openai import AsyncOpenAI, NotFoundError

pytest.importorskip("vllm")

from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.entrypoints.openai.models.protocol import LoRAModulePath  # noqa: E402

import server_vllm  # noqa: E402
from functionary.api import ServerSettings, create_app  # noqa: E402
from functionary.backends.base import AdapterBackend, LoRAAdapter  # noqa: E402
from functionary.backends.engine_args import _LoRAModulesAction  # noqa: E402
from functionary.backends.fake import FakeBackend  # noqa: E402
from functionary.backends.vllm_backend import _lora_requests  # noqa: E402

BASE_MODEL = "base-model"
JSON_MODULE = json.dumps({"name": "b", "path": "/adapters/b", "base_model_name": BASE_MODEL})


def test_lora_modules_parses_both_spellings_as_vllm_does():
    args = server_vllm.build_parser().parse_args(
        ["--enable-lora", "--max-lora-rank", "8", "--lora-modules", "a=/adapters/a", JSON_MODULE]
    )
    assert args.enable_lora is True and args.max_lora_rank == 8
    assert args.lora_modules == [
        LoRAModulePath(name="a", path="/adapters/a"),
        LoRAModulePath(name="b", path="/adapters/b", base_model_name=BASE_MODEL),
    ]
    with pytest.raises(SystemExit):
        server_vllm.build_parser().parse_args(["--lora-modules", "{not json"])


def test_the_fallback_action_reads_what_vllms_reads():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lora-modules", nargs="+", action=_LoRAModulesAction)
    ours = parser.parse_args(["--lora-modules", "a=/adapters/a", JSON_MODULE]).lora_modules
    vllms = server_vllm.build_parser().parse_args(["--lora-modules", "a=/adapters/a", JSON_MODULE]).lora_modules
    assert ours == [{"name": m.name, "path": m.path, **({"base_model_name": m.base_model_name}
                                                          if m.base_model_name else {})} for m in vllms]
    with pytest.raises(SystemExit):
        parser.parse_args(["--lora-modules", '{"name": "x"}'])


def test_lora_modules_without_enable_lora_stops_the_server_with_a_message(capsys):
    with pytest.raises(SystemExit) as info:
        server_vllm.main(["--lora-modules", "a=/adapters/a"])
    assert info.value.code == 2
    assert "--lora-modules needs --enable-lora" in capsys.readouterr().err


def engine_args(**kw):
    return AsyncEngineArgs(model="/models/m", served_model_name=[BASE_MODEL], **kw)


def test_adapters_get_stable_ids_in_the_order_given():
    modules = [LoRAModulePath("a", "/adapters/a"), {"name": "b", "path": "/adapters/b", "base_model_name": BASE_MODEL}]
    adapters, requests = _lora_requests(engine_args(enable_lora=True), modules)
    assert adapters == (LoRAAdapter("a", "/adapters/a"), LoRAAdapter("b", "/adapters/b", BASE_MODEL))
    assert [(r.lora_name, r.lora_int_id, r.lora_path, r.base_model_name) for r in requests.values()] == [
        ("a", 1, "/adapters/a", None), ("b", 2, "/adapters/b", BASE_MODEL)]
    assert _lora_requests(engine_args(), ()) == ((), {})


@pytest.mark.parametrize("kwargs, modules, message", [
    ({}, [LoRAModulePath("a", "/p")], "needs --enable-lora"),
    ({"enable_lora": True}, [LoRAModulePath(BASE_MODEL, "/p")], "also a served model name"),
    ({"enable_lora": True}, [LoRAModulePath("a", "/p"), LoRAModulePath("a", "/q")], "two LoRA adapters"),
    ({"enable_lora": True}, [LoRAModulePath("a", "/p", base_model_name="other")], "not a served model name"),
])
def test_bad_adapter_lists_are_refused_before_the_engine_starts(kwargs, modules, message):
    with pytest.raises(ValueError, match=message):
        _lora_requests(engine_args(**kwargs), modules)


class AdapterFake(FakeBackend):
    def __init__(self) -> None:
        super().__init__(("Hi!<|eot_id|>",))
        self.lora_adapters = (LoRAAdapter("smol-lora", "/adapters/smol"),)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_app_lists_adapters_and_routes_requests_naming_one():
    fake = AdapterFake()
    assert isinstance(fake, AdapterBackend)
    app = create_app(ServerSettings(served_model_names=[BASE_MODEL], prompt_template_version="v3.llama3"),
                     lambda: fake)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            client = AsyncOpenAI(api_key="x", base_url="http://t/v1", http_client=http, max_retries=0)
            models = (await http.get("/v1/models")).json()["data"]
            assert [(m["id"], m["root"], m["parent"]) for m in models] == [
                (BASE_MODEL, fake.model_name, None), ("smol-lora", "/adapters/smol", BASE_MODEL)]
            messages = [{"role": "user", "content": "hi"}]
            response = await client.chat.completions.create(model="smol-lora", messages=messages)
            assert response.model == "smol-lora" and fake.requests[-1].params.lora == "smol-lora"
            response = await client.chat.completions.create(model=BASE_MODEL, messages=messages)
            assert response.model == BASE_MODEL and fake.requests[-1].params.lora is None
            with pytest.raises(NotFoundError) as info:
                await client.chat.completions.create(model="other", messages=messages)
            assert info.value.body["code"] == "model_not_found"
