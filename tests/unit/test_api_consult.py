"""`POST /v1/calls/{id}/consult` (the supervised transfer inside the B2BUA) over HTTP, in virtual time.

alice (CALLER, party a) calls bob (PBX, party b, the agent); bob consults carol (TARGET) while alice
waits on hold, parked on the B2BUA. The relay is the real in-process rtp_relay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from b2bua.sip.address import Address
from b2bua.sip.message import Request

from .test_api import Api, eventually, run, served
from .test_api_originate import _as_response
from .test_api_transfers import target_answers
from .test_attended_transfer import BOB_SDP, CAROL_SDP2, answer, ok_all
from .test_call_media import CALLER_SDP, establish, media_port, relay_ports
from .test_transfer import TARGET, wire
from .wire import CALLER, PBX, Wire, in_dialog

HELD_ANSWER = CALLER_SDP + "a=recvonly\r\n"


def act(api: Api, call_id: str, **body: Any) -> asyncio.Task[tuple[int, Any, Any]]:
    return asyncio.ensure_future(api.request("POST", f"/v1/calls/{call_id}/consult", json=body))


def invites(w: Wire, dest: Address) -> list[Request]:
    """INVITEs sent to `dest`, without retransmissions."""
    seen, out = set(), []
    for r in w.requests(dest, "INVITE"):
        if (r.call_id, r.cseq.seq) not in seen:
            seen.add((r.call_id, r.cseq.seq))
            out.append(r)
    return out


async def nth_invite(w: Wire, dest: Address, n: int) -> Request:
    await eventually(lambda: len(invites(w, dest)) >= n)
    return invites(w, dest)[n - 1]


def direction(req: Request) -> str:
    for d in ("sendonly", "recvonly", "inactive"):
        if f"a={d}" in req.body.decode():
            return d
    return "sendrecv"


async def started(api: Api, w: Wire) -> tuple[str, Request, Any]:
    """alice held, carol called and answered, bob moved onto carol: (call id, carol's INVITE, a200)."""
    a200, _, _ = establish(w)
    cid = api.call_id()
    task = act(api, cid, action="start", target="carol")
    hold = await nth_invite(w, CALLER, 1)
    assert direction(hold) == "sendonly"
    answer(w, hold, CALLER, HELD_ANSWER)
    t_inv = await nth_invite(w, TARGET, 1)
    assert "bob" in t_inv.headers.get("From")  # carol sees the agent calling
    assert media_port(t_inv.body)[1] in relay_ports(w)
    target_answers(w, t_inv)
    b_reinv = await nth_invite(w, PBX, 2)  # the first is the call's own INVITE
    answer(w, b_reinv, PBX, BOB_SDP)
    status, body, _ = await task
    assert status == 200 and body["consult"] == "talking_to_target", body
    assert body["call"]["transfer_in_progress"] is True
    return cid, t_inv, a200


def test_start_then_complete_joins_the_held_caller_to_the_target_and_releases_the_agent():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            cid, t_inv, a200 = await started(api, w)
            assert not w.requests(PBX, "BYE") and not w.requests(CALLER, "BYE")
            assert w.rtp is not None and len(w.rtp.calls) == 2  # alice's parked session, bob-carol's
            # A second start, a transfer, a hold: all refused while the consultation runs.
            status, body, _ = await act(api, cid, action="start", target="carol")
            assert (status, body) == (409, {"error": "a consultation is already under way on this call"})
            status, body, _ = await api.request("POST", f"/v1/calls/{cid}/hold", json={"party": "a"})
            assert status == 409
            task = act(api, cid, action="complete")
            t_re = await nth_invite(w, TARGET, 2)  # carol gets alice's media
            assert direction(t_re) == "sendrecv"
            answer(w, t_re, TARGET, CAROL_SDP2)
            a_re = await nth_invite(w, CALLER, 2)  # alice, off hold, onto carol's
            assert direction(a_re) == "sendrecv"
            answer(w, a_re, CALLER, CALLER_SDP)
            status, body, _ = await task
            assert status == 200 and body["consult"] == "ended", body
            [b_bye] = w.requests(PBX, "BYE")
            assert "transferred" in b_bye.headers.get("Reason")
            ok_all(w, PBX, "BYE")
            assert w.core.stats.transfers[("attended", "completed")] == 1
            assert w.rtp is not None and len(w.rtp.calls) == 1
            names = [e for e, _ in w.log.events if e.startswith("consult_")]
            assert names == ["consult_started", "consult_connected", "consult_completed"]
            status, body, _ = await api.request("GET", f"/v1/calls/{cid}")
            assert body["transfer_in_progress"] is False
            assert {leg["sip_call_id"] for leg in body["legs"]} == {a200.call_id, t_inv.call_id}
            w.inject(in_dialog("BYE", a200, cseq=9, branch="z9hG4bKbyeA", from_side_is_to=False))
            answer(w, w.requests(TARGET, "BYE")[0], TARGET)
            assert not w.core.calls and not w.rtp.calls and not w.core._legs
    run(scenario)


def test_cancel_hangs_up_the_target_and_gives_the_agent_the_caller_back():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            cid, t_inv, a200 = await started(api, w)
            task = act(api, cid, action="cancel")
            b_re = await nth_invite(w, PBX, 3)  # bob gets alice's media again
            answer(w, b_re, PBX, BOB_SDP)
            a_re = await nth_invite(w, CALLER, 2)
            assert direction(a_re) == "sendrecv"
            answer(w, a_re, CALLER, CALLER_SDP)
            status, body, _ = await task
            assert status == 200 and body["consult"] == "ended"
            assert w.requests(TARGET, "BYE") and not w.requests(PBX, "BYE")
            ok_all(w, TARGET, "BYE")
            assert w.rtp is not None and len(w.rtp.calls) == 1 and len(w.core.calls) == 1
            assert ("attended", "completed") not in w.core.stats.transfers
            # The API is free again.
            task = act(api, cid, action="complete")
            assert (await task)[1] == {"error": "no consultation is under way on this call"}
    run(scenario)


def test_swap_then_complete():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            cid, t_inv, _ = await started(api, w)
            task = act(api, cid, action="swap")
            t_hold = await nth_invite(w, TARGET, 2)
            assert direction(t_hold) == "sendonly"
            answer(w, t_hold, TARGET, CAROL_SDP2 + "a=recvonly\r\n")
            b_re = await nth_invite(w, PBX, 3)
            answer(w, b_re, PBX, BOB_SDP)
            a_re = await nth_invite(w, CALLER, 2)
            answer(w, a_re, CALLER, CALLER_SDP)
            status, body, _ = await task
            assert status == 200 and body["consult"] == "talking_to_held", body
            task = act(api, cid, action="complete")
            a_re2 = await nth_invite(w, CALLER, 3)  # the one talking (alice) gets carol's media
            answer(w, a_re2, CALLER, CALLER_SDP)
            t_re = await nth_invite(w, TARGET, 3)  # carol, off hold, onto alice's
            assert direction(t_re) == "sendrecv"
            answer(w, t_re, TARGET, CAROL_SDP2)
            assert (await task)[0] == 200
            assert w.requests(PBX, "BYE") and not w.requests(TARGET, "BYE") and not w.requests(CALLER, "BYE")
            assert w.core.stats.transfers[("attended", "completed")] == 1
    run(scenario)


def test_a_busy_target_takes_the_caller_off_hold_and_answers_502():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            establish(w)
            cid = api.call_id()
            task = act(api, cid, action="start", target="carol")
            answer(w, await nth_invite(w, CALLER, 1), CALLER, HELD_ANSWER)
            target_answers(w, await nth_invite(w, TARGET, 1), 486, "Busy Here")
            resume = await nth_invite(w, CALLER, 2)
            assert direction(resume) == "sendrecv"
            answer(w, resume, CALLER, CALLER_SDP)
            status, body, _ = await task
            assert status == 502 and body == {"error": "the target answered 486 Busy Here", "sip_status": 486}
            assert ("blind", "failed") not in w.core.stats.transfers  # a consultation is not a transfer
            assert (await act(api, cid, action="cancel"))[0] == 409
    run(scenario)


def test_the_target_hanging_up_gives_the_agent_the_caller_back_and_a_hang_up_releases_the_parked():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            cid, t_inv, a200 = await started(api, w)
            w.inject(in_dialog("BYE", _as_response(t_inv, "ctag"), cseq=5, branch="z9hG4bKcbye",
                               from_side_is_to=True, via="127.0.0.1:5090"), TARGET)
            b_re = await nth_invite(w, PBX, 3)
            answer(w, b_re, PBX, BOB_SDP)
            answer(w, await nth_invite(w, CALLER, 2), CALLER, CALLER_SDP)
            await eventually(lambda: any(e == "consult_cancelled" for e, _ in w.log.events))
            assert len(w.core.calls) == 1
            # A new consultation, then the call is hung up: the parked caller gets its BYE too.
            task = act(api, cid, action="start", target="carol")
            answer(w, await nth_invite(w, CALLER, 3), CALLER, HELD_ANSWER)
            t2 = await nth_invite(w, TARGET, 2)
            target_answers(w, t2)
            answer(w, await nth_invite(w, PBX, 4), PBX, BOB_SDP)
            assert (await task)[0] == 200
            status, _, _ = await api.request("DELETE", f"/v1/calls/{cid}")
            assert status == 202
            ok_all(w, PBX, "BYE")
            ok_all(w, TARGET, "BYE")
            [a_bye] = w.requests(CALLER, "BYE")
            answer(w, a_bye, CALLER)
            assert not w.core.calls and w.rtp is not None and not w.rtp.calls and not w.core._legs
    run(scenario)
