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
