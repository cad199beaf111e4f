"""LoRA adapters served by the real `server_vllm.py` on the real vLLM engine (CPU, default model),
in both engine modes: `--enable-lora --max-lora-rank 8 --lora-modules NAME=PATH` (and vLLM's JSON
form), `/v1/models` listing the adapter as vLLM does, and a request naming the adapter answering
with it (greedy answers differ from the base model's, and are stable).

The adapter is written here, in PEFT's on-disk layout (`adapter_config.json` +
`adapter_model.safetensors` with `base_model.model.<module>.lora_{A,B}.weight` keys), rank 8 on
q_proj and v_proj with random non-zero B weights (PEFT initialises B to zero: such an adapter
would change nothing).
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model  # noqa: E402
from tests.support.server import running_server  # noqa: E402

pytestmark = pytest.mark.slow

RANK = 8
ADAPTER = "smol-lora"
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


def write_peft_adapter(folder: Path, model_dir: Path, *, rank: int = RANK, seed: int = 0) -> Path:
    """A LoRA adapter for the model in `model_dir`, in PEFT's layout, on q_proj and v_proj."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    out_features = {
        "q_proj": config["num_attention_heads"] * head_dim,
        "v_proj": config["num_key_value_heads"] * head_dim,
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, out in out_features.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.2
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, rank, generator=gen) * 0.2
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(out_features),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }, indent=2))
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    return write_peft_adapter(tmp_path_factory.mktemp("adapter") / ADAPTER, ensure_default_model())


# name=path in one mode, vLLM's JSON form in the other: both spellings of the flag are covered.
@pytest.fixture(scope="module", params=["in-process", "async-llm"])
def server(request, tmp_path_factory, adapter_dir):
    if request.param == "in-process":
        mode, module = "--engine-in-process", f"{ADAPTER}={adapter_dir}"
    else:
        mode, module = "--no-engine-in-process", json.dumps(
            {"name": ADAPTER, "path": str(adapter_dir), "base_model_name": DEFAULT_MODEL_NAME}
        )
    args = [mode, "--enable-lora", "--max-lora-rank", str(RANK), "--lora-modules", module]
    with running_server(tmp_path_factory.mktemp("lora-server"), args=args) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=300)


def greedy(client, model: str) -> str:
    response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, temperature=0)
    assert response.model == model
    return response.choices[0].message.content


def test_models_lists_the_adapter_with_its_base_model_as_parent(server, adapter_dir):
    body = httpx.get(f"{server}/v1/models").json()
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {DEFAULT_MODEL_NAME, ADAPTER}
    card = cards[ADAPTER]
    assert card["object"] == "model"
    assert card["root"] == str(adapter_dir)
    assert card["parent"] == DEFAULT_MODEL_NAME
    assert cards[DEFAULT_MODEL_NAME]["parent"] is None
    one = httpx.get(f"{server}/v1/models/{ADAPTER}")
    assert one.status_code == 200 and one.json()["id"] == ADAPTER


def test_the_adapter_changes_the_greedy_answer_and_is_stable(client):
    base = greedy(client, DEFAULT_MODEL_NAME)
    adapted = greedy(client, ADAPTER)
    assert base and adapted
    assert adapted != base
    assert greedy(client, ADAPTER) == adapted
    assert greedy(client, DEFAULT_MODEL_NAME) == base  # the adapter does not stick to later requests


def test_streamed_through_the_adapter_equals_whole(client):
    whole = greedy(client, ADAPTER)
    stream = client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=24, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {ADAPTER}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-adapter", messages=MESSAGES, max_tokens=4)
    assert info.value.body["code"] == "model_not_found"


def test_an_adapter_that_cannot_be_loaded_stops_the_server_at_start(tmp_path):
    missing = tmp_path / "no-such-adapter"
    args = ["--engine-in-process", "--enable-lora", "--max-lora-rank", str(RANK), "--lora-modules", f"bad={missing}"]
    with pytest.raises(RuntimeError, match="server exited") as info:
        with running_server(tmp_path, args=args, timeout=300):
            pass
    assert str(missing) in str(info.value)
