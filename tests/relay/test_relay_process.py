"""The relay daemon end to end on loopback: ng over UDP, real RTP through relay ports."""

from __future__ import annotations

import signal
import time

from .harness import (
    HOST,
    RelayProcess,
    media_port,
    nothing_arrives,
    receive_all,
    rtp,
    running_relay,
    sdp,
    udp_socket,
)


def setup_call(relay: RelayProcess, call_id: str):  # type: ignore[no-untyped-def]
    ng = relay.ng
    assert ng is not None
    caller, callee = udp_socket(), udp_socket()
    offer = ng("offer", call_id=call_id, from_tag="caller-tag", sdp=sdp(caller.getsockname()[1]),
               replace=["origin", "session-connection"])
    assert offer["result"] == "ok", offer
    answer = ng("answer", call_id=call_id, from_tag="caller-tag", to_tag="callee-tag",
                sdp=sdp(callee.getsockname()[1]))
    assert answer["result"] == "ok", answer
    to_callee_port = media_port(offer["sdp"])  # where the callee sends
    to_caller_port = media_port(answer["sdp"])  # where the caller sends
    return caller, callee, to_caller_port, to_callee_port


def rtp_stats(query: dict, tag: str) -> dict:
    return query["tags"][tag]["medias"][0]["streams"][0]["stats"]


def test_ping_and_bad_input(relay: RelayProcess) -> None:
    ng = relay.ng
    assert ng is not None
    assert ng("ping") == {"result": "pong"}
    assert ng.raw(b"k1 this is not bencode").startswith(b"k1 d12:error-reason")
    r = ng("offer", call_id="x")
    assert r["result"] == "error" and "from-tag" in r["error-reason"]
    r = ng("bogus")
    assert r["result"] == "error" and "Unrecognized command" in r["error-reason"]
    r = ng("offer", call_id="x", from_tag="y", sdp=b"\x00\xff not sdp")
    assert r["result"] == "error" and "SDP" in r["error-reason"]
    assert ng("ping") == {"result": "pong"}  # still alive


def test_offer_answer_media_both_ways_and_hijack_dropped(relay: RelayProcess) -> None:
    ng = relay.ng
    assert ng is not None
    caller, callee, to_caller_port, to_callee_port = setup_call(relay, "call-media")
    offer_sdp = ng("query", call_id="call-media")  # sanity: the call exists
    assert offer_sdp["result"] == "ok"
    lo, hi = relay.port_range
    assert lo <= to_caller_port <= hi and lo <= to_callee_port <= hi
    for seq in range(100):
        caller.sendto(rtp(seq, 0xCA11), (HOST, to_caller_port))
        callee.sendto(rtp(seq, 0xCA1E), (HOST, to_callee_port))
        if seq % 20 == 19:
            time.sleep(0.01)  # keep loopback socket buffers comfortable
    at_callee = receive_all(callee, 100)
    at_caller = receive_all(caller, 100)
    assert at_callee == [rtp(s, 0xCA11) for s in range(100)]
    assert at_caller == [rtp(s, 0xCA1E) for s in range(100)]
    q = ng("query", call_id="call-media")
    assert rtp_stats(q, "caller-tag")["packets"] == 100 and rtp_stats(q, "callee-tag")["packets"] == 100
    assert rtp_stats(q, "caller-tag")["bytes"] == 100 * 172
    assert rtp_stats(q, "caller-tag")["lost"] == 0
    # symmetric RTP: each party hears the relay from the port it sends to
    # (verified by recvfrom on one more packet)
    caller.sendto(rtp(100, 0xCA11), (HOST, to_caller_port))
    _, source = callee.recvfrom(2048)
    assert source == (HOST, to_callee_port)

    # a third party on 127.0.0.2 injects into both relay ports after latching
    intruder = udp_socket("127.0.0.2")
    for seq in range(10):
        intruder.sendto(rtp(seq, 0xBAD), (HOST, to_caller_port))
        intruder.sendto(rtp(seq, 0xBAD), (HOST, to_callee_port))
    assert nothing_arrives(callee) and nothing_arrives(caller)
    q = ng("query", call_id="call-media")
    assert rtp_stats(q, "caller-tag")["dropped-hijack"] == 10
    assert rtp_stats(q, "callee-tag")["dropped-hijack"] == 10
    assert rtp_stats(q, "caller-tag")["packets"] == 101
    m = relay.metrics()
    assert m['rtp_relay_dropped_total{kind="rtp",reason="hijack"}'] >= 20
    assert m['rtp_relay_packets_total{direction="in",kind="rtp"}'] >= 201
    for s in (caller, callee, intruder):
        s.close()
    assert ng("delete", call_id="call-media")["result"] == "ok"


def test_reoffer_moves_callee(relay: RelayProcess) -> None:
    ng = relay.ng
    assert ng is not None
    caller, callee, to_caller_port, to_callee_port = setup_call(relay, "call-move")
    caller.sendto(rtp(1), (HOST, to_caller_port))
    assert len(receive_all(callee, 1)) == 1
    callee.sendto(rtp(1), (HOST, to_callee_port))  # callee latched at its first port
    assert len(receive_all(caller, 1)) == 1
    # re-INVITE from the callee: it moved to a new port
    moved = udp_socket()
    r = ng("offer", call_id="call-move", from_tag="callee-tag", to_tag="caller-tag", sdp=sdp(moved.getsockname()[1]))
    assert r["result"] == "ok" and media_port(r["sdp"]) == to_caller_port  # same relay port for the caller
    r = ng("answer", call_id="call-move", from_tag="callee-tag", to_tag="caller-tag", sdp=sdp(caller.getsockname()[1]))
    assert r["result"] == "ok" and media_port(r["sdp"]) == to_callee_port
    for seq in range(2, 12):
        caller.sendto(rtp(seq), (HOST, to_caller_port))
    assert len(receive_all(moved, 10)) == 10
    assert nothing_arrives(callee)
    moved.sendto(rtp(1, 0x2222), (HOST, to_callee_port))  # learning reopened: the new source latches
    assert receive_all(caller, 1) == [rtp(1, 0x2222)]
    callee.sendto(rtp(50), (HOST, to_callee_port))  # the old address is foreign now
    assert nothing_arrives(caller)
    q = ng("query", call_id="call-move")
    assert rtp_stats(q, "callee-tag")["dropped-hijack"] == 1
    for s in (caller, callee, moved):
        s.close()
    assert ng("delete", call_id="call-move")["result"] == "ok"


def test_delete_frees_ports(relay: RelayProcess) -> None:
    ng = relay.ng
    assert ng is not None
    socks = []
    for i in range(3):
        socks += setup_call(relay, f"call-del-{i}")[:2]
    assert relay.metrics()["rtp_relay_ports_in_use"] == 12
    assert relay.metrics()["rtp_relay_sessions"] == 3
    assert sorted(ng("list")["calls"]) == ["call-del-0", "call-del-1", "call-del-2"]
    for i in range(3):
        assert ng("delete", call_id=f"call-del-{i}")["result"] == "ok"
    m = relay.metrics()
    assert m["rtp_relay_ports_in_use"] == 0 and m["rtp_relay_sessions"] == 0
    assert ng("delete", call_id="call-del-0")["error-reason"] == "Unknown call-id"
    for s in socks:
        s.close()


def test_exhaustion_answers_error(relay: RelayProcess) -> None:
    ng = relay.ng
    assert ng is not None
    pairs = (relay.port_range[1] - relay.port_range[0] + 1) // 2
    ok = 0
    for i in range(pairs // 2 + 1):
        r = ng("offer", call_id=f"full-{i}", from_tag="a", sdp=sdp(4000 + 2 * i))
        if r["result"] != "ok":
            assert "Ran out of ports" in r["error-reason"]
            break
        ok += 1
    assert ok == pairs // 2
    for i in range(ok):
        ng("delete", call_id=f"full-{i}")
    assert relay.metrics()["rtp_relay_ports_in_use"] == 0


def test_media_timeout_visible_in_query() -> None:
    with running_relay("--media-timeout", "1", "--timeout-delete", "2") as relay:
        ng = relay.ng
        assert ng is not None
        caller, callee, to_caller_port, _ = setup_call(relay, "call-idle")
        caller.sendto(rtp(1), (HOST, to_caller_port))
        deadline = time.monotonic() + 5
        q = ng("query", call_id="call-idle")
        while q["timed out"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            q = ng("query", call_id="call-idle")
        assert q["timed out"] == 1 and q["last activity"] >= q["created"]
        assert ng("list")["timed-out"] == ["call-idle"]
        # and after --timeout-delete the relay releases it on its own
        deadline = time.monotonic() + 6
        while ng("list")["calls"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ng("list")["calls"] == []
        assert relay.metrics()["rtp_relay_ports_in_use"] == 0
        caller.close()
        callee.close()


def test_sigterm_exits_zero_and_releases() -> None:
    relay = RelayProcess().start()
    setup_call(relay, "call-term")
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGTERM)
    rc, out, err = relay.stop()
    assert rc == 0, err
    assert '"ports_released": 4' in out and '"leak": null' in out
