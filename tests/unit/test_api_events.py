"""`GET /v1/events`: server-sent call events, through the real HTTP server, from a Core on the fake wire."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp

from b2bua.api.events import FINAL, EventHub

from .test_api import Api, run, served
from .test_call_flows import establish
from .wire import PBX, Wire, in_dialog, response_to


class Stream:
    """An open event stream: frames parsed as they come (comments kept apart)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> dict[str, str] | None:
        """The next event's fields (`event`, `data`, `id`), or None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not line:
                self.ended = True
                return None
            text = line.decode().rstrip("\n")
            if text.startswith(":"):
                self.comments.append(text)
                continue
            if text:
                name, _, value = text.partition(": ")
                fields[name] = value
            elif "data" in fields:
                return fields

    async def events(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            frame = await self.next()
            assert frame is not None, f"the stream ended after {out}"
            data = json.loads(frame["data"])
            assert data["event"] == frame["event"] and str(data["seq"]) == frame["id"]
            out.append(data)
        return out


async def open_stream(api: Api, query: str = "") -> Stream:
    resp = await api.session.get(api.url("/v1/events" + query), timeout=aiohttp.ClientTimeout(total=None))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    return Stream(resp)


async def connected(api: Api, clients: int = 1) -> None:
    for _ in range(500):
        if len(api.ctx.hub.clients) >= clients:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the stream did not subscribe")


def hang_up_by_caller(w: Wire, a200: Any) -> None:
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbye1", from_side_is_to=False))
    [b_bye] = w.requests(PBX, "BYE")
    w.inject(response_to(b_bye, 200, "OK"), PBX)


def test_the_stream_tells_a_call_from_start_to_end():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            stream = await open_stream(api)
            await connected(api)
            a200, b_inv, _ = establish(w)
            cid = api.call_id()
            hang_up_by_caller(w, a200)
            events = await stream.events(4)
            assert [e["event"] for e in events] == ["call_started", "call_answered", "bye_received", "call_ended"]
            assert {e["call"] for e in events} == {cid}
            assert {e["sip_call_id"] for e in events} == {a200.call_id}
            assert events[0]["fields"] == {"b_call_id": b_inv.call_id, "next_hop": "udp:127.0.0.1:5080"}
            assert events[2]["fields"] == {"side": "a"}
            assert events[3]["fields"] == {"result": "answered", "b_call_id": b_inv.call_id,
                                           "peer": "udp:127.0.0.1:5080", "seconds": 0.0}
            assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
            assert events[0]["time"].endswith("Z")
            assert stream.comments[0] == ": b2bua call events"
            stream.resp.close()
    run(scenario)


def test_idle_streams_get_keepalive_comments():
    async def scenario() -> None:
        w = Wire(overrides={"api": {"sse_keepalive_s": 0.1}})
        async with served(w) as api:
            stream = await open_stream(api)
            await connected(api)
            start = time.monotonic()
            for _ in range(100):
                if stream.comments.count(": keepalive") >= 2:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.next(), 0.05)
            assert stream.comments.count(": keepalive") >= 2 and time.monotonic() - start < 3
            stream.resp.close()
            # The handler notices the vanished client at its next write and unsubscribes it.
            for _ in range(200):
                if not api.ctx.hub.clients:
                    break
                await asyncio.sleep(0.01)
            assert not api.ctx.hub.clients and api.ctx.hub.dropped == 0
    run(scenario)


def test_following_one_call():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            cid = api.call_id()
            status, body, _ = await api.request("GET", "/v1/events?call=nope")
            assert (status, body) == (404, {"error": "no call with id 'nope'"})
            status, body, _ = await api.request("GET", "/v1/events?colour=red")
            assert status == 400 and "colour" in body["error"]
            stream = await open_stream(api, f"?call={cid}")
            await connected(api)
            w.take()
            establish(w)  # another call: not on this stream
            w.take()
            hang_up_by_caller(w, a200)
            events = await stream.events(2)
            assert [(e["event"], e["call"]) for e in events] == [("bye_received", cid), ("call_ended", cid)]
            assert await stream.next() is None  # the stream ends with its call
    run(scenario)


def test_a_client_that_falls_behind_is_dropped_with_a_last_word():
    async def scenario() -> None:
        w = Wire(overrides={"api": {"sse_queue_events": 10}})
        async with served(w) as api:
            stream = await open_stream(api)
            slow = await open_stream(api)
            await connected(api, 2)
            establish(w)
            [call] = w.core.calls
            # 30 events in one turn of the loop: neither handler gets to run, both queues fill up.
            for i in range(30):
                api.ctx.on_core_event(call, "test_event", {"i": i})
            assert not api.ctx.hub.clients and api.ctx.hub.dropped == 2
            for s in (stream, slow):
                frame = await s.next()
                assert frame is not None and frame["event"] == "stream_overflow"
                assert "fell more than 10 events behind" in json.loads(frame["data"])["reason"]
                assert await s.next() is None
            # The core went on regardless.
            assert w.core.stats.escaped_exceptions == 0 and len(w.core.calls) == 1
    run(scenario)


def test_the_number_of_streams_is_bounded():
    async def scenario() -> None:
        w = Wire(overrides={"api": {"sse_max_clients": 1}})
        async with served(w) as api:
            stream = await open_stream(api)
            await connected(api)
            status, body, headers = await api.request("GET", "/v1/events")
            assert status == 503 and "sse_max_clients" in body["error"] and headers["Retry-After"] == "5"
            stream.resp.close()
    run(scenario)


def test_shutdown_closes_the_streams_at_once():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            stream = await open_stream(api)
            await connected(api)
            start = time.monotonic()
            await api.runner.cleanup()
            assert time.monotonic() - start < 1.5
            frame = await stream.next()
            assert frame is not None and frame["event"] == "stream_closed"
            assert await stream.next() is None
            assert api.ctx.on_core_event not in w.core.listeners
    run(scenario)


def test_hub_drops_a_full_client_and_frees_its_queue():
    async def scenario() -> None:
        hub = EventHub(queue_events=10, max_clients=2, wall=lambda: 0.0)
        a, b = hub.subscribe(), hub.subscribe("c2")
        assert a is not None and b is not None and hub.subscribe() is None
        for i in range(10):
            hub.publish("c1", "sip-1", "e", {"i": i})
        assert a.queue.qsize() == 10 and b.queue.qsize() == 0 and a.ending is None
        hub.publish("c1", "sip-1", "e", {"i": 10})
        assert a.ending == "overflow" and a.queue.qsize() == 1 and a.queue.get_nowait() is FINAL
        assert hub.clients == {b} and hub.dropped == 1
        hub.publish("c2", "sip-2", "call_ended", {})
        assert b.ending == "call_ended" and b.queue.qsize() == 2  # the event, then the end
        assert not hub.clients
    run(scenario)



def test_nothing_is_told_of_a_call_after_its_end():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            a200, _, _ = establish(w)
            [call] = w.core.calls
            hang_up_by_caller(w, a200)
            seq = api.ctx.hub.seq
            api.ctx.on_core_event(call, "hold_failed", {"reason": "a late timer"})
            assert api.ctx.hub.seq == seq and len(api.ctx.registry) == 0
    run(scenario)
