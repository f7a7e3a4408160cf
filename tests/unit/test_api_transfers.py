"""`POST /v1/calls/{id}/transfer` over real HTTP, the parties answered on the fake wire in virtual time.

The media relay is the real in-process rtp_relay (wire.py), so every re-anchoring really allocated
ports. Call 1 is alice (CALLER, party a) -> bob (behind the PBX, party b); "carol" routes to TARGET.
By default the API transfers party a (alice) away from bob.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from b2bua.sip.message import Request

from .test_api import Api, eventually, run, served
from .test_attended_transfer import CAROL_SDP2, answer, consult, ok_all, reinvites
from .test_call_media import CALLER_SDP, establish, media_port, relay_ports
from .test_transfer import TARGET, TARGET_SDP, refer_from_callee, wire
from .wire import CALLER, PBX, Wire, in_dialog, response_to


def post(api: Api, path: str, body: dict[str, Any]) -> asyncio.Task[tuple[int, Any, Any]]:
    return asyncio.ensure_future(api.request("POST", path, json=body))


def transfer(api: Api, call_id: str, **body: Any) -> asyncio.Task[tuple[int, Any, Any]]:
    return post(api, f"/v1/calls/{call_id}/transfer", body)


def events(w: Wire, name: str | None = None) -> list[tuple[str, dict]]:
    return [(e, f) for e, f in w.log.events if name is None or e == name]


def progress(w: Wire) -> list[Any]:
    return [f.get("stage", f.get("status")) for e, f in w.log.events if e == "transfer_progress"]


async def request_to(w: Wire, dest: Any, method: str, n: int = 1, call_id: str | None = None) -> Request:
    def found() -> list[Request]:
        return [r for r in w.requests(dest, method) if call_id is None or r.call_id == call_id]
    await eventually(lambda: len(found()) >= n)
    return found()[n - 1]


def target_answers(w: Wire, t_inv: Request, status: int = 200, reason: str = "OK") -> None:
    w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>"), TARGET)
    extra = "Content-Type: application/sdp" if status == 200 else ""
    w.inject(response_to(t_inv, status, reason, to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>", extra=extra),
             TARGET, body=TARGET_SDP if status == 200 else "")


def call1_id(api: Api, w: Wire, a200: Any) -> str:
    [call] = [c for c in w.core.calls if c.call_id == a200.call_id]
    return api.ctx.registry.id_of(call)


# -- blind, rebridge ----------------------------------------------------------------------------------


def test_blind_rebridge_moves_the_caller_to_the_target_and_releases_the_callee():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, b_inv, _ = establish(w)
            cid = api.call_id()
            status, body, _ = await transfer(api, cid, type="blind", target="carol")
            assert status == 202, body
            assert (body["method"], body["party"], body["type"], body["fallback"]) == ("rebridge", "a", "blind", None)
            assert body["target"] == "sip:carol@127.0.0.1" and body["call"]["transfer_in_progress"] is True
            [t_inv] = w.requests(TARGET, "INVITE")
            assert "alice" in t_inv.headers.get("From") and media_port(t_inv.body)[1] in relay_ports(w)
            # A second transfer, or a hold, while this one runs: 409.
            status, body, _ = await transfer(api, cid, type="blind", target="carol")
            assert (status, body) == (409, {"error": "a transfer is in progress"})
            target_answers(w, t_inv)
            [b_bye] = w.requests(PBX, "BYE")
            assert "transferred" in b_bye.headers.get("Reason")
            [a_reinv] = w.requests(CALLER, "INVITE")
            answer(w, a_reinv, CALLER, CALLER_SDP)
            ok_all(w, PBX, "BYE")
            assert progress(w) == [100, 180, 200]
            [(_, done)] = events(w, "transfer_completed")
            assert done["source"] == "api" and done["method"] == "rebridge" and done["kind"] == "blind"
            frags = [f["sipfrag"] for e, f in w.log.events if e == "transfer_progress"]
            assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
            assert w.core.stats.transfers[("blind", "completed")] == 1
            status, body, _ = await api.request("GET", f"/v1/calls/{cid}")
            assert status == 200 and body["transfer_in_progress"] is False
            assert body["legs"][1]["sip_call_id"] == t_inv.call_id  # carol is party b now
            # The API is free again: the caller can be held.
            task = post(api, f"/v1/calls/{cid}/hold", {"party": "a"})
            hold = await request_to(w, CALLER, "INVITE", 2)
            answer(w, hold, CALLER, CALLER_SDP.replace("a=", "a=") + "a=recvonly\r\n")
            assert (await task)[0] == 200
            w.inject(in_dialog("BYE", a200, cseq=9, branch="z9hG4bKbyeA", from_side_is_to=False))
            [t_bye] = w.requests(TARGET, "BYE")
            answer(w, t_bye, TARGET)
            assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs
    run(scenario)


def test_blind_rebridge_to_a_busy_target_leaves_the_call_as_it_was():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            establish(w)
            cid = api.call_id()
            status, _, _ = await transfer(api, cid, type="blind", target="sip:carol@example.com", party="b")
            assert status == 202
            [t_inv] = w.requests(TARGET, "INVITE")
            assert "bob" in t_inv.headers.get("To") or "bob" in t_inv.headers.get("From")  # party b, bob, calls
            target_answers(w, t_inv, 486, "Busy Here")
            assert not w.requests(PBX, "BYE") and not w.requests(CALLER, "BYE")
            [(_, failed)] = events(w, "transfer_failed")
            assert failed["status"] == 486 and failed["source"] == "api"
            assert progress(w)[-1] == 486
            assert w.core.stats.transfers[("blind", "failed")] == 1
            assert w.rtp is not None and len(w.rtp.calls) == 1
            status, body, _ = await api.request("GET", f"/v1/calls/{cid}")
            assert body["transfer_in_progress"] is False and body["state"] == "confirmed"
    run(scenario)


def test_a_target_that_rings_out_is_reported_408_and_the_call_stays():
    async def scenario() -> None:
        w = wire(calls={"no_answer_timeout_s": 20})
        async with served(w) as api:
            establish(w)
            assert (await transfer(api, api.call_id(), type="blind", target="carol"))[0] == 202
            [t_inv] = w.requests(TARGET, "INVITE")
            w.inject(response_to(t_inv, 180, "Ringing", to_tag="ctag"), TARGET)
            w.advance(21)
            cancel = w.requests(TARGET, "CANCEL")[0]
            answer(w, cancel, TARGET)
            w.inject(response_to(t_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
            assert progress(w) == [100, 180, 408]
            assert w.core.stats.transfers[("blind", "failed")] == 1 and len(w.core.calls) == 1
    run(scenario)


# -- refusals -----------------------------------------------------------------------------------------


def test_bad_requests_are_answered_with_what_is_wrong():
    async def scenario() -> None:
        w = wire(transfers={"deny": [{"user": "900*"}]})
        async with served(w) as api:
            status, body, _ = await transfer(api, "nosuchid", type="blind", target="carol")
            assert (status, body) == (404, {"error": "no call with id 'nosuchid'"})
            establish(w)
            cid = api.call_id()
            status, body, _ = await transfer(api, cid, type="blind")
            assert status == 422 and body["problems"] == [{"field": "target",
                                                           "message": "required for a blind transfer"}]
            status, body, _ = await transfer(api, cid, type="sideways", target="carol")
            assert status == 422 and body["problems"][0]["field"] == "type"
            status, body, _ = await transfer(api, cid, type="blind", target="carol", party="c")
            assert status == 422 and body["problems"][0]["field"] == "party"
            status, body, _ = await transfer(api, cid, type="blind", target="sips:carol@example.com")
            assert status == 422 and body["problems"][0] == {"field": "target",
                                                             "message": "sips: is not supported (no TLS here)"}
            status, body, _ = await transfer(api, cid, type="blind", target="http://example.com/")
            assert status == 422 and "only sip: and tel:" in body["problems"][0]["message"]
            status, body, _ = await transfer(api, cid, type="blind", target="sip:carol@x?Subject=hi")
            assert status == 422
            status, body, _ = await transfer(api, cid, type="blind", target="9001234")
            assert (status, body) == (403, {"error": "target: target denied by transfers.deny[0]"})
            status, body, _ = await transfer(api, cid, type="attended")
            assert status == 422 and body["problems"][0]["field"] == "consult_call_id"
            status, body, _ = await transfer(api, cid, type="attended", consult_call_id="gone0000")
            assert (status, body) == (404, {"error": "no call with id 'gone0000' (consult_call_id)"})
            status, body, _ = await transfer(api, cid, type="attended", consult_call_id=cid)
            assert (status, body) == (409, {"error": "the consultation call is the call being transferred"})
            status, body, _ = await transfer(api, cid, type="early", consult_call_id=cid)
            assert status == 409
            assert not w.requests(TARGET, "INVITE")  # nothing reached anybody
            assert w.core.stats.escaped_exceptions == 0
    run(scenario)


def test_a_call_not_yet_answered_cannot_be_transferred():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            from .wire import invite
            text, _ = invite()
            w.inject(text, CALLER, body=CALLER_SDP)
            status, body, _ = await transfer(api, api.call_id(), type="blind", target="carol")
            assert (status, body) == (409, {"error": "the call is calling, not answered and up"})
    run(scenario)


# -- blind, REFER -------------------------------------------------------------------------------------


async def _refer_sent(api: Api, w: Wire, n: int = 1, **body: Any) -> tuple[asyncio.Task[Any], Request]:
    task = transfer(api, api.call_id(), type="blind", target="carol", method="refer", **body)
    refer = await request_to(w, CALLER, "REFER", n)
    return task, refer


def notify(w: Wire, a200: Any, refer: Request, cseq: int, frag: str, state: str = "active;expires=60",
           event_id: str | None = None) -> None:
    w.inject(in_dialog("NOTIFY", a200, cseq=cseq, branch=f"z9hG4bKnot{cseq}", from_side_is_to=False,
                       extra=f"Event: refer;id={event_id or refer.cseq.seq}\nSubscription-State: {state}\n"
                             "Content-Type: message/sipfrag;version=2.0"), CALLER, body=f"{frag}\r\n")


def test_blind_by_refer_follows_the_notifies_and_releases_the_call_on_200():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            task, refer = await _refer_sent(api, w)
            assert refer.headers.get("Refer-To") == "<sip:carol@127.0.0.1:5060>"  # back through us
            assert refer.headers.get("Referred-By") and refer.headers.get("Contact")
            assert not task.done()  # waits for the REFER's answer
            answer(w, refer, CALLER, status=202, reason="Accepted")
            status, body, _ = await task
            assert status == 202 and body["method"] == "refer" and body["fallback"] is None
            notify(w, a200, refer, 2, "SIP/2.0 100 Trying")
            notify(w, a200, refer, 3, "SIP/2.0 180 Ringing")
            # NOTIFYs of the refer event are ours: answered 200, never relayed to bob.
            assert len(w.responses(CALLER, 200)) == 3 and not w.requests(PBX, "NOTIFY")
            assert not w.requests(PBX, "BYE")
            notify(w, a200, refer, 4, "SIP/2.0 200 OK", "terminated;reason=noresource")
            assert progress(w) == ["accepted", 100, 180, 200]
            [a_bye], [b_bye] = w.requests(CALLER, "BYE"), w.requests(PBX, "BYE")
            assert "transferred" in a_bye.headers.get("Reason") and "transferred" in b_bye.headers.get("Reason")
            answer(w, a_bye, CALLER)
            answer(w, b_bye, PBX)
            assert not w.core.calls and w.core.stats.calls["transferred"] == 1
            assert w.core.stats.transfers[("blind", "completed")] == 1
            # A NOTIFY after the end: 481 (no such dialog any more).
            notify(w, a200, refer, 5, "SIP/2.0 200 OK", "terminated;reason=noresource")
            assert w.responses(CALLER, 481)
    run(scenario)


def test_blind_by_refer_failure_leaves_the_call_and_late_notifies_get_481():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            task, refer = await _refer_sent(api, w)
            answer(w, refer, CALLER, status=202, reason="Accepted")
            assert (await task)[0] == 202
            notify(w, a200, refer, 2, "SIP/2.0 486 Busy Here", "terminated;reason=noresource")
            [(_, failed)] = events(w, "transfer_failed")
            assert failed["status"] == 486 and failed["method"] == "refer"
            assert not w.requests(PBX, "BYE") and len(w.core.calls) == 1
            notify(w, a200, refer, 3, "SIP/2.0 486 Busy Here", "terminated;reason=noresource")
            assert [r.reason for r in w.responses(CALLER, 481)] == ["Subscription does not exist"]
            # Other NOTIFYs (another event package) are still relayed to the other party.
            w.inject(in_dialog("NOTIFY", a200, cseq=4, branch="z9hG4bKnotd", from_side_is_to=False,
                               extra="Event: dialog\nSubscription-State: active;expires=60"), CALLER)
            assert w.requests(PBX, "NOTIFY")
            assert w.core.stats.transfers[("blind", "failed")] == 1
            # The call can be transferred again.
            task, refer2 = await _refer_sent(api, w, 2)
            answer(w, refer2, CALLER, status=202, reason="Accepted")
            assert (await task)[0] == 202
    run(scenario)


def test_unattended_refer_is_done_on_the_202():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            establish(w)
            task, refer = await _refer_sent(api, w, refer_wait="unattended")
            answer(w, refer, CALLER, status=202, reason="Accepted")
            assert (await task)[0] == 202
            assert w.requests(CALLER, "BYE") and w.requests(PBX, "BYE")
            assert w.core.stats.transfers[("blind", "completed")] == 1
    run(scenario)


def test_a_refer_refused_405_falls_back_to_rebridge():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            establish(w)
            task, refer = await _refer_sent(api, w)
            answer(w, refer, CALLER, status=405, reason="Method Not Allowed")
            status, body, _ = await task
            assert status == 202 and body["method"] == "rebridge"
            assert body["fallback"] == "the transferee answered the REFER 405 Method Not Allowed"
            [t_inv] = w.requests(TARGET, "INVITE")
            assert "alice" in t_inv.headers.get("From")
            target_answers(w, t_inv)
            assert w.requests(PBX, "BYE")
            [a_reinv] = w.requests(CALLER, "INVITE")
            answer(w, a_reinv, CALLER, CALLER_SDP)
            assert w.core.stats.transfers[("blind", "completed")] == 1
            assert ("blind", "failed") not in w.core.stats.transfers
    run(scenario)


def test_a_refer_refused_otherwise_is_502_and_without_fallback_too():
    async def scenario() -> None:
        w = wire(api={"refer_fallback": False})
        async with served(w) as api:
            establish(w)
            task, refer = await _refer_sent(api, w)
            answer(w, refer, CALLER, status=501, reason="Not Implemented")
            status, body, _ = await task
            assert status == 502 and body == {"error": "the transferee answered the REFER 501 Not Implemented",
                                              "sip_status": 501}
            assert not w.requests(TARGET, "INVITE")
            task, refer = await _refer_sent(api, w, 2)
            answer(w, refer, CALLER, status=488, reason="Not Acceptable Here")
            assert (await task)[0] == 502
            assert w.core.stats.transfers[("blind", "failed")] == 2
    run(scenario)


def test_the_default_method_comes_from_the_configuration():
    async def scenario() -> None:
        w = wire(api={"transfer_method": "refer"})
        async with served(w) as api:
            establish(w)
            task = transfer(api, api.call_id(), type="blind", target="carol")
            refer = await request_to(w, CALLER, "REFER")
            answer(w, refer, CALLER, status=202, reason="Accepted")
            assert (await task)[1]["method"] == "refer"
    run(scenario)


# -- attended and early ------------------------------------------------------------------------------


def _consult_ids(api: Api, w: Wire, a200: Any, c_call_id: str) -> tuple[str, str]:
    [c2] = [c for c in w.core.calls if c.call_id == c_call_id]
    return call1_id(api, w, a200), api.ctx.registry.id_of(c2)


def test_attended_rebridge_joins_the_caller_to_the_consulted_target():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, b_inv, _ = establish(w)
            c200, c_inv = consult(w)
            cid, kid = _consult_ids(api, w, a200, c200.call_id)
            status, body, _ = await transfer(api, cid, type="attended", consult_call_id=kid)
            assert status == 202 and body["target"] == "sip:carol@127.0.0.1:5060", body
            [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
            answer(w, t_reinv, TARGET, CAROL_SDP2)
            [a_reinv] = reinvites(w, CALLER, a200.call_id)
            answer(w, a_reinv, CALLER, CALLER_SDP)
            assert {r.call_id for r in w.requests(PBX, "BYE")} == {b_inv.call_id, c200.call_id}
            ok_all(w, PBX, "BYE")
            assert len(w.core.calls) == 1 and w.core.stats.transfers[("attended", "completed")] == 1
            assert w.rtp is not None and len(w.rtp.calls) == 1
            assert [f["status"] for e, f in w.log.events if e == "transfer_progress"] == [100, 200]
    run(scenario)


def test_attended_by_refer_names_the_consultation_leg_in_an_escaped_replaces():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            c200, _ = consult(w)
            cid, kid = _consult_ids(api, w, a200, c200.call_id)
            task = transfer(api, cid, type="attended", consult_call_id=kid, method="refer")
            refer = await request_to(w, CALLER, "REFER")
            refer_to = refer.headers.get("Refer-To")
            assert refer_to.startswith("<sip:carol@127.0.0.1:5060?Replaces=") and "%3Bto-tag%3D" in refer_to
            replaces = unquote(refer_to[refer_to.index("=") + 1:-1])
            # It names bob's consultation dialog as seen by us: the leg alice may now replace.
            assert replaces == f"{c200.call_id};to-tag={c200.to_tag};from-tag=bobtag2"
            answer(w, refer, CALLER, status=202, reason="Accepted")
            assert (await task)[0] == 202
            # alice's INVITE with Replaces, from her own address, takes bob's place in call 2.
            w.inject(f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKxfer
From: <sip:alice@127.0.0.1:5070>;tag=alice2
To: <sip:carol@127.0.0.1:5060>
Call-ID: alice-2@127.0.0.1
CSeq: 1 INVITE
Max-Forwards: 70
Replaces: {replaces}
Contact: <sip:alice@127.0.0.1:5070>
Content-Type: application/sdp""", CALLER, body=CALLER_SDP)
            assert not w.responses(CALLER, 481) and not w.responses(CALLER, 403)
            notify(w, a200, refer, 2, "SIP/2.0 200 OK", "terminated;reason=noresource")
            assert w.requests(CALLER, "BYE") and w.core.stats.transfers[("attended", "completed")] == 1
    run(scenario)


def test_early_rebridge_and_early_by_refer_which_is_done_by_rebridge():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, b_inv, _ = establish(w)
            ringing, c_inv = consult(w, answer=False)
            cid, kid = _consult_ids(api, w, a200, ringing.call_id)
            status, body, _ = await transfer(api, cid, type="attended", consult_call_id=kid)
            assert (status, body["error"]) == (409, "the consultation call is still ringing (use an early transfer), "
                                                    "not answered and up")
            status, body, _ = await transfer(api, cid, type="early", consult_call_id=kid, method="refer")
            assert status == 202 and body["method"] == "rebridge" and "RFC 3891" in body["fallback"]
            # bob is released at once: 487 on his consultation INVITE, BYE on call 1.
            assert [r for r in w.responses(PBX, 487) if r.call_id == ringing.call_id]
            assert {r.call_id for r in w.requests(PBX, "BYE")} == {b_inv.call_id}
            assert progress(w) == [100, "transferor_released"]
            w.inject(response_to(c_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                                 extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
            [t_reinv] = reinvites(w, TARGET, c_inv.call_id)
            answer(w, t_reinv, TARGET, CAROL_SDP2)
            [a_reinv] = reinvites(w, CALLER, a200.call_id)
            answer(w, a_reinv, CALLER, CALLER_SDP)
            ok_all(w, PBX, "BYE")
            assert w.core.stats.transfers[("early", "completed")] == 1 and len(w.core.calls) == 1
    run(scenario)


def test_a_phone_refer_while_the_api_refers_gets_491():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            a200, _, b200 = establish(w)
            task, refer = await _refer_sent(api, w)
            refer_from_callee(w, b200, cseq=9)  # bob transfers on his own meanwhile
            [refused] = w.responses(PBX, 491)
            assert "operator transfer" in (refused.reason or "")
            assert not w.requests(TARGET, "INVITE")
            answer(w, refer, CALLER, status=202, reason="Accepted")
            status, _, _ = await task
            assert status == 202
    run(scenario)
