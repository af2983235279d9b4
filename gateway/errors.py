"""The gateway's one error shape: `{"error": code, "message": why}` with the right status.

Every refusal (auth, limits, validation, an unavailable worker) raises `ApiError`; the handlers
here turn it, and FastAPI's own validation errors, into that shape, so a client can always read
a machine code and a human reason.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.responses import OrjsonResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> OrjsonResponse:
        return OrjsonResponse({"error": self.code, "message": self.message}, status_code=self.status,
                              headers=self.headers)


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> OrjsonResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> OrjsonResponse:
        errors = exc.errors()
        message = "; ".join(f"{_where(e)}: {e.get('msg', 'invalid')}" for e in errors[:5])
        details = [{"field": _where(e), "problem": str(e.get("msg", ""))} for e in errors[:20]]
        return OrjsonResponse({"error": "invalid_request", "message": message, "details": details},
                              status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return OrjsonResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code,
                              headers=getattr(exc, "headers", None))
