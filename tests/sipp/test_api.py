"""The control API end to end: the daemon as a process, SIPp as the phones, HTTP on 127.0.0.1.

Each test starts the SIPp pair in a background thread (the agents wait for what the API makes the
B2BUA send them: a BYE, or re-INVITEs whose SDP direction they check by regexp), drives the API from
the test, and then judges the SIP each agent saw, the daemon's counters, and the event stream read
by a thread of its own. `b2bua-ctl` is run as the operator would, as a separate process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import LOOPBACK, Daemon, PairResult, TracedMessage, run_sipp_pair, traced_messages
from .transfers import sdp_line

pytestmark = pytest.mark.sipp

TOKEN = "sipp-test-token-0123456789abcdef"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy from the environment


def api(daemon: Daemon, method: str, path: str, body: dict | None = None, token: str | None = None,
        timeout: float = 15.0) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://{LOOPBACK}:{daemon.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_call(daemon: Daemon, token: str | None = None, timeout: float = 10.0) -> dict:
    """The one call the daemon has, once it is answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api(daemon, "GET", "/v1/calls", token=token)
        assert status == 200, body
        if body["calls"] and body["calls"][0]["state"] == "confirmed":
            [call] = body["calls"]
            return call
        time.sleep(0.05)
    raise AssertionError(f"no answered call listed within {timeout}s\n{daemon.output_tail(3000)}")


@contextlib.contextmanager
def sipp_in_background(daemon: Daemon, uas: str, uac: str, workdir: Path) -> Iterator[Callable[[], PairResult]]:
    """Run the pair while the test drives the API; the yielded function waits for its verdict."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(run_sipp_pair, daemon, uas, uac, workdir, recv_timeout_ms=20000, timeout_s=30)
    try:
        yield lambda: future.result(timeout=40)
    finally:
        pool.shutdown(wait=True)  # bounded: the agents are killed after timeout_s + 5 s at the latest


class EventReader:
    """Reads /v1/events in a thread until `stop_after` (an event name) or the end of the stream."""

    def __init__(self, daemon: Daemon, stop_after: str = "call_ended", token: str | None = None) -> None:
        self.events: list[dict] = []
        self.finals: list[str] = []  # stream_closed / stream_overflow
        self._stop_after = stop_after
        req = urllib.request.Request(f"http://{LOOPBACK}:{daemon.http_port}/v1/events")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        self._resp = _opener.open(req, timeout=10)
        assert self._resp.headers["Content-Type"] == "text/event-stream"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        event = ""
        with contextlib.suppress(OSError, ValueError):
            for raw in self._resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event.startswith("stream_"):
                        self.finals.append(event)
                        return
                    self.events.append(data)
                    if event == self._stop_after:
                        return

    def wait(self, timeout: float = 10.0) -> list[dict]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the event stream did not end; so far: {self.events}"
        self._resp.close()
        return self.events


def received(result_agent: Any, method: str | None = None, first_line: str | None = None) -> list[TracedMessage]:
    return [t for t in traced_messages(result_agent.message_file) if t.direction == "received"
            and (method is None or t.method == method) and (first_line is None or t.first_line.startswith(first_line))]


# -- tests -----------------------------------------------------------------------------------------


def test_a_call_is_listed_and_delete_ends_it_with_bye_on_both_legs(start_daemon, tmp_path, needs_daemon):
    daemon = start_daemon(env={"B2BUA_API__SSE_KEEPALIVE_S": "1"})
    events = EventReader(daemon)
    daemon.wait_metric("b2bua_api_event_streams", 1)
    with sipp_in_background(daemon, "uas_basic.xml", "api_uac_hung_up.xml", tmp_path / "sipp") as verdict:
        call = wait_for_call(daemon)
        a, b = call["legs"]
        assert call["caller"] == {"uri": f"sip:caller@{LOOPBACK}:{a['peer'].rsplit(':', 1)[1]}", "display": "A party"}
        assert a["dialog"] == b["dialog"] == "confirmed" and a["sip_call_id"] != b["sip_call_id"]
        assert b["peer"] == f"udp:{LOOPBACK}:{daemon.next_hop_port}"
        assert call["media_relay"] and call["transfer_in_progress"] is False and call["answered"]
        status, body = api(daemon, "GET", f"/v1/calls/{call['id']}")
        assert status == 200 and body["id"] == call["id"]
        status, body = api(daemon, "DELETE", f"/v1/calls/{call['id']}", {"reason": "operator hangup"})
        assert status == 202 and body["state"] == "ending", body
        result = verdict()
    for agent in (result.uac, result.uas):
        [bye] = received(agent, "BYE")
        assert bye.header("Reason") == 'SIP;cause=200;text="operator hangup"', bye.text
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.relayed("BYE") == (0, 2), m
    assert api(daemon, "GET", f"/v1/calls/{call['id']}")[0] == 404
    assert api(daemon, "GET", "/v1/calls") == (200, {"calls": []})
    seen = events.wait()
    assert [e["event"] for e in seen] == ["call_started", "call_answered", "hangup_requested", "call_ended"]
    assert {e["call"] for e in seen} == {call["id"]} and {e["sip_call_id"] for e in seen} == {a["sip_call_id"]}
    assert seen[-1]["fields"]["result"] == "answered" and seen[-1]["fields"]["seconds"] > 0


@pytest.mark.parametrize("party", ["a", "b"])
def test_hold_and_resume_reinvite_the_chosen_party(start_daemon, tmp_path, needs_daemon, party):
    daemon = start_daemon()
    uas, uac = ("uas_basic.xml", "api_uac_held.xml") if party == "a" else ("api_uas_held.xml", "api_uac_hung_up.xml")
    index = 0 if party == "a" else 1
    with sipp_in_background(daemon, uas, uac, tmp_path / "sipp") as verdict:
        call = wait_for_call(daemon)
        path = f"/v1/calls/{call['id']}"
        status, body = api(daemon, "POST", f"{path}/hold", {"party": party})
        assert status == 200, body
        assert body["legs"][index]["held"] is True and body["legs"][1 - index]["held"] is False
        again = api(daemon, "POST", f"{path}/hold", {"party": party})
        assert again == (409, {"error": f"party {party} is already on hold"})
        status, body = api(daemon, "POST", f"{path}/resume", {"party": party})
        assert status == 200 and body["legs"][index]["held"] is False, body
        assert api(daemon, "DELETE", path)[0] == 202
        result = verdict()
    held, other = (result.uac, result.uas) if party == "a" else (result.uas, result.uac)
    # What the held party saw: its first SDP from us (the caller's 200, the callee's INVITE), then two offers.
    first = received(held, first_line="SIP/2.0 200")[0] if party == "a" else received(held, "INVITE")[0]
    reinvites = received(held, "INVITE")[1 if party == "b" else 0:]
    assert len(reinvites) == 2, [t.first_line for t in received(held)]
    o0 = sdp_line(first, "o").split()
    for n, (msg, direction) in enumerate(zip(reinvites, ("sendonly", "sendrecv"), strict=True), start=1):
        assert re.search(rf"(?m)^a={direction}\s*$", msg.text), msg.text
        o = sdp_line(msg, "o").split()
        assert o[:2] == o0[:2] and int(o[2]) == int(o0[2]) + n, (o0, o)  # same session, version bumped
        assert sdp_line(msg, "m") == sdp_line(first, "m") and sdp_line(msg, "c") == sdp_line(first, "c")
        assert int(sdp_line(msg, "m").split()[1]) in daemon.relay_ports  # still the relay's port
    assert len(received(other, "INVITE")) == (0 if party == "b" else 1), "the other party is left alone"
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 3, m  # the B leg's + 2


def test_b2bua_ctl_against_the_daemon_with_a_token(start_daemon, tmp_path, needs_daemon):
    daemon = start_daemon(env={"B2BUA_API__TOKEN": TOKEN})
    assert api(daemon, "GET", "/v1/calls")[0] == 401
    script = Path(sys.executable).parent / "b2bua-ctl"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "b2bua.ctl"]
    env = {**os.environ, "B2BUA_API_URL": f"http://{LOOPBACK}:{daemon.http_port}", "B2BUA_API_TOKEN": TOKEN}

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)

    with sipp_in_background(daemon, "uas_basic.xml", "api_uac_held.xml", tmp_path / "sipp") as verdict:
        cid = wait_for_call(daemon, token=TOKEN)["id"]
        listing = ctl("calls")
        assert listing.returncode == 0 and listing.stdout.splitlines()[1].startswith(cid), listing
        follow = subprocess.Popen([*base, "--json", "events", "--call", cid], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            daemon.wait_metric("b2bua_api_event_streams", 1)
            done = ctl("hold", cid)
            assert (done.returncode, done.stdout) == (0, f"{cid}: party a on hold\n"), done
            shown = ctl("show", cid)
            assert shown.returncode == 0 and "held by us" in shown.stdout, shown
            assert ctl("resume", cid).returncode == 0
            done = ctl("hangup", cid, "--reason", "done")
            assert (done.returncode, done.stdout) == (0, f"{cid}: hanging up (ending)\n"), done
            verdict()
            out, err = follow.communicate(timeout=10)
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait(timeout=5)
    assert follow.returncode == 0, err
    names = [json.loads(line)["event"] for line in out.splitlines()]
    assert names == ["party_held", "party_resumed", "hangup_requested", "call_ended"], out
    gone = ctl("show", cid)
    assert gone.returncode == 1 and f"404: no call with id '{cid}'" in gone.stderr
    refused = subprocess.run([*base, "calls"], env={**env, "B2BUA_API_TOKEN": "wrong-token-0123456789"},
                             capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert daemon.settled().get("b2bua_calls_total", result="answered") == 1


def test_shutdown_ends_open_event_streams(start_daemon, needs_daemon):
    daemon = start_daemon()
    events = EventReader(daemon)
    daemon.wait_metric("b2bua_api_event_streams", 1)
    started = time.monotonic()
    daemon.stop(timeout=10)
    assert time.monotonic() - started < 5, "an open stream must not hold the shutdown up"
    events.wait()
    assert events.finals == ["stream_closed"]
