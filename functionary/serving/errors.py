"""Errors of the serving layer, each with the HTTP status and OpenAI error type it maps to."""
from __future__ import annotations

from typing import Optional, Union


class ServiceError(Exception):
    """A request the service cannot answer; the API layer renders it as an OpenAI error body."""

    status_code = 500
    error_type = "internal_server_error"

    def __init__(
        self,
        message: str,
        *,
        param: Optional[str] = None,
        code: Optional[Union[str, int]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ServiceError):
    """400: the request is well-formed JSON but cannot be served as asked."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(ServiceError):
    status_code = 401
    error_type = "authentication_error"


class ModelNotFoundError(ServiceError):
    status_code = 404
    error_type = "not_found_error"


class EngineUnavailableError(ServiceError):
    """503: the engine is down or shutting down."""

    status_code = 503
    error_type = "service_unavailable_error"


class RateLimitError(ServiceError):
    """429: the engine is overloaded (e.g. TGI's `overloaded`); the client may retry later."""

    status_code = 429
    error_type = "rate_limit_error"


class UpstreamError(ServiceError):
    """502: the engine behind this server (an HTTP endpoint such as TGI) failed the request."""

    status_code = 502
    error_type = "upstream_error"


class InternalError(ServiceError):
    status_code = 500
    error_type = "internal_server_error"
