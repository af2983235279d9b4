"""`python -m gateway`: the FastAPI app under uvicorn on INZWA_HOST:INZWA_PORT."""

from __future__ import annotations

import uvicorn

from common import logs
from common.settings import get_settings
from gateway.app import create_app
from gateway.auth import check_bind


def main() -> None:
    settings = get_settings()
    logs.setup("gateway", settings.log_level, settings.log_content)
    try:
        check_bind(settings)
    except RuntimeError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.debug,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
