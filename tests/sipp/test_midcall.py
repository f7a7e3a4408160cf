"""Mid-call requests relayed across the two legs, and the RFC 3261 18.1.1 size rule."""

from __future__ import annotations

import pytest

from .harness import traced_messages

pytestmark = pytest.mark.sipp


def test_hold_resume_by_caller(daemon, sipp_pair):
    sipp_pair(daemon, "uas_hold_by_caller.xml", "uac_hold_by_caller.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    # initial INVITE + hold + resume, each received on A and sent on B
    assert m.relayed("INVITE") == (3, 3), m
    assert m.get("b2bua_sip_requests_total", method="ACK", direction="out") >= 3, m


def test_hold_resume_by_callee(daemon, sipp_pair):
    sipp_pair(daemon, "uas_hold_by_callee.xml", "uac_hold_by_callee.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    # initial INVITE from A, hold + resume from B: 3 in, 3 out
    assert m.relayed("INVITE") == (3, 3), m


def test_update_and_info_crossing(daemon, sipp_pair):
    sipp_pair(daemon, "uas_update_info.xml", "uac_update_info.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.relayed("UPDATE") == (1, 1), m
    # one INFO each way
    assert m.relayed("INFO") == (2, 2), m


def test_large_invite_switches_b_leg_to_tcp(daemon, sipp_pair):
    # the daemon's next hop is plain UDP; the callee only listens on TCP
    assert daemon.next_hop_transport == "udp"
    result = sipp_pair(daemon, "uas_large_invite.xml", "uac_large_invite.xml", a_transport="t1", b_transport="t1")
    invites = [t for t in traced_messages(result.uas.message_file) if t.method == "INVITE"]
    assert invites, f"no INVITE in {result.uas.message_file}"
    assert invites[0].direction == "received"
    assert invites[0].transport == "TCP", invites[0].text
    assert invites[0].size > 1500, invites[0].size
    # the caller's BYE reached the callee too, over TCP (its Contact says transport=TCP)
    byes = [t for t in traced_messages(result.uas.message_file) if t.method == "BYE"]
    assert byes and byes[0].transport == "TCP"
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_sip_requests_total", method="BYE", direction="out") == 1, m
