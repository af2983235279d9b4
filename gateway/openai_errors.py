"""OpenAI's error shape on the OpenAI-compatible routes, whoever refused the request.

Refusals come from three places: the edge middleware (auth, host, body cap: before any route
runs), the guard and the routes (`ApiError`), and FastAPI's validation. All of them write the
gateway's shape `{"error": code, "message": why}`. One outer ASGI middleware rewrites error
responses on the OpenAI paths into `{"error": {"message", "type", "code", "param"}}`, so every
refusal there is translated in one place and the rest of the API keeps its own shape.

Status codes follow OpenAI's: a request the gateway finds invalid (422, or 415 for an unusable
upload) is a 400, which the SDK raises as `BadRequestError`; 401, 403, 404, 413, 429 and 5xx keep
their codes (`AuthenticationError`, `PermissionDeniedError`, `NotFoundError`, `RateLimitError`,
`InternalServerError`).
"""

from __future__ import annotations

from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]

OPENAI_PREFIXES = ("/v1/audio/", "/v1/chat/completions", "/v1/realtime")
_STATUS = {415: 400, 422: 400}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}
_CODES = {"rate_limited": "rate_limit_exceeded", "audio_quota_exceeded": "insufficient_quota",
          "invalid_credentials": "invalid_api_key", "missing_credentials": "invalid_api_key"}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an Inzwa refusal."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if code == "audio_quota_exceeded":
        kind = "insufficient_quota"
    return {"error": {"message": message, "type": kind, "code": _CODES.get(code, code), "param": param}}


def translate(status: int, body: bytes) -> tuple[int, bytes]:
    """An Inzwa error response as OpenAI's; bodies of another shape pass unchanged."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, body
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return status, body
    details = data.get("details")
    param = details[0].get("field") if isinstance(details, list) and details and \
        isinstance(details[0], dict) else None
    status = _STATUS.get(status, status)
    return status, orjson.dumps(error_body(status, data["error"], str(data.get("message", "")), param))


class OpenAIErrors:
    """Pure ASGI middleware: error responses on OPENAI_PREFIXES in OpenAI's shape."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(OPENAI_PREFIXES):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.append(message)  # an error: hold its start until the whole body is here
                return
            if not held:
                await send(message)
                return
            held.append(message)
            if not message.get("more_body", False):
                await self._flush(held, send)

        await self.app(scope, receive, sending)

    @staticmethod
    async def _flush(held: list[Message], send: Any) -> None:
        start, parts = held[0], held[1:]
        body = b"".join(part.get("body", b"") for part in parts)
        status, body = translate(start["status"], body)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
