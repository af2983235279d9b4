"""The browser page: `/` serves it, `/static/…` its ES modules, `/client-config` what it needs.

The page is plain files inside the gateway package (no CDN, no build step), so an offline
machine serves a working client. `/client-config` tells the page, before it asks for the
microphone, whether it needs a credential, which transports and languages this server offers.
It carries no secret and needs no credential: the page cannot show its key field otherwise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from common.languages import registry as languages
from common.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page's own scripts, styles and media only; no inline script, nothing from elsewhere.
# `connect-src` names ws:/wss: because a WebSocket to the page's own origin is not 'self' in
# every browser; `media-src blob:` is not needed (WebRTC audio plays from a MediaStream).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self'; worker-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # a restarted server's page is picked up at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def webrtc_available(settings: Settings) -> bool:
    """WebRTC is offered when it is switched on and its optional extra (aiortc) is installed."""
    return bool(settings.enable_webrtc) and importlib.util.find_spec("aiortc") is not None


def client_config(settings: Settings) -> dict[str, Any]:
    return {
        "auth_required": bool(settings.api_keys or settings.admin_api_keys or settings.jwt_secret),
        "webrtc": webrtc_available(settings),
        "languages": languages.codes(),
        "default_language": settings.language,
        # STUN/TURN for the browser's side of WebRTC; the setting belongs to the WebRTC area.
        "ice_servers": list(getattr(settings, "rtc_ice_servers", []) or []),
    }


class _StaticFiles(StaticFiles):
    """Static files with the page's headers (module scripts must not be sniffed or cached stale)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def add_page_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/client-config", tags=["page"])
    async def get_client_config() -> dict[str, Any]:
        """What the browser page needs before it starts: auth, transports, languages, ICE servers."""
        return client_config(settings)

    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
