"""`POST /v1/calls/{id}/hold` and `/resume` through the real HTTP server, the party answered on the fake wire."""

from __future__ import annotations

import asyncio
from typing import Any

from .test_api import Api, eventually, run, served
from .test_call_flows import establish, ringing
from .test_hold import HELD_ANSWER, _directions, reply
from .wire import CALLER, PBX, SDP, Wire, in_dialog


def _post(api: Api, action: str, party: str | None = "a") -> asyncio.Task[tuple[int, Any, Any]]:
    body = {"party": party} if party is not None else None
    return asyncio.ensure_future(api.request("POST", f"/v1/calls/{api.call_id()}/{action}", json=body))


async def _reinvite(w: Wire, dest: Any, n: int = 1) -> Any:
    """The n-th re-INVITE the B2BUA sent to `dest` (the callee's first INVITE is the call's own)."""
    skip = 1 if dest == PBX else 0
    await eventually(lambda: len(w.requests(dest, "INVITE")) >= n + skip)
    return w.requests(dest, "INVITE")[n - 1 + skip]


def test_hold_and_resume_over_http():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            task = _post(api, "hold", party=None)  # no body: party a, the caller
            reinv = await _reinvite(w, CALLER)
            assert _directions(reinv.body) == ["sendonly"]
            assert not task.done()  # the API answers once the party has
            reply(w, reinv, 200, body=HELD_ANSWER)
            status, body, _ = await task
            assert status == 200 and body["legs"][0]["held"] is True and body["legs"][1]["held"] is False
            status, body, _ = await _post(api, "hold")
            assert (status, body) == (409, {"error": "party a is already on hold"})
            task = _post(api, "resume")
            resume = await _reinvite(w, CALLER, 2)
            assert _directions(resume.body) == ["sendrecv"]
            reply(w, resume, 200, body=SDP)
            status, body, _ = await task
            assert status == 200 and body["legs"][0]["held"] is False
            status, body, _ = await _post(api, "resume")
            assert (status, body) == (409, {"error": "party a is not on hold"})
            # The callee, by name.
            task = _post(api, "hold", party="b")
            b_reinv = await _reinvite(w, PBX)
            reply(w, b_reinv, 200, body=HELD_ANSWER)
            status, body, _ = await task
            assert status == 200 and body["legs"][1]["held"] is True
    run(scenario)


def test_wrong_state_is_409_with_the_reason():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            ringing(w)
            status, body, _ = await _post(api, "hold")
            assert (status, body) == (409, {"error": "the call is early, not answered and up"})
        w = Wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            [call] = w.core.calls
            call.transfer = object()  # type: ignore[assignment]
            status, body, _ = await _post(api, "hold")
            assert (status, body) == (409, {"error": "a transfer is in progress"})
            call.transfer = None
            w.inject(in_dialog("INVITE", a200, cseq=2, branch="z9hG4bKre", from_side_is_to=False,
                               extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"), body=SDP)
            status, body, _ = await _post(api, "hold", party="b")
            assert (status, body) == (409, {"error": "a re-INVITE is pending on this call"})
    run(scenario)


def test_a_second_operation_during_the_glare_pause_is_409():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            task = _post(api, "hold")
            first = await _reinvite(w, CALLER)
            reply(w, first, 491, "Request Pending")
            status, body, _ = await _post(api, "hold", party="b")  # the 2.1 s pause: no re-INVITE pending
            assert (status, body) == (409, {"error": "the API is busy with a hold of party a on this call"})
            w.advance(2.2)
            second = await _reinvite(w, CALLER, 2)
            reply(w, second, 491, "Request Pending")
            status, body, _ = await task
            assert status == 409 and body["sip_status"] == 491 and "491" in body["error"]
            task = _post(api, "hold", party="b")  # no longer busy
            b_reinv = await _reinvite(w, PBX)
            reply(w, b_reinv, 200, body=HELD_ANSWER)
            assert (await task)[0] == 200
    run(scenario)


def test_a_refusal_is_502_with_the_sip_status_and_no_answer_is_504():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            task = _post(api, "hold")
            reply(w, await _reinvite(w, CALLER), 488, "Not Acceptable Here")
            status, body, _ = await task
            assert status == 502 and body == {"error": "party a answered the re-INVITE 488 Not Acceptable Here",
                                              "sip_status": 488}
            task = _post(api, "hold")
            await _reinvite(w, CALLER, 2)
            w.advance(33)  # Timer B: nobody answers
            status, body, _ = await task
            assert status == 504 and body["error"] == "party a did not answer the re-INVITE"
            assert w.requests(PBX, "BYE"), "the dialog is gone: the call is hung up"
    run(scenario)


def test_the_call_ending_meanwhile_is_409():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            _, _, b200 = establish(w)
            task = _post(api, "hold")
            await _reinvite(w, CALLER)
            # The callee hangs up while the caller has not answered our re-INVITE.
            w.inject(in_dialog("BYE", b200, cseq=1, branch="z9hG4bKbbye", from_side_is_to=True,
                               via="127.0.0.1:5080"), PBX)
            [a_bye] = w.requests(CALLER, "BYE")
            reply(w, a_bye, 200)
            assert not w.core.calls
            status, body, _ = await task
            assert (status, body) == (409, {"error": "the call ended"})
    run(scenario)


def test_an_outcome_that_takes_too_long_is_504():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            api.ctx.operation_timeout = 0.2
            status, body, _ = await _post(api, "hold")
            assert status == 504 and body["error"].startswith("no outcome of the hold of party a within")
            # The re-INVITE goes on in the core; its answer still lands.
            reply(w, await _reinvite(w, CALLER), 200, body=HELD_ANSWER)
            [call] = w.core.calls
            assert call.a.sdp.local_held
    run(scenario)
