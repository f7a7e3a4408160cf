"""`GET /v1/openapi.json`: the OpenAPI 3.1 description of the control API.

How this works: the paths and operations are written out here, once; every schema comes from the
pydantic models the handlers use (request bodies from bodies.py, responses from views.py), so the
shapes cannot drift. A unit test compares this document's paths and methods with the routes the
/v1 application really has, both ways, so a route added without its description (or the reverse)
fails the suite. Add a route here when you add one to the router.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from .bodies import HangupBody, HoldBody
from .views import CallList, CallView, ErrorView

API_VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(CallList, "serialization"), (CallView, "serialization"), (ErrorView, "serialization"),
         (HangupBody, "validation"), (HoldBody, "validation")],
        ref_template=_REF)
    return dict(top.get("$defs", {}))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("ErrorView")}}}


def _ok(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_AUTH = {"401": _error("missing or wrong bearer token (api.token is set)"),
         "403": _error("no api.token is configured and the client is not on loopback")}
_CALL_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the call's API id (`id` in the listing)"}
_BODY_ERRORS = {"400": _error("the body is not JSON"), "413": _error("the body is larger than api.max_body_bytes"),
                "422": _error("the body has a wrong, missing or unknown field (see `problems`)")}


def _hold_op(hold: bool) -> dict[str, Any]:
    verb = "hold" if hold else "resume"
    direction = "sendonly (recvonly streams become inactive)" if hold else "sendrecv (inactive become recvonly)"
    return {
        "operationId": f"{verb}Party",
        "summary": f"{verb.capitalize()} one party of the call",
        "description": f"The B2BUA re-INVITEs the party with the SDP it last sent it, marked {direction}, "
                       "and answers once the party has answered. A 491 is retried once after 2.1 s.",
        "parameters": [_CALL_ID],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("HoldBody")}}},
        "responses": {
            "200": _ok("CallView", "the party accepted; the call as it is now"),
            "404": _error("no live call with this id"),
            "409": _error("not now: the call is not up, a re-INVITE or transfer is under way, the party "
                          f"is {'already' if hold else 'not'} on hold, or glare persisted (`sip_status` 491)"),
            "502": _error("the party refused the re-INVITE (its status in `sip_status`)"),
            "504": _error("the party did not answer the re-INVITE"),
            **_BODY_ERRORS, **_AUTH,
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "b2bua control API",
            "version": API_VERSION,
            "description": "Calls through the B2BUA: list, inspect, hang up, hold and resume, and a live "
                           "event stream. Served next to /metrics on the daemon's http.listen address.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {}],
        "paths": {
            "/v1/calls": {
                "get": {
                    "operationId": "listCalls",
                    "summary": "Calls in progress, oldest first",
                    "responses": {"200": _ok("CallList", "every live call"), **_AUTH},
                },
            },
            "/v1/calls/{id}": {
                "get": {
                    "operationId": "getCall",
                    "summary": "One call",
                    "parameters": [_CALL_ID],
                    "responses": {"200": _ok("CallView", "the call"), "404": _error("no live call with this id"),
                                  **_AUTH},
                },
                "delete": {
                    "operationId": "hangupCall",
                    "summary": "Hang the call up",
                    "description": "BYE on both legs (with the reason in a Reason header); before the answer "
                                   "the caller gets 480 and the callee a CANCEL. Answers at once; the end "
                                   "shows as call_ended on the event stream. A call already ending is left so.",
                    "parameters": [_CALL_ID],
                    "requestBody": {"required": False,
                                    "content": {"application/json": {"schema": _ref("HangupBody")}}},
                    "responses": {"202": _ok("CallView", "hanging up"), "404": _error("no live call with this id"),
                                  **_BODY_ERRORS, **_AUTH},
                },
            },
            "/v1/calls/{id}/hold": {"post": _hold_op(True)},
            "/v1/calls/{id}/resume": {"post": _hold_op(False)},
            "/v1/events": {
                "get": {
                    "operationId": "streamEvents",
                    "summary": "Call events as server-sent events",
                    "description": "Each event: `id` (sequence), `event` (call_started, call_answered, "
                                   "bye_received, party_held, transfer_started, call_ended, ...) and `data`, a "
                                   "JSON object {seq, time, event, call, sip_call_id, fields}. Comment lines "
                                   "keep an idle stream alive. A client that falls api.sse_queue_events behind "
                                   "gets `stream_overflow` and is dropped; at shutdown `stream_closed`.",
                    "parameters": [{"name": "call", "in": "query", "required": False, "schema": {"type": "string"},
                                    "description": "only this call's events; the stream ends after its call_ended"}],
                    "responses": {
                        "200": {"description": "the stream", "content": {"text/event-stream": {
                            "schema": {"type": "string"}}}},
                        "400": _error("unknown query parameter"),
                        "404": _error("no live call with the id given in `call`"),
                        "503": _error("too many streams (api.sse_max_clients)"),
                        **_AUTH,
                    },
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
                        "schema": {"type": "object"}}}}, **_AUTH},
                },
            },
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "api.token (or B2BUA_API__TOKEN). Without a token configured, no credentials "
                               "are needed but only loopback clients are answered."}},
        },
    }


def add_routes(app: web.Application) -> None:
    doc = document()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(doc)

    app.router.add_get("/openapi.json", openapi, allow_head=False)
