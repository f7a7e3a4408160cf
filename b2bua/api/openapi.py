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

from .bodies import ConsultBody, HangupBody, HoldBody, OriginateBody, TransferBody
from .views import CallList, CallView, ConsultView, ErrorView, TransferStarted

API_VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [(CallList, "serialization"), (CallView, "serialization"), (ErrorView, "serialization"),
         (TransferStarted, "serialization"), (ConsultView, "serialization"),
         (HangupBody, "validation"), (HoldBody, "validation"), (OriginateBody, "validation"),
         (TransferBody, "validation"), (ConsultBody, "validation")],
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


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_ORIGINATE = {
    "operationId": "originateCall",
    "summary": "Click-to-dial: call party a, then party b, and bridge them",
    "description": "The B2BUA sends party a an INVITE without SDP; a's 200 carries the offer, which goes "
                   "through the relay into the INVITE to b; b's answer reaches a in the ACK (RFC 3725 flow I). "
                   "b rings at most 64·T1 - 2 s (a's 200 waits for its ACK meanwhile). Answered at once; "
                   "progress on the event stream: originate_started, party_ringing, party_answered, "
                   "call_answered, or originate_failed {side, status, reason} and call_ended {result, ...}.",
    "requestBody": _body("OriginateBody"),
    "responses": {
        "201": _ok("CallView", "the call, being placed (Location: its URL)"),
        "403": _error("a target the transfer policy (transfers.allow/deny) refuses"),
        "503": _error("draining, or at calls.max_calls"),
        **_BODY_ERRORS, **_AUTH,
    },
}

_TRANSFER = {
    "operationId": "transferCall",
    "summary": "Transfer one party of the call (blind, attended, early completion)",
    "description": "rebridge: the B2BUA calls the target (blind) or takes the consultation call's target leg "
                   "(attended, early), re-INVITEs the transferee onto it and releases the other party; on "
                   "failure the call stays as it was. refer: REFER to the transferee with a Refer-To back "
                   "through the B2BUA (attended: with Replaces naming the consultation leg); 403/405/501 "
                   "fall back to rebridge when api.refer_fallback is set; early completion is always done "
                   "by rebridge. Progress on the event stream: transfer_started, transfer_progress "
                   "{status, sipfrag}, transfer_completed or transfer_failed.",
    "parameters": [_CALL_ID],
    "requestBody": _body("TransferBody"),
    "responses": {
        "202": _ok("TransferStarted", "under way (refer: the REFER was accepted)"),
        "403": _error("a target the transfer policy refuses"),
        "404": _error("no live call with this id, or no consultation call with consult_call_id"),
        "409": _error("not now: the call (or the consultation call) is not in a state to transfer; the reason "
                      "says which (not answered, a transfer or re-INVITE under way, busy with another API "
                      "operation, not ringing for early, ...)"),
        "502": _error("the transferee refused the REFER (its status in `sip_status`)"),
        "504": _error("the transferee did not answer the REFER in time"),
        **_BODY_ERRORS, **_AUTH,
    },
}

_CONSULT = {
    "operationId": "consultCall",
    "summary": "Supervised transfer inside the B2BUA: start, complete, cancel, swap",
    "description": "start: hold `party` (signalling hold: sendonly re-INVITE; no music on hold yet), call "
                   "`target` and connect it to the other party (the held one waits, parked on the B2BUA). "
                   "complete: join the held party to the target, release the other. cancel: hang the target "
                   "up, reconnect the held party. swap: hold whoever talks to the middle party, reconnect "
                   "the held one. Each answers once the re-INVITEs are done (start: once the target answered).",
    "parameters": [_CALL_ID],
    "requestBody": _body("ConsultBody"),
    "responses": {
        "200": _ok("ConsultView", "done"),
        "403": _error("a target the transfer policy refuses"),
        "404": _error("no live call with this id"),
        "409": _error("not now (no consultation under way, one already is, a transfer or re-INVITE pending, "
                      "the call ended meanwhile); the reason says which"),
        "502": _error("the target or a party refused (its status in `sip_status`)"),
        "504": _error("no outcome in time"),
        **_BODY_ERRORS, **_AUTH,
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "b2bua control API",
            "version": API_VERSION,
            "description": "Calls through the B2BUA: list, inspect, place (click-to-dial), hang up, hold and "
                           "resume, transfer (blind, attended, early completion; by rebridging or REFER), a "
                           "supervised consultation, and a live event stream. Served next to /metrics on the "
                           "daemon's http.listen address.",
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
                "post": _ORIGINATE,
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
            "/v1/calls/{id}/transfer": {"post": _TRANSFER},
            "/v1/calls/{id}/consult": {"post": _CONSULT},
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
