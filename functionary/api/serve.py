"""Run the app with uvicorn, as every entry point does: the process exits non-zero when the
engine dies, so that a supervisor (Docker, Kubernetes, systemd) restarts it, as vLLM's own
server does."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

logger = logging.getLogger(__name__)

# Exit status when the engine died (uvicorn's own failures exit with 1 as well, or 3 at start-up).
ENGINE_DEAD_EXIT_CODE = 1
# After the engine died, requests in flight have already ended with its error: do not wait
# long for their connections to close.
GRACEFUL_SHUTDOWN_S = 5


def serve(app: FastAPI, host: str, port: int, log_level: str = "info", **uvicorn_options: Any) -> int:
    """Serve until interrupted (0) or until the engine dies (`ENGINE_DEAD_EXIT_CODE`)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **uvicorn_options,
    )
    server = uvicorn.Server(config)
    died: list[BaseException] = []

    def on_engine_dead(cause: BaseException) -> None:
        died.append(cause)
        server.should_exit = True

    app.state.on_engine_dead = on_engine_dead
    logger.info("listening on http://%s:%s", host, port)
    server.run()
    if died:
        logger.error("exiting with status %d: the engine died (%s)", ENGINE_DEAD_EXIT_CODE, died[0])
        return ENGINE_DEAD_EXIT_CODE
    return 0 if server.started else STARTUP_FAILURE


__all__ = ["ENGINE_DEAD_EXIT_CODE", "serve"]
