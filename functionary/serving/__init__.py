"""The use case layer: requests in, responses or chunk streams out (no HTTP)."""
from functionary.serving.chat import ChatService, MessageFolder, PreparedChat, RequestStats
from functionary.serving.errors import (
    EngineUnavailableError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceError,
)

__all__ = [
    "ChatService",
    "EngineUnavailableError",
    "InternalError",
    "InvalidRequestError",
    "MessageFolder",
    "ModelNotFoundError",
    "PreparedChat",
    "RequestStats",
    "ServiceError",
]
