"""`POST /v1/calls` (click-to-dial) over real HTTP, both parties answered on the fake wire in virtual time.

Party a is "alice" (routed to CALLER's address by a rule), party b "carol" (TARGET). The relay is
the real in-process rtp_relay, so the SDP each party gets names ports the relay allocated.
"""

from __future__ import annotations

import asyncio
from typing import Any

from b2bua.sip.message import Request

from .test_api import Api, run, served
from .test_api_transfers import events
from .test_attended_transfer import answer
from .test_call_media import CALLER_SDP, media_port, relay_ports
from .test_transfer import TARGET, TARGET_SDP
from .wire import CALLER, Wire, in_dialog, response_to

ROUTES = {"routing": {"next_hop": "127.0.0.1:5080", "rules": [
    {"user_prefix": "alice", "next_hop": "127.0.0.1:5070"}, {"user_prefix": "carol", "next_hop": "127.0.0.1:5090"}]}}


def wire(**over: Any) -> Wire:
    return Wire(relay=True, overrides={**ROUTES, **over})


def originate(api: Api, **body: Any) -> asyncio.Task[tuple[int, Any, Any]]:
    return asyncio.ensure_future(api.request("POST", "/v1/calls", json=body))


def a_answers(w: Wire, x_inv: Request) -> None:
    w.inject(response_to(x_inv, 180, "Ringing", to_tag="xtag", contact="<sip:alice@127.0.0.1:5070>"), CALLER)
    w.inject(response_to(x_inv, 200, "OK", to_tag="xtag", contact="<sip:alice@127.0.0.1:5070>",
                         extra="Content-Type: application/sdp"), CALLER, body=CALLER_SDP)


def b_answers(w: Wire, y_inv: Request, status: int = 200, reason: str = "OK") -> None:
    w.inject(response_to(y_inv, 180, "Ringing", to_tag="ytag", contact="<sip:carol@127.0.0.1:5090>"), TARGET)
    extra = "Content-Type: application/sdp" if status == 200 else ""
    w.inject(response_to(y_inv, status, reason, to_tag="ytag", contact="<sip:carol@127.0.0.1:5090>", extra=extra),
             TARGET, body=TARGET_SDP if status == 200 else "")


def names(w: Wire) -> list[str]:
    keep = ("originate_started", "party_ringing", "party_answered", "call_answered", "originate_failed",
            "call_ended")
    return [e for e, _ in w.log.events if e in keep]


def test_click_to_dial_calls_a_without_sdp_then_b_with_a_offer_and_answers_a_in_the_ack():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            status, body, headers = await originate(api, a="alice", b="sip:carol@example.com")
            assert status == 201, body
            assert headers["Location"] == f"/v1/calls/{body['id']}"
            assert body["state"] == "calling" and body["originated"] is True
            assert body["caller"]["uri"] == "sip:alice@127.0.0.1" and body["callee"]["uri"] == "sip:carol@example.com"
            [x_inv] = w.requests(CALLER, "INVITE")
            assert not x_inv.body and x_inv.uri.user == "alice"  # a delayed offer
            assert "carol@example.com" in x_inv.headers.get("From")  # a sees whom it will talk to
            assert not w.requests(TARGET, "INVITE")  # b waits for a
            a_answers(w, x_inv)
            [y_inv] = w.requests(TARGET, "INVITE")
            assert "alice" in y_inv.headers.get("From")  # b sees a calling
            assert media_port(y_inv.body)[1] in relay_ports(w)  # a's offer, anchored on the relay
            assert not w.requests(CALLER, "ACK")  # a's 200 waits for b's answer
            b_answers(w, y_inv)
            [y_ack] = w.requests(TARGET, "ACK")
            assert not y_ack.body
            [x_ack] = w.requests(CALLER, "ACK")
            assert x_ack.headers.get("Content-Type") == "application/sdp"
            assert media_port(x_ack.body)[1] in relay_ports(w) and media_port(x_ack.body)[1] != 4000
            assert names(w) == ["originate_started", "party_ringing", "party_answered", "party_ringing",
                                "party_answered", "call_answered"]
            status, view, _ = await api.request("GET", f"/v1/calls/{body['id']}")
            assert view["state"] == "confirmed" and view["answered"]
            assert [leg["dialog"] for leg in view["legs"]] == ["confirmed", "confirmed"]
            # An ordinary call from now on: a's BYE reaches b.
            w.inject(in_dialog("BYE", _as_response(x_inv, "xtag"), cseq=1, branch="z9hG4bKxbye",
                               from_side_is_to=True), CALLER)
            [y_bye] = w.requests(TARGET, "BYE")
            answer(w, y_bye, TARGET)
            assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs
            assert w.core.stats.calls["answered"] == 1
    run(scenario)


def _as_response(inv: Request, tag: str) -> Any:
    """The dialog of `inv` as its 200 (with To tag `tag`) had it, for `in_dialog`."""
    from b2bua.sip.parser import parse_message
    text = response_to(inv, 200, "OK", to_tag=tag).replace("\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n"
    return parse_message(text.encode())


def test_b_busy_ends_a_with_an_answer_that_refuses_its_offer_and_a_bye():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            status, body, _ = await originate(api, a="alice", b="carol")
            [x_inv] = w.requests(CALLER, "INVITE")
            a_answers(w, x_inv)
            [y_inv] = w.requests(TARGET, "INVITE")
            b_answers(w, y_inv, 486, "Busy Here")
            [x_ack] = w.requests(CALLER, "ACK")
            assert x_ack.body and "m=audio 0 " in x_ack.body.decode()  # RFC 3264 §6: refused
            [x_bye] = w.requests(CALLER, "BYE")
            assert x_bye.headers.get("Reason").startswith("SIP;cause=486;")
            answer(w, x_bye, CALLER)
            assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs
            [(_, failed)] = events(w, "originate_failed")
            assert (failed["side"], failed["status"]) == ("b", 486)
            assert w.core.stats.calls["rejected"] == 1
            assert api.ctx.registry.find(body["id"]) is None
    run(scenario)


def test_a_refusing_ends_the_call_and_b_is_never_called():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            await originate(api, a="alice", b="carol")
            [x_inv] = w.requests(CALLER, "INVITE")
            w.inject(response_to(x_inv, 603, "Decline", to_tag="xtag"), CALLER)
            assert not w.core.calls and not w.requests(TARGET, "INVITE")
            assert names(w) == ["originate_started", "originate_failed", "call_ended"]
            assert events(w, "call_ended")[0][1]["result"] == "rejected"
    run(scenario)


def test_b_ringing_too_long_is_cancelled_within_a_s_retransmission_window():
    async def scenario() -> None:
        w = wire()  # T1 500 ms: a retransmits its 200 for 32 s, so b may ring 30 s
        async with served(w) as api:
            await originate(api, a="alice", b="carol")
            [x_inv] = w.requests(CALLER, "INVITE")
            a_answers(w, x_inv)
            [y_inv] = w.requests(TARGET, "INVITE")
            w.inject(response_to(y_inv, 180, "Ringing", to_tag="ytag"), TARGET)
            w.advance(29)
            assert not w.requests(TARGET, "CANCEL")
            w.advance(1.5)
            cancel = w.requests(TARGET, "CANCEL")[0]
            answer(w, cancel, TARGET)
            w.inject(response_to(y_inv, 487, "Request Terminated", to_tag="ytag"), TARGET)
            assert w.requests(CALLER, "ACK") and w.requests(CALLER, "BYE")
            assert events(w, "originate_failed")[0][1]["status"] == 408
    run(scenario)


def test_hanging_up_while_a_rings_cancels_it():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            status, body, _ = await originate(api, a="alice", b="carol", ring_timeout_s=10)
            [x_inv] = w.requests(CALLER, "INVITE")
            w.inject(response_to(x_inv, 180, "Ringing", to_tag="xtag"), CALLER)
            status, view, _ = await api.request("DELETE", f"/v1/calls/{body['id']}")
            assert status == 202 and view["state"] == "cancelling"
            cancel = w.requests(CALLER, "CANCEL")[0]
            answer(w, cancel, CALLER)
            assert w.core.calls  # until a's INVITE is over
            w.inject(response_to(x_inv, 487, "Request Terminated", to_tag="xtag"), CALLER)
            assert not w.core.calls and w.core.stats.calls["cancelled"] == 1
    run(scenario)


def test_a_answering_across_the_cancel_of_a_hang_up_is_acked_and_hung_up():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            _, body, _ = await originate(api, a="alice", b="carol")
            [x_inv] = w.requests(CALLER, "INVITE")
            w.inject(response_to(x_inv, 180, "Ringing", to_tag="xtag"), CALLER)
            assert (await api.request("DELETE", f"/v1/calls/{body['id']}"))[0] == 202
            assert w.requests(CALLER, "CANCEL")
            a_answers(w, x_inv)  # its 200 crossed the CANCEL
            assert w.requests(CALLER, "ACK") and w.requests(CALLER, "BYE")
            assert not w.requests(TARGET, "INVITE")
            answer(w, w.requests(CALLER, "BYE")[0], CALLER)
            assert not w.core.calls and w.core.stats.calls["cancelled"] == 1
    run(scenario)


def test_originate_refusals():
    async def scenario() -> None:
        rules = ROUTES["routing"]["rules"]
        w = wire(transfers={"deny": [{"user": "900*"}]}, routing={"next_hop": None, "rules": rules})
        async with served(w) as api:
            status, body, _ = await originate(api, a="alice")
            assert status == 422 and body["problems"][0]["field"] == "b"
            status, body, _ = await originate(api, a="alice", b="nobody")
            assert status == 422 and body["problems"] == [{"field": "b", "message": "no route to this target"}]
            status, body, _ = await originate(api, a="alice", b="carol with spaces")
            assert status == 422 and body["problems"][0]["field"] == "b"
            status, body, _ = await originate(api, a="alice", b="carol", ring_timeout_s=0)
            assert status == 422 and body["problems"][0]["field"] == "ring_timeout_s"
            status, body, _ = await originate(api, a="9001", b="carol")
            assert status == 403
            w.core.stop_accepting()
            status, body, _ = await originate(api, a="alice", b="carol")
            assert status == 503
            assert not w.sent
    run(scenario)
