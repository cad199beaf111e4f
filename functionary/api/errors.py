"""Every error leaves the server in OpenAI's shape: {"error": {message, type, param, code}}."""
from __future__ import annotations

import logging
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from functionary.protocol.openai import ErrorInfo, ErrorResponse
from functionary.serving.errors import ServiceError

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
}


def error_body(
    message: str,
    error_type: str,
    param: Optional[str] = None,
    code: Optional[Union[str, int]] = None,
) -> dict[str, Any]:
    return ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=code)).model_dump()


def error_response(
    status_code: int,
    message: str,
    error_type: Optional[str] = None,
    param: Optional[str] = None,
    code: Optional[Union[str, int]] = None,
    headers: Optional[dict[str, str]] = None,
) -> JSONResponse:
    error_type = error_type or _TYPE_BY_STATUS.get(status_code, "internal_server_error")
    return JSONResponse(
        error_body(message, error_type, param, code), status_code=status_code, headers=headers
    )


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "any"}
_TOOL_TAGS = {"function", "code_interpreter"}


def _loc_to_param(loc: tuple[Any, ...]) -> Optional[str]:
    """`("body", "messages", 0, "role")` -> `"messages[0].role"`, without pydantic's union tags."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for k, part in enumerate(parts):
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        part = str(part)
        if part in _TYPE_TAGS or any(ch in part for ch in "[(-") or part[:1].isupper():
            continue  # a union branch tag such as "str", "literal[...]", "function-wrap[...]"
        if k >= 2 and parts[k - 2] == "tools" and isinstance(parts[k - 1], int) and part in _TOOL_TAGS:
            continue  # the discriminator tag of a tool
        text += ("." if text else "") + part
    return text or None


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return error_response(400, "Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, "The request body is not valid JSON.", code="invalid_json")
    messages = []
    for err in errors[:5]:
        param = _loc_to_param(tuple(err.get("loc", ())))
        messages.append(f"{param}: {err.get('msg')}" if param else str(err.get("msg")))
    if len(errors) > 5:
        messages.append(f"... and {len(errors) - 5} more")
    return error_response(400, "Invalid request: " + "; ".join(messages), param=_loc_to_param(tuple(first.get("loc", ()))))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error.", "internal_server_error")
