"""Who may use the control API: a bearer token, or without one, loopback clients only.

How this works: a middleware of the /v1 sub-application runs before every route (and before a 404,
so an unauthenticated client learns nothing about what exists). With `api.token` set, a request
must carry `Authorization: Bearer <token>`; the token is compared in constant time
(`hmac.compare_digest`) and a missing or wrong one gets 401 with `WWW-Authenticate` (RFC 6750 §3).
Without a token, only requests whose TCP peer is a loopback address are answered (403 otherwise):
the daemon's HTTP listener defaults to 127.0.0.1, and a token is what makes any other bind safe.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web

from .errors import ApiError, Handler

REALM = 'Bearer realm="b2bua"'


def is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def auth_middleware(token: str | None) -> Any:
    expected = token.encode() if token else None

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None:
            if not is_loopback(request.remote):
                raise ApiError(403, "no api.token is configured: the control API answers loopback clients only")
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": REALM})
        if not hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), expected):
            raise ApiError(401, "the bearer token is not valid",
                           {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
        return await handler(request)

    return authenticate
