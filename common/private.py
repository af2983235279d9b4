"""Files that are the service user's alone: the run directory, its ipc sockets, its logs.

Kept free of imports with side effects (metrics files, sockets), because `inzwa run` uses it
before the stack's directories exist.
"""

from __future__ import annotations

import os
from pathlib import Path

UMASK = 0o077  # files created by the stack: read and written by the service user only


def private_dir(path: Path) -> None:
    """Create `path` 0700 (parents too), or make an existing one 0700: only we may enter it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != 0o700:
        path.chmod(0o700)


def umask_private() -> None:
    """Files this process creates from now on are the service user's alone."""
    os.umask(UMASK)
