"""A caller and an operator over real WebSockets, for the end-to-end handoff tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import websockets

WS_TIMEOUT_S = 30
Event = dict[str, Any]


class Peer:
    """One WebSocket: JSON events kept in order, binary messages counted (reply audio)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.audio_bytes = 0

    async def send(self, message: Event) -> None:
        await self.ws.send(json.dumps(message))

    async def until(self, wanted: Callable[[Event], bool], timeout_s: float = WS_TIMEOUT_S) -> Event:
        """Read until an event `wanted` accepts (kept with the rest); errors fail at once."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.ws.recv()
                if isinstance(message, bytes):
                    self.audio_bytes += len(message)
                    continue
                event = json.loads(message)
                self.events.append(event)
                assert event["type"] != "error", event
                if wanted(event):
                    return event

    async def event(self, kind: str, timeout_s: float = WS_TIMEOUT_S) -> Event:
        return await self.until(lambda e: e["type"] == kind, timeout_s)


async def caller(url: str, session_id: str) -> tuple[Any, Peer]:
    ws = await websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5, max_size=None)
    peer = Peer(ws)
    await peer.send({"type": "start", "codec": "pcm16", "sample_rate": 16000, "session_id": session_id})
    await peer.event("session.started")
    return ws, peer


async def operator(http_url: str, headers: dict[str, str] | None = None) -> tuple[Any, Peer]:
    url = http_url.replace("http://", "ws://") + "/v1/operator"
    ws = await websockets.connect(url, open_timeout=WS_TIMEOUT_S, close_timeout=5,
                                  additional_headers=headers or {})
    peer = Peer(ws)
    await peer.event("handoff.queue")
    return ws, peer
