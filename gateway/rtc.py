"""`POST /rtc/session`: a voice session over WebRTC (SDP offer in, answer out).

Only with `INZWA_ENABLE_WEBRTC=true` and aiortc installed (the `webrtc` extra); otherwise the
route answers 404 `webrtc_disabled`, and aiortc is never imported. Same credentials, request
rate, concurrent-session slot and audio quota as `/ws/audio` (the session checks them). The
offer is a small JSON body: `{"sdp", "type": "offer", "language"?, "session_id"?}`.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import FastAPI, Request

from common.settings import Settings
from gateway.auth import bearer
from gateway.bridge import Bridge
from gateway.errors import ApiError
from gateway.guard import Guard, client_host
from gateway.responses import OrjsonResponse

if TYPE_CHECKING:
    from gateway.rtc_peer import RtcPeer

log = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024  # an SDP offer with a few hundred candidates fits in a tenth of it


class Offer(msgspec.Struct):
    sdp: str
    type: str
    language: str = ""
    session_id: str = ""


_offer_decoder = msgspec.json.Decoder(Offer)


def webrtc_enabled(settings: Settings) -> bool:
    return settings.enable_webrtc and importlib.util.find_spec("aiortc") is not None


async def read_offer(request: Request) -> Offer:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            raise ApiError(413, "body_too_large", f"an offer is at most {MAX_OFFER_BYTES} bytes")
    try:
        offer = _offer_decoder.decode(bytes(body))
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ApiError(400, "bad_offer", f"expected {{sdp, type: offer}}: {exc}") from None
    if offer.type != "offer" or not offer.sdp.strip():
        raise ApiError(400, "bad_offer", "type must be \"offer\" with a non-empty sdp")
    return offer


class RtcSessions:
    """The live peers of this gateway (so they are not garbage-collected mid-call)."""

    def __init__(self, bridge: Bridge, settings: Settings, guard: Guard) -> None:
        self.bridge, self.settings, self.guard = bridge, settings, guard
        self.peers: set[RtcPeer] = set()

    async def answer(self, request: Request) -> dict[str, Any]:
        from gateway.rtc_peer import RtcPeer  # aiortc only when WebRTC is on

        token = bearer(request.headers.get("authorization"))
        offer = await read_offer(request)
        peer = RtcPeer(self.bridge, self.settings, self.guard, self.peers)
        try:
            return await peer.answer(msgspec.structs.asdict(offer), token, client_host(request))
        except BaseException:
            await peer.end("refused")  # releases the slot and the orchestrator session, if taken
            raise


def add_rtc_routes(app: FastAPI, bridge: Bridge, settings: Settings, guard: Guard) -> None:
    sessions = RtcSessions(bridge, settings, guard) if webrtc_enabled(settings) else None
    if settings.enable_webrtc and sessions is None:
        log.warning("INZWA_ENABLE_WEBRTC is set but aiortc is not installed: pip install -e '.[webrtc]'")

    @app.post("/rtc/session", tags=["assistant"], response_class=OrjsonResponse, responses={
        400: {"description": "Bad offer or start"}, 401: {"description": "No or bad credentials"},
        404: {"description": "WebRTC is disabled"}, 429: {"description": "Rate limited"},
        503: {"description": "Not ready"}})
    async def rtc_session(request: Request) -> OrjsonResponse:
        """A voice session over WebRTC: the client's SDP offer (non-trickle) in, the answer out.
        The client's microphone goes on an audio track, events and control messages on a data
        channel labelled "events"; reply audio comes back on one audio track."""
        if sessions is None:
            raise ApiError(404, "webrtc_disabled", "WebRTC is not enabled on this server; use /ws/audio")
        return OrjsonResponse(await sessions.answer(request))
