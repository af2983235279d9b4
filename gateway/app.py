"""The gateway's HTTP and WebSocket surface (FastAPI): routes, auth, limits, errors, metrics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from common import logs
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
from gateway.page import add_page_routes
from gateway.responses import OrjsonResponse
from gateway.rest import add_rest_routes
from gateway.rtc import add_rtc_routes
from gateway.security import EdgeGuard


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.register_secrets([*settings.api_keys, *settings.admin_api_keys, settings.jwt_secret])
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
            allow_methods=["GET", "POST", "OPTIONS"],
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

    @router.get("/v1/sessions/{session_id}", tags=["assistant"],
                responses={404: {"description": "No such session of yours"}})
    async def session_history(session_id: str, principal: Principal = Depends(guard.caller)
                              ) -> OrjsonResponse:
        """A live session's dialogue history (what the assistant keeps of each turn)."""
        # A client-chosen id lives in its caller's namespace (gateway.bridge.scoped_session_id);
        # an id the server made up is used as it is.
        internal = scoped_session_id(principal.id, session_id)
        if internal not in bridge.connections:
            internal = session_id
        connection = bridge.connections.get(internal)
        if not principal.admin and (connection is None or connection.owner != principal.id):
            raise ApiError(404, "session_not_found", "no live session with that id is yours")
        reply = await bridge.history(internal, admin=principal.admin)
        if reply is None:
            raise ApiError(503, "orchestrator_unavailable", "the orchestrator did not answer")
        if not reply.found:
            raise ApiError(404, "session_not_found", "no live session with that id")
        history = [{"role": m.role, "content": m.content} for m in reply.messages]
        return OrjsonResponse({"session_id": session_id, "language": reply.language,
                               "system_prompt": reply.system_prompt, "turns": reply.turns,
                               "history": history})
