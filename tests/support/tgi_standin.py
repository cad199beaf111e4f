"""A local stand-in for a Text Generation Inference (TGI 3.3.x) endpoint, for tests.

It speaks TGI's published contract (`tgi-openapi.json` next to this file, copied from TGI's
OpenAPI document): every `/generate` and `/generate_stream` body is validated against
`GenerateRequest` (with jsonschema, the document's components, OpenAPI's `nullable` read as
"or null"), then against the run-time rules of TGI's router (`router/src/validation.rs`:
`top_p` in (0, 1), `top_k` > 0, `temperature` > 0, at most `max_stop_sequences` stops, input
and total token limits, a JSON grammar must be a JSON Schema with `properties`). Answers have
the documented shapes (`StreamResponse`, `GenerateResponse`, `ErrorResponse`, `Info`), and the
stand-in checks its own answers against them too.

Text comes from a script the test controls: `script(body) -> str`, the model's output for that
request (special tokens written as text, e.g. ``<|eot_id|>``). It is tokenized with a real
tokenizer and streamed one token per event, each token's text decoded as TGI decodes it
(special tokens included, `special` set). Generation ends at the end-of-sequence token
(appended if the script has none; a JSON grammar also ends there once the JSON is complete),
at `max_new_tokens`, or when the output ends with a stop sequence (which TGI keeps in the
output). Errors can be scheduled: in the stream as an SSE error event (what TGI's router does)
or as the documented HTTP status with an `ErrorResponse` body.
"""
from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import jsonschema
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

OPENAPI_PATH = Path(__file__).with_name("tgi-openapi.json")
Script = Callable[[dict], str]


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's "or null" (recursively)."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def load_contract() -> dict[str, Any]:
    document = json.loads(OPENAPI_PATH.read_text())
    return {"components": _nullable_to_jsonschema(document["components"])}


_CONTRACT = load_contract()


@functools.lru_cache(maxsize=None)
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the document's components (its `$ref`s resolved)."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{schema_name}", **_CONTRACT})


def contract_errors(schema_name: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator(schema_name).iter_errors(instance)
    ]


@dataclass
class Fault:
    """An error the next request gets: after `after_tokens` tokens of its stream (as an SSE
    error event, as TGI's router sends them), or as an HTTP `status` before any output."""

    error_type: str  # validation | generation | overloaded | incomplete_generation
    message: str
    status: Optional[int] = None  # the documented status (422, 424, 429, 500): answer with it
    after_tokens: int = 0


@dataclass
class Recorded:
    body: dict[str, Any]
    input_length: int
    finished: bool = False  # the stream reached its last event
    disconnected: bool = False  # the client closed it before


@dataclass
class TGIStandIn:
    tokenizer: Any
    script: Script
    model_id: str = "standin/model"
    max_total_tokens: int = 2048
    max_input_tokens: int = 2047
    max_stop_sequences: int = 4
    delay: float = 0.0  # seconds between tokens
    healthy: bool = True
    faults: list[Fault] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # validation errors answered
    self_check_errors: list[str] = field(default_factory=list)  # our own answers off-contract

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[
            Route("/health", self._health, methods=["GET"]),
            Route("/info", self._info, methods=["GET"]),
            Route("/generate", self._generate, methods=["POST"]),
            Route("/generate_stream", self._generate_stream, methods=["POST"]),
        ])
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self.url = ""

    # -- serving ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the TGI stand-in did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    # -- routes ----------------------------------------------------------------------------

    def _checked(self, schema: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = contract_errors(schema, body)
        if errors:
            self.self_check_errors.extend(f"{schema}: {e}" for e in errors)
        return body

    def _error(self, status: int, message: str, error_type: str) -> JSONResponse:
        return JSONResponse(self._checked("ErrorResponse", {"error": message, "error_type": error_type}),
                            status_code=status)

    async def _health(self, request: Request) -> Response:
        if not self.healthy:
            return self._error(503, "unhealthy", "healthcheck")
        return Response(status_code=200)

    async def _info(self, request: Request) -> Response:
        return JSONResponse(self._checked("Info", {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "3.3.5",
            "sha": None,
            "docker_label": None,
        }))

    def _validate(self, body: Any) -> Optional[str]:
        """TGI's answer to an invalid request (None: valid)."""
        errors = contract_errors("GenerateRequest", body)
        if errors:
            return "request body does not follow GenerateRequest: " + "; ".join(errors)
        p = body.get("parameters") or {}
        if p.get("temperature") is not None and p["temperature"] <= 0:
            return "`temperature` must be strictly positive"
        if p.get("top_p") is not None and not 0 < p["top_p"] < 1:
            return "`top_p` must be > 0.0 and < 1.0"
        if p.get("top_k") is not None and p["top_k"] <= 0:
            return "`top_k` must be strictly positive"
        if p.get("max_new_tokens") == 0:
            return "`max_new_tokens` must be strictly positive"
        if len(p.get("stop") or []) > self.max_stop_sequences:
            return f"`stop` supports up to {self.max_stop_sequences} stop sequences. Given: {len(p['stop'])}"
        if not body["inputs"]:
            return "`inputs` cannot be empty"
        input_length = self._input_length(body["inputs"])
        max_new = p.get("max_new_tokens") or 1024
        if input_length + max_new > self.max_total_tokens:
            return (f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. Given: "
                    f"{input_length} `inputs` tokens and {max_new} `max_new_tokens`")
        if input_length > self.max_input_tokens:
            return f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {input_length}"
        grammar = p.get("grammar")
        if grammar is not None and grammar["type"] == "json":
            value = grammar["value"]
            try:
                schema = json.loads(value) if isinstance(value, str) else value
                jsonschema.Draft202012Validator.check_schema(schema)
            except (ValueError, jsonschema.SchemaError) as exc:
                return f"Grammar is not valid: {exc}"
            if "properties" not in schema:
                return "Grammar is not valid: Grammar must have a 'properties' field"
        return None

    def _input_length(self, inputs: str) -> int:
        return len(self.tokenizer(inputs, add_special_tokens=True)["input_ids"])

    async def _read(self, request: Request) -> tuple[Optional[dict], Optional[Response]]:
        try:
            body = await request.json()
        except ValueError:
            return None, Response("Failed to parse the request body as JSON", status_code=422)
        problem = self._validate(body)
        if problem is not None:
            self.refused.append(problem)
            return None, self._error(422, f"Input validation error: {problem}", "validation")
        self.requests.append(Recorded(body, self._input_length(body["inputs"])))
        fault = self.faults[0] if self.faults else None
        if fault is not None and fault.status is not None:
            self.faults.pop(0)
            return None, self._error(fault.status, fault.message, fault.error_type)
        return body, None

    async def _generate(self, request: Request) -> Response:
        body, refusal = await self._read(request)
        if refusal is not None:
            return refusal
        record = self.requests[-1]
        events = [e async for e in self._events(body, record)]
        last = events[-1]
        if "error" in last:
            return self._error(424, last["error"], last["error_type"])
        details = dict(last["details"])
        details.update(prefill=[], tokens=[e["token"] for e in events])
        return JSONResponse(self._checked("GenerateResponse",
                                          {"generated_text": last["generated_text"], "details": details}))

    async def _generate_stream(self, request: Request) -> Response:
        body, refusal = await self._read(request)
        if refusal is not None:
            return refusal
        record = self.requests[-1]

        async def sse():
            try:
                async for event in self._events(body, record):
                    yield f"data:{json.dumps(event)}\n\n"
            finally:
                if not record.finished:
                    record.disconnected = True

        return StreamingResponse(sse(), media_type="text/event-stream")

    # -- generation ------------------------------------------------------------------------

    def _tokens(self, text: str, grammar: Optional[dict]) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if grammar is not None and grammar["type"] == "json":
            # Under a JSON grammar the output is the JSON value, then end-of-sequence.
            value = grammar["value"]
            schema = json.loads(value) if isinstance(value, str) else value
            problems = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(json.loads(text))]
            if problems:
                raise AssertionError(f"the script wrote {text!r}, which TGI's grammar {schema} forbids: {problems}")
            return ids + [eos]
        if eos not in ids:
            ids.append(eos)
        return ids

    async def _events(self, body: dict, record: Recorded):
        p = body.get("parameters") or {}
        fault = self.faults.pop(0) if self.faults else None
        ids = self._tokens(self.script(body), p.get("grammar"))
        max_new = p.get("max_new_tokens") or 1024
        stops = p.get("stop") or []
        special = set(self.tokenizer.all_special_ids)
        generated: list[int] = []
        output = ""
        prefix_offset = read_offset = 0
        for token_id in ids:
            if fault is not None and len(generated) >= fault.after_tokens:
                record.finished = True
                yield self._checked("ErrorResponse", {"error": fault.message, "error_type": fault.error_type})
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            generated.append(token_id)
            # TGI's incremental detokenization (special tokens kept, partial characters held)
            prefix_text = self.tokenizer.decode(generated[prefix_offset:read_offset], skip_special_tokens=False)
            new_text = self.tokenizer.decode(generated[prefix_offset:], skip_special_tokens=False)
            if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
                text = new_text[len(prefix_text):]
                prefix_offset, read_offset = read_offset, len(generated)
            else:
                text = ""
            output += text
            finish = None
            if token_id == self.tokenizer.eos_token_id:
                finish = "eos_token"
            elif any(output.endswith(s) for s in stops):
                finish = "stop_sequence"
            elif len(generated) >= max_new:
                finish = "length"
            event: dict[str, Any] = {
                "index": len(generated) - 1,
                "token": {"id": token_id, "text": text, "logprob": -0.5, "special": token_id in special},
                "top_tokens": [],
                "generated_text": None,
                "details": None,
            }
            if finish is not None:
                event["generated_text"] = self.tokenizer.decode(generated, skip_special_tokens=True)
                event["details"] = {"finish_reason": finish, "generated_tokens": len(generated),
                                    "input_length": record.input_length, "seed": p.get("seed")}
                record.finished = True
            yield self._checked("StreamResponse", event)
            if finish is not None:
                return


__all__ = ["Fault", "OPENAPI_PATH", "Recorded", "TGIStandIn", "contract_errors", "validator"]
