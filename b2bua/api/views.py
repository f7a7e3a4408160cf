"""What the control API says about a call: response models, and a call rendered into them.

How this works: the models are pydantic, like the request bodies, so the OpenAPI document takes
their JSON Schema from the same classes the responses are built with and cannot drift from them.
`call_view` reads only public state of a `Call` and its two bridged legs (a third leg that a
transfer is ringing is not shown; `transfer_in_progress` says one is under way: a transfer of this
call, this call lent to an attended transfer, or an INVITE with Replaces taking one of its legs).
Times are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..call.call import Call
from ..call.hold import transfer_under_way
from ..call.leg import Leg
from ..call.originate import OriginatedCall
from ..sip.headers import HeaderError, NameAddr, parse_name_addr
from ..sip.uri import UriError
from .registry import Entry


class View(BaseModel):
    model_config = ConfigDict(frozen=True)


class Party(View):
    uri: str
    display: str | None = Field(None, description="display name, unquoted")


class LegView(View):
    side: Literal["a", "b"] = Field(description='"a": toward the caller (we are UAS); "b": toward the callee')
    sip_call_id: str
    local_tag: str
    remote_tag: str | None
    peer: str = Field(description="transport:host:port the leg's first request came from or went to")
    dialog: Literal["none", "early", "confirmed", "terminated"]
    remote_party: Party | None = Field(None, description="the party at the far end of this leg (From/To)")
    held: bool = Field(description="the last SDP the B2BUA sent this party holds it (sendonly/inactive)")
    holding: bool = Field(description="this party's own last SDP holds its streams (it put the call on hold)")


class CallView(View):
    id: str = Field(description="the API's id of the call")
    state: Literal["calling", "early", "confirmed", "cancelling", "ending", "ended"]
    created: datetime
    answered: datetime | None
    caller: Party = Field(description="From of the caller's INVITE (click-to-dial: party a, called first)")
    callee: Party = Field(description="To of the caller's INVITE, the party dialled (click-to-dial: party b)")
    originated: bool = Field(False, description="placed by the B2BUA itself (POST /v1/calls)")
    legs: list[LegView]
    media_relay: str | None = Field(description="the relay carrying the call's media (none: not anchored)")
    transfer_in_progress: bool


class TransferStarted(View):
    call: CallView = Field(description="the call being transferred, as it is now")
    type: Literal["blind", "attended", "early"]
    method: Literal["rebridge", "refer"] = Field(description="how it is carried out (after any fallback)")
    party: Literal["a", "b"] = Field(description="the party transferred; the other one is released")
    target: str = Field(description="blind: the target URI; attended, early: the consultation's target party")
    consult_call_id: str | None = None
    fallback: str | None = Field(None, description="why the method is not the one asked for (REFER refused, "
                                                   "or early completion, which endpoints cannot do)")


class ConsultView(View):
    call: CallView
    action: Literal["start", "complete", "cancel", "swap"]
    consult: Literal["talking_to_target", "talking_to_held", "ended"] = Field(
        description="where the consultation stands after the action")


class CallList(View):
    calls: list[CallView]


class Problem(View):
    field: str
    message: str


class ErrorView(View):
    error: str = Field(description="what went wrong, for a person")
    problems: list[Problem] | None = Field(None, description="422: one entry per refused field")
    sip_status: int | None = Field(None, description="hold/resume: the party's SIP answer")


def _party(value: NameAddr | str | None) -> Party | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = parse_name_addr(value)
        except (HeaderError, UriError, ValueError):
            return Party(uri=value)
    return Party(uri=str(value.uri), display=value.display_name)


def _time(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def leg_view(leg: Leg) -> LegView:
    dialog = leg.dialog
    return LegView.model_validate({
        "side": leg.label,
        "sip_call_id": leg.call_id,
        "local_tag": leg.local_tag,
        "remote_tag": dialog.remote_tag if dialog is not None else None,
        "peer": str(leg.peer),
        "dialog": dialog.state.value if dialog is not None else "none",
        "remote_party": _party(dialog.remote_party) if dialog is not None else None,
        "held": leg.sdp.local_held,
        "holding": leg.sdp.peer_held,
    })


def call_view(call: Call, entry: Entry) -> CallView:
    relay = getattr(call.media, "relay", None)  # absent with media relaying off
    invite = call.a_invite
    originated = isinstance(call, OriginatedCall)
    caller, callee = (call.party_a, call.party_b) if isinstance(call, OriginatedCall) else (invite.from_, invite.to)
    busy = entry.busy or ""
    return CallView.model_validate({
        "id": entry.id,
        "state": call.state.value,
        "created": _time(entry.created),
        "answered": _time(entry.answered),
        "caller": _party(caller),
        "callee": _party(callee),
        "originated": originated,
        "legs": [leg_view(call.a), leg_view(call.b)],
        "media_relay": getattr(relay, "name", None),
        "transfer_in_progress": transfer_under_way(call) or busy.startswith(("transfer", "consult")),
    })
