"""Results that remember the run before them: a regression shows as a ratio, not a memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Headline = Callable[[dict[str, Any]], dict[str, Any]]


def save_with_previous(path: Path, report: dict[str, Any],
                       headline: Headline | None = None) -> dict[str, Any]:
    """Write `report` to `path`, moving the run before it to NAME.previous.json; with
    `headline` (a report's figures by name), add `ratio_to_previous`: new / previous."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.with_name(path.stem + ".previous.json")
    if path.exists():
        path.replace(previous)
        if headline is not None:
            old, new = headline(json.loads(previous.read_text())), headline(report)
            report["ratio_to_previous"] = {name: round(value / base, 2) for name, value in new.items()
                                           if value and (base := old.get(name))}
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report
