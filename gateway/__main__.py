"""`python -m gateway`: the FastAPI app under uvicorn on INZWA_HOST:INZWA_PORT (HTTPS with TLS files)."""

from __future__ import annotations

import uvicorn

from common import logs
from common.settings import get_settings
from gateway.app import create_app
from gateway.auth import check_bind
from gateway.server import check_tls, server_options


def main() -> None:
    settings = get_settings()
    logs.setup("gateway", settings.log_level, settings.log_content)
    try:
        check_bind(settings)  # also refuses a JWT secret too short to be safe
        check_tls(settings)
        app = create_app(settings)
    except RuntimeError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.debug,
        timeout_graceful_shutdown=5,
        **server_options(settings),
    )


if __name__ == "__main__":
    main()
