"""`python -m orchestrator`: sessions, turns and routing between gateways and workers."""

from __future__ import annotations

import asyncio

from common import logs
from common.private import umask_private
from common.settings import get_settings
from orchestrator.service import Orchestrator


async def main() -> None:
    umask_private()  # its sockets and files are the service user's alone (see transport)
    settings = get_settings()
    logs.setup("orchestrator", settings.log_level, settings.log_content)
    await Orchestrator(settings).serve()


if __name__ == "__main__":
    asyncio.run(main())
