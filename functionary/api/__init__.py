"""HTTP layer: the FastAPI app factory and its settings."""
from functionary.api.app import create_app
from functionary.api.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
