"""The control API (b2bua/api/) served by a real aiohttp server on 127.0.0.1, over a Core on the fake wire.

Each test runs its own event loop (`asyncio.run`): the API's handlers and the sans-IO core share it,
as in the daemon; SIP time is virtual and moved by hand (`Wire.advance`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from b2bua.api import ApiContext, mount_api
from b2bua.api.auth import is_loopback
from b2bua.api.openapi import document
from b2bua.config import ConfigError, load_settings
from b2bua.http import make_http_app

from .test_call_flows import establish, ringing
from .wire import CALLER, PBX, Wire, response_to

TOKEN = "s3cret-token-for-tests_0123456789"


@dataclass
class Api:
    wire: Wire
    ctx: ApiContext
    base: str
    session: aiohttp.ClientSession
    app: web.Application
    runner: web.AppRunner

    def url(self, path: str) -> str:
        return self.base + path

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.url(path), **kw) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return resp.status, body, resp.headers

    def call_id(self) -> str:
        [call] = self.wire.core.calls
        return self.ctx.registry.id_of(call)


@contextlib.asynccontextmanager
async def served(w: Wire, *, remote: str | None = None, headers: dict[str, str] | None = None) -> AsyncIterator[Api]:
    """The API mounted on an app with /metrics and /healthz, listening on 127.0.0.1 (a free port).

    `remote`: the handlers see this client address instead of 127.0.0.1 (as if it came from afar)."""
    middlewares = []
    if remote is not None:
        @web.middleware
        async def pretend(request: web.Request, handler: Any) -> web.StreamResponse:
            return await handler(request.clone(remote=remote))
        middlewares.append(pretend)
    app = make_http_app(CollectorRegistry(), healthy=lambda: True)
    app.middlewares.extend(middlewares)
    ctx = mount_api(app, w.core, w.core.settings, w.log, w.core.stats)
    assert ctx is not None
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(headers=headers or {}, timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            yield Api(w, ctx, f"http://127.0.0.1:{port}", session, app, runner)
        finally:
            await runner.cleanup()
    assert w.core.stats.escaped_exceptions == 0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Let the loop run until `check()` is truthy (bounded)."""
    for _ in range(int(timeout / 0.01)):
        value = check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def wire_with_token(**api: Any) -> Wire:
    return Wire(overrides={"api": {"token": TOKEN, **api}})


# -- reading calls -----------------------------------------------------------------------------------


def test_list_and_show_a_call():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            status, body, _ = await api.request("GET", "/v1/calls")
            assert (status, body) == (200, {"calls": []})
            a200, b_inv, _ = establish(w)
            status, body, headers = await api.request("GET", "/v1/calls")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            [call] = body["calls"]
            assert re.fullmatch(r"[0-9a-f]{8}", call["id"])
            assert call["state"] == "confirmed" and call["transfer_in_progress"] is False
            assert call["caller"] == {"uri": "sip:alice@127.0.0.1:5070", "display": "Alice"}
            assert call["callee"] == {"uri": "sip:bob@127.0.0.1:5060", "display": None}
            assert call["created"].endswith("Z") and call["answered"].endswith("Z")
            assert call["media_relay"] is None  # relaying is off on this wire
            a, b = call["legs"]
            assert a == {"side": "a", "sip_call_id": a200.call_id, "local_tag": a200.to_tag,
                         "remote_tag": a200.from_tag, "peer": "udp:127.0.0.1:5070", "dialog": "confirmed",
                         "remote_party": {"uri": "sip:alice@127.0.0.1:5070", "display": "Alice"},
                         "held": False, "holding": False}
            assert b["side"] == "b" and b["sip_call_id"] == b_inv.call_id and b["remote_tag"] == "btag"
            assert b["peer"] == "udp:127.0.0.1:5080" and b["dialog"] == "confirmed"
            status, one, _ = await api.request("GET", f"/v1/calls/{call['id']}")
            assert status == 200 and one == call
    run(scenario)


def test_a_ringing_call_and_the_media_relay_name():
    async def scenario() -> None:
        w = Wire(relay=True)
        async with served(w) as api:
            ringing(w)
            status, body, _ = await api.request("GET", "/v1/calls")
            [call] = body["calls"]
            assert call["state"] == "early" and call["answered"] is None
            assert call["media_relay"] == "127.0.0.1:2223"
            assert call["legs"][1]["dialog"] == "none" and call["legs"][1]["remote_party"] is None
    run(scenario)


def test_unknown_ids_and_routes_are_404_json():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            for method, path in (("GET", "/v1/calls/nope"), ("DELETE", "/v1/calls/nope"),
                                 ("POST", "/v1/calls/nope/hold"), ("POST", "/v1/calls/nope/resume")):
                status, body, _ = await api.request(method, path)
                assert (status, body) == (404, {"error": "no call with id 'nope'"}), (method, path)
            status, body, _ = await api.request("GET", "/v1/nothing")
            assert (status, body) == (404, {"error": "no such route"})
            status, body, headers = await api.request("PUT", "/v1/calls")
            assert status == 405 and body == {"error": "method PUT not allowed here"} and "GET" in headers["Allow"]
    run(scenario)


# -- hanging up --------------------------------------------------------------------------------------


def test_delete_hangs_up_both_legs_with_the_reason():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            cid = api.call_id()
            status, body, _ = await api.request("DELETE", f"/v1/calls/{cid}", json={"reason": "operator hangup"})
            assert status == 202 and body["id"] == cid and body["state"] == "ending"
            [a_bye] = w.requests(CALLER, "BYE")
            [b_bye] = w.requests(PBX, "BYE")
            for bye in (a_bye, b_bye):
                assert bye.headers.get("Reason") == 'SIP;cause=200;text="operator hangup"'
            # Again while it ends: nothing more is sent (DELETE is idempotent).
            status, body, _ = await api.request("DELETE", f"/v1/calls/{cid}")
            assert status == 202 and len(w.requests(CALLER, "BYE")) == 1
            w.inject(response_to(a_bye, 200, "OK", to_tag=None), CALLER)
            w.inject(response_to(b_bye, 200, "OK", to_tag=None), PBX)
            assert not w.core.calls and w.core.stats.calls["answered"] == 1
            status, _, _ = await api.request("GET", f"/v1/calls/{cid}")
            assert status == 404
            assert ("hangup_requested", {"call_id": a200.call_id, "source": "api", "reason": "operator hangup"}) \
                in w.log.events
    run(scenario)


def test_delete_before_the_answer_answers_the_caller_and_cancels_the_callee():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            _, b_inv = ringing(w)
            status, _, _ = await api.request("DELETE", f"/v1/calls/{api.call_id()}")
            assert status == 202
            assert [r.status for r in w.responses(CALLER) if r.status >= 200] == [480]
            [cancel] = w.requests(PBX, "CANCEL")
            assert cancel.branch == b_inv.branch
    run(scenario)


# -- request bodies ----------------------------------------------------------------------------------


def test_bodies_are_validated_naming_the_field():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            hold = f"/v1/calls/{api.call_id()}/hold"
            status, body, _ = await api.request("POST", hold, json={"party": "c"})
            assert status == 422 and body["error"] == "invalid request body"
            assert body["problems"] == [{"field": "party", "message": "Input should be 'a' or 'b'"}]
            status, body, _ = await api.request("POST", hold, json={"party": "a", "colour": "blue"})
            assert status == 422
            assert body["problems"] == [{"field": "colour", "message": "Extra inputs are not permitted"}]
            status, body, _ = await api.request("POST", hold, data=b"{not json")
            assert status == 400 and body["error"].startswith("request body is not valid JSON")
            status, body, _ = await api.request("POST", hold, json=["a"])
            assert status == 422 and body["problems"][0]["field"] == "(body)"
            delete = f"/v1/calls/{api.call_id()}"
            status, body, _ = await api.request("DELETE", delete, json={"reason": 'evil"\r\nX-Injected: 1'})
            assert status == 422 and body["problems"][0]["field"] == "reason"
            status, body, _ = await api.request("DELETE", delete, json={"reason": "x" * 129})
            assert status == 422 and body["problems"][0]["field"] == "reason"
            assert not w.requests(CALLER, "BYE") and not w.requests(CALLER, "INVITE")[1:]
    run(scenario)


def test_oversized_bodies_are_413():
    async def scenario() -> None:
        w = Wire(overrides={"api": {"max_body_bytes": 256}})
        async with served(w) as api:
            establish(w)
            path = f"/v1/calls/{api.call_id()}"
            big = json.dumps({"reason": "x" * 300}).encode()
            status, body, _ = await api.request("DELETE", path, data=big)
            assert status == 413 and "256" in body["error"]

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
                for _ in range(10):
                    yield b" " * 100

            status, body, _ = await api.request("DELETE", path, data=chunks())
            assert status == 413
            assert w.core.calls and not w.requests(CALLER, "BYE")
    run(scenario)


# -- who may ask -------------------------------------------------------------------------------------


def test_without_a_token_only_loopback_clients_are_answered():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            status, _, _ = await api.request("GET", "/v1/calls")
            assert status == 200
        async with served(w, remote="192.0.2.7") as api:
            for path in ("/v1/calls", "/v1/events", "/v1/openapi.json", "/v1/unknown"):
                status, body, _ = await api.request("GET", path)
                assert status == 403 and "loopback" in body["error"], path
            status, _, _ = await api.request("GET", "/healthz")
            assert status == 200  # only /v1 is the API's
        assert ("api_enabled", {"auth": "none",
                                "access": "loopback clients only (set api.token to allow others)"}) in w.log.events
    run(scenario)


def test_with_a_token_every_v1_route_needs_it():
    async def scenario() -> None:
        w = wire_with_token()
        async with served(w, remote="192.0.2.7") as api:
            establish(w)
            cid = api.call_id()
            for method, path in (("GET", "/v1/calls"), ("GET", f"/v1/calls/{cid}"), ("DELETE", f"/v1/calls/{cid}"),
                                 ("POST", f"/v1/calls/{cid}/hold"), ("POST", f"/v1/calls/{cid}/resume"),
                                 ("GET", "/v1/events"), ("GET", "/v1/openapi.json"), ("GET", "/v1/unknown")):
                status, body, headers = await api.request(method, path)
                assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="b2bua"', (method, path)
                status, body, headers = await api.request(method, path, headers={"Authorization": "Bearer wrong"})
                assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"], (method, path)
                assert body == {"error": "the bearer token is not valid"}
            status, _, _ = await api.request("GET", "/v1/calls", headers={"Authorization": f"Basic {TOKEN}"})
            assert status == 401
            status, body, _ = await api.request("GET", "/v1/calls", headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200 and len(body["calls"]) == 1  # from any address, with the token
            assert w.core.calls and not w.requests(CALLER, "BYE")
            status, _, _ = await api.request("GET", "/healthz")
            assert status == 200
    run(scenario)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1") and not is_loopback(None)
    assert not is_loopback("not-an-ip")


def test_api_settings():
    s = load_settings(environ={})
    assert s.api.enabled and s.api.token is None
    assert s.http.listen == "127.0.0.1:9090"  # the API is on loopback unless the operator binds it wider
    s = load_settings(environ={"B2BUA_API__TOKEN": TOKEN})
    assert s.api.token is not None and s.api.token.get_secret_value() == TOKEN
    assert TOKEN not in s.model_dump_json()  # --check-config prints it masked
    for bad, field in (("short", "must be at least 16 characters"), ("with spaces in it 123", "bearer token")):
        with pytest.raises(ConfigError, match=f"api.token: .*{field}"):
            load_settings(environ={"B2BUA_API__TOKEN": bad})
    with pytest.raises(ConfigError, match="api.colour"):
        load_settings(overrides={"api": {"colour": 1}}, environ={})
    with pytest.raises(ConfigError, match="api.max_body_bytes"):
        load_settings(overrides={"api": {"max_body_bytes": 1}}, environ={})


def test_the_api_can_be_switched_off():
    w = Wire(overrides={"api": {"enabled": False}})
    app = web.Application()
    assert mount_api(app, w.core, w.core.settings, w.log, w.core.stats) is None
    assert not list(app.router.routes()) and not w.core.listeners


# -- the OpenAPI document ----------------------------------------------------------------------------


def _router_operations(app: web.Application) -> set[tuple[str, str]]:
    ops = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        routes = [r for res in sub.router.resources() for r in res] if sub is not None else list(resource)
        for route in routes:
            path = route.resource.canonical if route.resource is not None else ""
            if path.startswith("/v1"):
                ops.add((path, route.method.lower()))
    return ops


def test_openapi_document_matches_the_router():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            status, doc, _ = await api.request("GET", "/v1/openapi.json")
            assert status == 200 and doc == json.loads(json.dumps(document()))
            described = {(path, method) for path, item in doc["paths"].items() for method in item}
            assert described == _router_operations(api.app)
            assert doc["openapi"].startswith("3.1")
            # Every reference resolves, every operation has an id and a success response.
            text = json.dumps(doc)
            for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text):
                assert ref in doc["components"]["schemas"], ref
            ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
            assert len(ids) == len(set(ids))
            for item in doc["paths"].values():
                for op in item.values():
                    assert any(code.startswith("2") for code in op["responses"])
            assert doc["components"]["schemas"]["HoldBody"]["additionalProperties"] is False
    run(scenario)


def test_a_listener_failure_never_reaches_the_core():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            def broken(*_: Any) -> None:
                raise RuntimeError("bug")
            api.ctx.hub.publish = broken  # type: ignore[method-assign]
            establish(w)  # call_started, call_answered: each fails in the listener, the call goes on
            assert len(w.core.calls) == 1 and w.requests(PBX, "ACK")
            assert w.core.stats.escaped_exceptions == 2
            w.core.stats.escaped_exceptions = 0  # counted; the fixture's check is for other bugs
    run(scenario)

