"""Request bodies of the control API: pydantic models, read within a size limit.

How this works: `read_body(request, Model, max_bytes)` reads at most `max_bytes` + 1 bytes of the body
(whatever Content-Length says, chunked or not) and answers 413 beyond that; an empty body is `{}`,
so every field's default applies. The JSON is validated by the model in one step: a syntax error is
400, anything else the model refuses (a wrong value, a missing field, an unknown field: every model
forbids extras) is 422 with one entry per problem naming the field, e.g.
`{"error": "invalid request body", "problems": [{"field": "party", "message": "Input should be 'a' or 'b'"}]}`.
The Content-Type is not checked (so `curl -d '{...}'` works); the body must be JSON all the same.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApiError

Model = TypeVar("Model", bound=BaseModel)

# Text that ends up inside a SIP quoted-string (a Reason header): no quotes, backslashes or controls.
SAFE_TEXT = r'^[^"\\\x00-\x1f\x7f]*$'


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HangupBody(Body):
    """`DELETE /v1/calls/{id}`."""

    reason: str | None = Field(
        None, min_length=1, max_length=128, pattern=SAFE_TEXT,
        description="sent in the BYE's Reason header (text=...) on each leg; ignored before the answer")


class HoldBody(Body):
    """`POST /v1/calls/{id}/hold` and `/resume`."""

    party: Literal["a", "b"] = Field(
        "a", description='the party re-INVITEd: "a" the caller (default: the usual case of an agent, '
                         'the callee, holding the customer), "b" the callee')


# A URI or a bare user/number as a person types it: no spaces, no controls, no angle brackets.
URI_TEXT = r"^[^\s<>\"\x00-\x1f\x7f]+$"


class OriginateBody(Body):
    """`POST /v1/calls`: click-to-dial."""

    a: str = Field(description="the party called first (an operator's own phone, usually): a sip: or tel: "
                               "URI, or a bare user/number routed like a call to it",
        min_length=1, max_length=256, pattern=URI_TEXT)
    b: str = Field(description="the party called once a has answered, and bridged to a",
        min_length=1, max_length=256, pattern=URI_TEXT)
    caller_id: str | None = Field(None, description="the From shown to party a (default: b's URI)",
        min_length=1, max_length=256, pattern=URI_TEXT)
    ring_timeout_s: float | None = Field(
        None, gt=0, le=600, description="how long each party may ring (default calls.no_answer_timeout_s); "
                                        "b rings at most 64·T1 less 2 s (a's 200 waits for its ACK meanwhile)")


class TransferBody(Body):
    """`POST /v1/calls/{id}/transfer`."""

    type: Literal["blind", "attended", "early"] = Field(
        description="blind: call `target`; attended: join to the answered consultation call "
                    "`consult_call_id`; early: to the consultation call while it still rings")
    target: str | None = Field(None, description="blind: where to (sip:/tel: URI or a bare user)",
        min_length=1, max_length=256, pattern=URI_TEXT)
    consult_call_id: str | None = Field(None, min_length=1, max_length=64,
                                        description="attended, early: the API id of the consultation call")
    consult_target: Literal["a", "b"] = Field(
        "b", description="which party of the consultation call is the target (default b, its callee: the "
                         "transferor called the target); the other party there is released")
    party: Literal["a", "b"] = Field(
        "a", description='the party transferred (the transferee): "a", the caller (default: the usual case '
                         'of a customer transferred away from an agent), or "b"; the other party is released')
    method: Literal["rebridge", "refer"] | None = Field(
        None, description="rebridge: the B2BUA places the new leg and re-INVITEs; refer: REFER to the "
                          "transferee (default api.transfer_method)")
    refer_wait: Literal["attended", "unattended"] | None = Field(
        None, description="method refer: done on the final NOTIFY 2xx (attended) or on the 2xx to the REFER "
                          "(unattended); default api.refer_wait")


class ConsultBody(Body):
    """`POST /v1/calls/{id}/consult`: the supervised transfer, step by step."""

    action: Literal["start", "complete", "cancel", "swap"] = Field(
        description="start: hold `party`, call `target` and connect it to the other party; complete: join "
                    "the held party to the target and release the other; cancel: hang the target up and "
                    "reconnect the held party; swap: hold the one talking, talk to the held one")
    target: str | None = Field(None, description="start: whom to consult (sip:/tel: URI or a bare user)",
        min_length=1, max_length=256, pattern=URI_TEXT)
    party: Literal["a", "b"] = Field("a", description="start: the party put on hold (default a, the caller)")


async def read_body(request: web.Request, model: type[Model], max_bytes: int) -> Model:
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, f"request body larger than {max_bytes} bytes (api.max_body_bytes)")
    data = bytearray()
    for _ in range(max_bytes + 2):  # every read returns at least one byte until the end
        chunk = await request.content.read(max_bytes + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > max_bytes:
            raise ApiError(413, f"request body larger than {max_bytes} bytes (api.max_body_bytes)")
    text = bytes(data).strip() or b"{}"
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(400, f"request body is not valid JSON: {errors[0]['msg']}") from None
        problems = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]} for e in errors]
        raise ApiError(422, "invalid request body", problems=problems) from None
