"""Human operators: `WS /v1/operator`, and `POST /api/v1/handoff` (handoff area, issue 14).

An operator authenticates with an `operator` credential (INZWA_OPERATOR_API_KEYS, or a JWT with
scope `operator`) or an admin one, in the `Authorization` header or, like the audio socket's
`start`, in a first message `{"type":"hello","auth_token":"..."}`; loopback callers need none
while no credential is configured. It then gets `handoff.queue` (the callers waiting) and
`handoff.requested` events live, and sends:

    {"type":"accept","session_id":...}             take a waiting caller (their context comes back)
    {"type":"say","session_id":...,"text":...}     spoken to the caller in the session's voice
    {"type":"release","session_id":...}            hand the caller back to the assistant

and receives `transcript` events (the caller's final words; `transcript.partial` while they
speak) while it holds a caller. The orchestrator
(orchestrator/handoff.py) holds all state; this socket only relays, so a gateway restart or an
orchestrator restart loses nothing: when the orchestrator comes back (a new incarnation) the
socket says hello again and gets its queue and its accepted callers back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field

from common.frames import (
    EgressMessage,
    ErrorEvent,
    HandoffAsk,
    HandoffEvent,
    HandoffInfo,
    OperatorAction,
    OperatorEvent,
    OperatorRequest,
)
from common.settings import Settings
from gateway.auth import Principal, bearer
from gateway.bridge import Bridge, scoped_session_id
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.protocol import CLOSE_POLICY, MAX_CONTROL_CHARS, error_event
from gateway.security import json_too_deep

log = logging.getLogger(__name__)

OPERATOR_QUEUE = 1000  # events waiting for one operator socket; past it the operator is too slow
WATCH_S = 0.5  # how often the socket checks for an orchestrator restart


class OperatorMessage(msgspec.Struct):
    type: str
    session_id: str = ""
    text: str = ""
    auth_token: str = ""


_decoder = msgspec.json.Decoder(OperatorMessage)
_ACTIONS: dict[str, OperatorAction] = {"accept": "accept", "say": "say", "release": "release"}


def is_operator(principal: Principal) -> bool:
    """Operators, admins, and the anonymous loopback caller of a gateway without credentials."""
    return principal.admin or principal.operator or principal.anonymous


def handoff_json(info: HandoffInfo) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(info)
    body["history"] = [{"role": m.role, "content": m.content} for m in info.history]
    return body


def operator_event(event: OperatorEvent) -> dict[str, Any]:
    """The JSON an operator is sent for an OperatorEvent."""
    body: dict[str, Any] = {"type": event.event}
    if event.target:
        body["session_id"] = event.target
    if event.event == "handoff.queue":
        body["handoffs"] = [handoff_json(h) for h in event.handoffs]
    elif event.handoffs:
        body["handoff"] = handoff_json(event.handoffs[0])
    if event.event in ("transcript", "transcript.partial"):
        body |= {"text": event.text, "confidence": event.confidence}
    elif event.event == "handoff.ended":
        body["outcome"] = event.text
    elif event.event == "error":
        body |= {"code": event.code, "message": event.text}
    return body


class OperatorSocket:
    def __init__(self, websocket: WebSocket, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.ws, self.bridge, self.settings, self.guard = websocket, bridge, settings, guard
        self.operator_id = f"op-{uuid.uuid4().hex}"
        self.principal: Principal | None = None
        self.queue: asyncio.Queue[EgressMessage] = asyncio.Queue(OPERATOR_QUEUE)

    async def run(self) -> None:
        await self.ws.accept()
        try:
            self.principal = await self._authenticate()
            if self.principal is None:
                return
            self.bridge.operators[self.operator_id] = self.queue
            log.info("operator connected", extra={"operator": self.principal.id})
            await self._serve()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the operator left
        finally:
            if self.bridge.operators.pop(self.operator_id, None) is not None:
                self._broadcast("bye")

    async def _authenticate(self) -> Principal | None:
        """From the header; without one (and unless loopback needs none), from a first hello."""
        host = self.ws.client.host if self.ws.client else ""
        token = bearer(self.ws.headers.get("authorization"))
        if token is None and self.guard.authenticator.configured:
            try:
                text = await asyncio.wait_for(self.ws.receive_text(), self.settings.start_timeout_s)
                token = self._parse(text).auth_token or None
            except (TimeoutError, ValueError, KeyError):
                await self._close("hello_required", "send the credential first: "
                                  '{"type":"hello","auth_token":"..."} or an Authorization header')
                return None
        try:
            principal = await self.guard.check(token, host)
        except ApiError as exc:
            await self._close(exc.code, exc.message)
            return None
        if not is_operator(principal):
            await self._close("operator_required", "this socket needs an operator or admin credential")
            return None
        return principal

    async def _serve(self) -> None:
        self._broadcast("hello")
        tasks = [asyncio.create_task(self._forward()), asyncio.create_task(self._watch_restarts())]
        try:
            await self._read()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self) -> None:
        while True:
            received = await self.ws.receive()
            if received["type"] == "websocket.disconnect":
                return
            try:
                text = received.get("text")
                if not isinstance(text, str):
                    raise ValueError("operator messages are JSON text")
                await self._act(self._parse(text))
            except ValueError as exc:
                await self.ws.send_json(error_event("bad_message", str(exc)))

    def _parse(self, text: str) -> OperatorMessage:
        if len(text) > MAX_CONTROL_CHARS + self.settings.max_text_chars:
            raise ValueError("the message is too long")
        if json_too_deep(text):
            raise ValueError("the message nests too deeply")
        try:
            return _decoder.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"invalid operator message: {exc}") from None

    async def _act(self, message: OperatorMessage) -> None:
        if message.type == "hello":
            self._broadcast("hello")
            return
        action = _ACTIONS.get(message.type)
        if action is None:
            raise ValueError(f"unknown message type {message.type!r}: hello, accept, say or release")
        if not message.session_id:
            raise ValueError(f"{message.type} needs a session_id")
        text = message.text.strip()
        if action == "say" and not 0 < len(text) <= self.settings.max_text_chars:
            raise ValueError(f"say needs a text of 1 to {self.settings.max_text_chars} characters")
        await self.bridge.send(self._request(action, message.session_id, text))

    def _request(self, action: OperatorAction, session_id: str = "", text: str = "") -> OperatorRequest:
        assert self.principal is not None
        return OperatorRequest(session_id=session_id, operator_id=self.operator_id, action=action,
                               principal=self.principal.id, text=text,
                               gateway_id=self.settings.gateway_id)

    def _broadcast(self, action: OperatorAction) -> None:
        """hello / bye go to every orchestrator shard: callers may be on any of them."""
        self.bridge.shards.broadcast(self._request(action))

    async def _forward(self) -> None:
        while True:
            frame = await self.queue.get()
            if isinstance(frame, OperatorEvent):
                await self.ws.send_json(operator_event(frame))

    async def _watch_restarts(self) -> None:
        """A restarted orchestrator forgot this socket: say hello again (queue, callers back)."""
        seen = self._incarnations()
        while True:
            await asyncio.sleep(WATCH_S)
            now = self._incarnations()
            if now != seen:
                seen = now
                self._broadcast("hello")

    def _incarnations(self) -> tuple[str, ...]:
        return tuple(shard.status.incarnation for shard in self.bridge.shards.all.values())

    async def _close(self, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.send_json(error_event(code, message))
            await self.ws.close(code=CLOSE_POLICY, reason=code[:120])


class HandoffBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=200)


def add_handoff_routes(app: FastAPI, bridge: Bridge, settings: Settings, guard: Guard) -> None:
    router = APIRouter()

    @router.post("/api/v1/handoff", tags=["assistant"], status_code=202,
                 responses={404: {"description": "No live session with that id is yours"}})
    async def handoff(body: HandoffBody, principal: Principal = Depends(guard.caller)) -> dict[str, str]:
        """Hand a live session to a human operator: the caller hears the handover phrase and gets
        `handoff.started`; operators get it queued with its context. Yours, or any for an
        operator or admin."""
        if not bridge.orchestrator_alive():
            raise ApiError(503, "orchestrator_unavailable", "the orchestrator is not answering")
        for internal in (scoped_session_id(principal.id, body.session_id), body.session_id):
            reply = await bridge.ask(HandoffAsk(session_id=internal, reason=body.reason,
                                                principal=principal.id,
                                                admin=principal.admin or principal.operator))
            if reply is None:
                raise ApiError(503, "orchestrator_unavailable", "the orchestrator did not answer")
            if isinstance(reply, HandoffEvent):
                return {"session_id": body.session_id, "state": reply.reason or "requested"}
            if isinstance(reply, ErrorEvent) and reply.code == "handoff_disabled":
                raise ApiError(409, reply.code, reply.message)
        raise ApiError(404, "session_not_found", "no live session with that id is yours")

    app.include_router(router)

    @app.websocket("/v1/operator")
    async def operator_socket(websocket: WebSocket) -> None:
        await OperatorSocket(websocket, bridge, settings, guard).run()
