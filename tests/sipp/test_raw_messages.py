"""Hand-made SIP over loopback sockets: OPTIONS, and malformed input between good calls."""

from __future__ import annotations

import uuid

import pytest

from .harness import LOOPBACK, RawSip

pytestmark = [pytest.mark.sipp]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_options_answered_200(daemon, needs_daemon, transport):
    with RawSip(daemon.listen_port, transport) as raw:
        msg, info = raw.request("OPTIONS", headers={"Accept": "application/sdp"})
        raw.send(msg)
        resp = raw.recv_response()
    assert resp is not None, "no answer to OPTIONS"
    assert resp.code == 200, resp.raw.decode(errors="replace")
    assert resp.header("call-id") == info["Call-ID"]
    assert resp.header("cseq") == "1 OPTIONS"
    m = daemon.metrics()
    assert m.get("b2bua_sip_requests_total", method="OPTIONS", direction="in") == 1, m
    assert m.get("b2bua_sip_responses_total", code="200", direction="out") >= 1, m
    # answered locally: nothing went to the next hop
    assert m.get("b2bua_sip_requests_total", method="OPTIONS", direction="out") == 0, m
    assert m.get("b2bua_active_calls") == 0, m


def _final(raw: RawSip, msg: bytes, info, timeout: float = 2.0):
    raw.send(msg)
    resp = raw.recv_response(timeout=timeout)
    if resp is not None and info.get("_method") == "INVITE" and resp.code >= 300:
        raw.ack_for(info, resp)
    return resp


def _describe(resp) -> str:
    return "no response" if resp is None else resp.raw.decode(errors="replace")


@pytest.mark.time_limit(60)
def test_malformed_messages_between_good_calls(daemon, needs_daemon, sipp_pair):
    sipp_pair(daemon, "uas_basic.xml", "uac_basic.xml")
    before = daemon.wait_metric("b2bua_active_calls", 0)
    assert before.get("b2bua_calls_total", result="answered") == 1, before
    malformed_before = before.get("b2bua_sip_malformed_total")

    problems: list[str] = []

    def expect(label: str, resp, code: int, reason_contains: str | None = None) -> None:
        if resp is None or resp.code != code:
            problems.append(f"{label}: expected {code}, got {_describe(resp)}")
        elif reason_contains and reason_contains.lower() not in resp.reason.lower():
            problems.append(f"{label}: reason phrase {resp.reason!r} does not mention {reason_contains!r}")

    with RawSip(daemon.listen_port, "udp") as raw:
        # 1. garbage bytes: dropped (nothing sensible to answer to)
        raw.send(b"\x00\xff\xfe garbage \x01\x02 not SIP at all\r\n\r\n")
        raw.send(b"HELLO\r\n\r\n")
        resp = raw.recv_response(timeout=0.5)
        if resp is not None:
            problems.append(f"garbage: expected no response, got {_describe(resp)}")

        # 2. unsupported SIP version -> 505
        msg, info = raw.request("OPTIONS", version="SIP/3.0")
        expect("bad SIP version", _final(raw, msg, info), 505)

        # 3. missing Call-ID -> 400 naming Call-ID
        msg, info = raw.request("OPTIONS", headers={"Call-ID": None})
        expect("missing Call-ID", _final(raw, msg, info), 400, "Call-ID")

        # 4. broken CSeq -> 400 naming CSeq
        msg, info = raw.request("OPTIONS", cseq="abc OPTIONS")
        expect("broken CSeq", _final(raw, msg, info), 400, "CSeq")

        # 5. unsupported Request-URI scheme -> 416
        msg, info = raw.request("INVITE", uri=f"mailto:bob@{LOOPBACK}")
        expect("unsupported URI scheme", _final(raw, msg, info), 416)

        # 6. Max-Forwards: 0 on an INVITE -> 483
        msg, info = raw.request("INVITE", headers={"Max-Forwards": "0"})
        expect("Max-Forwards 0", _final(raw, msg, info), 483)

        # 7. Require: unknown extension -> 420 with Unsupported: naming it
        msg, info = raw.request("INVITE", headers={"Require": "unknown-ext"})
        resp = _final(raw, msg, info)
        expect("Require unknown-ext", resp, 420)
        if resp is not None and resp.code == 420 and "unknown-ext" not in (resp.header("unsupported") or ""):
            problems.append(f"420 lacks 'Unsupported: unknown-ext': {_describe(resp)}")

        # 8. Content-Length larger than the datagram's body -> 400 or silently dropped
        body = b"v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\n"
        msg, info = raw.request(
            "INVITE",
            headers={"Content-Type": "application/sdp"},
            body=body,
            content_length=len(body) + 500,
        )
        resp = _final(raw, msg, info, timeout=1.0)
        if resp is not None and resp.code != 400:
            problems.append(f"bad Content-Length: expected 400 or nothing, got {_describe(resp)}")

        # 9. truncated message: header section cut off mid-line, no blank line
        msg, info = raw.request("OPTIONS")
        raw.send(msg[: len(msg) // 2])
        resp = raw.recv_response(timeout=0.5)
        if resp is not None and resp.code != 400:
            problems.append(f"truncated message: expected 400 or nothing, got {_describe(resp)}")

        # 10. a response matching no transaction: dropped
        stray = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{daemon.listen_port};branch=z9hG4bK-stray-{uuid.uuid4().hex[:12]}\r\n"
            f"From: <sip:raw@{LOOPBACK}>;tag=stray1\r\n"
            f"To: <sip:service@{LOOPBACK}>;tag=stray2\r\n"
            f"Call-ID: stray-{uuid.uuid4().hex}@{LOOPBACK}\r\n"
            "CSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        raw.send(stray)
        resp = raw.recv_response(timeout=0.5)
        if resp is not None:
            problems.append(f"stray response: expected it dropped, got {_describe(resp)}")

    assert daemon.alive(), daemon.output_tail()
    status, _ = daemon.http_get("/healthz")
    assert status == 200, "daemon unhealthy after malformed input"

    # the daemon still bridges calls normally
    sipp_pair(daemon, "uas_basic.xml", "uac_basic.xml")
    after = daemon.wait_metric("b2bua_active_calls", 0)
    assert after.get("b2bua_calls_total", result="answered") == 2, after
    assert after.get("b2bua_sip_malformed_total") > malformed_before, after
    # none of the rejected INVITEs reached the next hop: only the two good calls did
    assert after.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 2, after
    assert not problems, "\n".join(problems)
