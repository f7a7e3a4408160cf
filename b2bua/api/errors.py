"""Errors of the control API: one JSON shape for every 4xx/5xx the API answers.

How this works: handlers raise `ApiError(status, message, **extra)`; the `json_errors` middleware
turns it, and aiohttp's own 404/405/413, into `{"error": message, ...extra}` with that status, so a
client always gets JSON it can show as is. Any other exception is a bug of ours: it is counted in
`b2bua_escaped_exceptions_total` (the tests fail on it), logged, and answered 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, **self.extra}, status=self.status, headers=self.headers)


def error_middleware(on_bug: Callable[[BaseException, web.Request], None]) -> Any:
    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
            message = {404: "no such route", 405: f"method {request.method} not allowed here"}.get(
                exc.status, exc.reason)
            return ApiError(exc.status, message, headers).response()
        except Exception as exc:
            on_bug(exc, request)
            return ApiError(500, "internal error (a bug: it has been logged)").response()

    return json_errors
