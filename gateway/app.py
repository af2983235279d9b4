"""The gateway's HTTP and WebSocket surface (FastAPI): routes, auth, limits, errors, metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Query, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from common import logs
from common.frames import HistoryReply
from common.metrics import exposition
from common.settings import Settings, get_settings
from gateway import errors
from gateway.audio_socket import AudioSocket
from gateway.auth import Principal
from gateway.bridge import Bridge, scoped_session_id
from gateway.errors import ApiError
from gateway.guard import Guard
from gateway.observe import RequestObserver
from gateway.openai_rest import add_openai_routes
from gateway.operator import add_handoff_routes, handoff_json
from gateway.page import add_page_routes
from gateway.responses import OrjsonResponse
from gateway.rest import add_rest_routes
from gateway.rtc import add_rtc_routes
from gateway.security import EdgeGuard
from gateway.turns_api import add_turn_routes


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.register_secrets([*settings.api_keys, *settings.admin_api_keys, *settings.operator_api_keys,
                           settings.jwt_secret])
    bridge = Bridge(settings)
    guard = Guard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        yield
        await bridge.stop()
        await guard.limits.close()

    app = FastAPI(title="Inzwa gateway", version="0.1.0", lifespan=lifespan,
                  default_response_class=OrjsonResponse,
                  description="Real-time speech-to-speech assistant: WebSocket /ws/audio and REST.")
    app.state.bridge = bridge
    app.state.guard = guard
    errors.install(app)
    app.add_middleware(EdgeGuard, settings=settings, guard=guard)  # host, origin, auth, body cap
    app.add_middleware(RequestObserver)
    if settings.cors_allowed_origins:  # added last: outermost, so refusals carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID"],
        )
    router = APIRouter()
    _add_operations(router, bridge, guard)
    add_rest_routes(router, bridge, settings, guard)
    app.include_router(router)
    add_page_routes(app, settings)  # the browser page: /, /static, /client-config
    add_rtc_routes(app, bridge, settings, guard)  # POST /rtc/session (WebRTC), when enabled
    add_openai_routes(app, bridge, settings, guard)  # /v1/audio/*, /v1/chat/completions, /v1/realtime
    add_handoff_routes(app, bridge, settings, guard)  # WS /v1/operator, POST /api/v1/handoff
    add_turn_routes(app, bridge, settings, guard)  # /v1/turns and the job API under /api/v1

    @app.websocket("/ws/audio")
    async def ws_audio(websocket: WebSocket) -> None:
        await AudioSocket(websocket, bridge, settings, guard).run()

    return app


def _add_operations(router: APIRouter, bridge: Bridge, guard: Guard) -> None:
    @router.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the gateway process answers (no credentials, for probes)."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    async def readyz() -> OrjsonResponse:
        """Readiness: the orchestrator is alive and every worker kind has a READY instance."""
        ok, detail = bridge.ready()
        return OrjsonResponse({"ready": ok, **detail}, status_code=200 if ok else 503)

    @router.get("/metrics", tags=["operations"], response_class=Response,
                dependencies=[Depends(guard.admin)])
    async def metrics() -> Response:
        """Prometheus metrics of every process on this host (admin credential when auth is on)."""
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    _add_session_routes(router, bridge, guard)


def _add_session_routes(router: APIRouter, bridge: Bridge, guard: Guard) -> None:
    """Conversations, served by the orchestrator from its store: they outlive the session."""

    @router.get("/v1/sessions", tags=["assistant"])
    async def list_sessions(principal: Principal = Depends(guard.caller),
                            limit: int = Query(20, ge=1, le=100),
                            offset: int = Query(0, ge=0, le=10**9)) -> OrjsonResponse:
        """Your conversations, most recently active first (an admin's: everyone's)."""
        _orchestrator_up(bridge)
        reply = await bridge.list_sessions(principal.id, admin=principal.admin, limit=limit,
                                           offset=offset)
        if reply is None or reply.error:
            raise ApiError(503, "store_unavailable", "the conversation store did not answer")
        return OrjsonResponse({"sessions": [_fields(s) for s in reply.sessions],
                               "total": reply.total, "limit": limit, "offset": offset})

    @router.get("/v1/sessions/{session_id}", tags=["assistant"],
                responses={404: {"description": "No such session of yours"}})
    async def session_history(session_id: str, principal: Principal = Depends(guard.caller)
                              ) -> OrjsonResponse:
        """A conversation of yours, live or ended: the history a turn is prompted with, and every
        stored message with its timings and models."""
        reply = await _find(bridge, session_id, principal)
        return OrjsonResponse(_history_body(session_id, reply))

    @router.delete("/v1/sessions/{session_id}", tags=["assistant"], status_code=204,
                   responses={404: {"description": "No such session of yours"}})
    async def delete_session(session_id: str, principal: Principal = Depends(guard.caller)
                             ) -> Response:
        """Erase a conversation of yours for good (a live one is ended first)."""
        _orchestrator_up(bridge)
        for internal in _candidates(principal.id, session_id):
            reply = await bridge.delete_session(internal, principal.id, admin=principal.admin)
            if reply is None or reply.error:
                raise ApiError(503, "store_unavailable", "the conversation store did not answer")
            if reply.found:
                return Response(status_code=204)
        raise ApiError(404, "session_not_found", "no session with that id is yours")


def _orchestrator_up(bridge: Bridge) -> None:
    """Conversations live in the orchestrator's store: with it silent there is no answer (a
    503 at once, never a 404 that would claim the conversation does not exist)."""
    if not bridge.orchestrator_alive():
        raise ApiError(503, "orchestrator_unavailable", "the orchestrator is not answering")


def _candidates(principal_id: str, session_id: str) -> list[str]:
    """A client-chosen id lives in its caller's namespace (gateway.bridge.scoped_session_id); an
    id the server made up (or a store id from the listing) is used as it is. The orchestrator
    checks the owner of either, so trying both reveals nothing."""
    return [scoped_session_id(principal_id, session_id), session_id]


async def _find(bridge: Bridge, session_id: str, principal: Principal) -> HistoryReply:
    _orchestrator_up(bridge)
    for internal in _candidates(principal.id, session_id):
        reply = await bridge.history(internal, admin=principal.admin, principal=principal.id)
        if reply is None:
            raise ApiError(503, "orchestrator_unavailable", "the orchestrator did not answer")
        if reply.found:
            return reply
    raise ApiError(404, "session_not_found", "no session with that id is yours")


def _history_body(session_id: str, reply: HistoryReply) -> dict[str, object]:
    history = [{"role": m.role, "content": m.content} for m in reply.messages]
    body: dict[str, object] = {"session_id": session_id, "language": reply.language,
                               "system_prompt": reply.system_prompt, "turns": reply.turns,
                               "history": history}
    if reply.session is not None:
        body |= {key: value for key, value in _fields(reply.session).items()
                 if key not in ("session_id", "principal")}
        body["store_id"] = reply.session.session_id
    body["messages"] = [_fields(m) | {"models": [_fields(x) for x in m.models]} for m in reply.stored]
    body["messages_total"] = reply.stored_total  # (only the latest messages are listed)
    body["handoffs"] = [handoff_json(h) for h in reply.handoffs]  # who handled which turns
    return body


def _fields(struct: msgspec.Struct) -> dict[str, object]:
    """A wire struct (array-like on the plane) as a JSON object."""
    return msgspec.structs.asdict(struct)
