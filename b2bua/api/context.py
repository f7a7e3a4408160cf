"""What every API handler needs, in one place: the core, the registry, the event hub, the door in.

How this works: `mount_api` builds one `ApiContext` and stores it in the /v1 sub-application under
`CONTEXT`; handlers fetch it with `request.config_dict[CONTEXT]`. `call_for` turns the `{id}` of a
route into a live call (404 otherwise); `on_core_event` is the listener the core calls for every
call event: it gives the call its id, fans the event out to the streams and keeps the registry's
times, and never lets anything raise back into the core (a failure is counted as a bug and dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..call.call import Call
from ..config import ApiSettings
from .errors import ApiError
from .events import EventHub
from .gate import CoreGate
from .registry import CallRegistry


@dataclass
class ApiContext:
    core: Any  # b2bua.core.Core
    settings: ApiSettings
    registry: CallRegistry
    hub: EventHub
    gate: CoreGate
    on_bug: Callable[[BaseException, str], None]
    operation_timeout: float  # longest an API request waits for a SIP outcome (then 504)
    consults: dict[Call, Any] = field(default_factory=dict)  # supervised consultations under way (consult.py)

    def call_for(self, request: web.Request) -> Call:
        call_id = request.match_info["id"]
        call = self.registry.find(call_id)
        if call is None:
            raise ApiError(404, f"no call with id {call_id!r}")
        return call

    def on_core_event(self, call: Call, event: str, fields: dict[str, Any]) -> None:
        try:
            if event == "call_ended" or call in self.core.calls:
                api_id = self.registry.id_of(call)
            else:
                known = self.registry.known_id(call)
                if known is None:
                    return  # an echo after the call's end (a late timer): the call is gone for the API
                api_id = known
            self.hub.publish(api_id, call.call_id, event, dict(fields))
            self.registry.on_event(call, event, fields)
            if event == "call_ended":
                self.consults.pop(call, None)
        except Exception as exc:  # a listener must never raise into the core
            self.on_bug(exc, "api_listener")


CONTEXT = web.AppKey("b2bua_api", ApiContext)
