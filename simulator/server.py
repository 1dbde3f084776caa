"""Run the simulator under uvicorn."""

import logging
import os
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from simulator.app import DROPPED, create_app
from simulator.config import SimConfig


class _DropFilter(logging.Filter):
    """Hide uvicorn's error line for connections the simulator drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return DROPPED not in record.getMessage()


def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8900,
    log_level: str = "warning",
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve the simulator until interrupted (access log off); ``log_config``: a
    ``logging.config`` dict instead of uvicorn's own (``imagegen simulator`` logs JSON)."""
    uv_config = uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=log_config if log_config is not None else LOGGING_CONFIG,
        # Keep idle connections open like an API load balancer does (60 s or more), longer
        # than httpx keeps them (5 s): with uvicorn's 5 s both ends time out together, and
        # a request sent on a connection the server is closing fails with no answer.
        timeout_keep_alive=75,
    )
    # uvicorn configures its loggers in Config(), so the filter goes on afterwards.
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())
    uvicorn.Server(uv_config).run()


def main() -> None:
    """Entry point: configuration from SIM_* env vars, bind from SIM_HOST / SIM_PORT."""
    serve(
        SimConfig.from_env(),
        host=os.environ.get("SIM_HOST", "127.0.0.1"),
        port=int(os.environ.get("SIM_PORT", "8900")),
        log_level=os.environ.get("SIM_LOG_LEVEL", "warning"),
    )


if __name__ == "__main__":
    main()
