"""Basic call flows through the B2BUA: transports, who hangs up, failures before answer."""

from __future__ import annotations

import pytest

from .harness import traced_messages

pytestmark = pytest.mark.sipp


@pytest.mark.parametrize(
    ("a_transport", "b_transport"),
    [("u1", "u1"), ("t1", "t1"), ("u1", "t1"), ("t1", "u1")],
    ids=["udp-udp", "tcp-tcp", "udp-tcp", "tcp-udp"],
)
def test_basic_call_transports(start_daemon, sipp_pair, a_transport, b_transport):
    daemon = start_daemon(next_hop_transport="tcp" if b_transport == "t1" else "udp")
    sipp_pair(daemon, "uas_basic.xml", "uac_basic.xml", a_transport=a_transport, b_transport=b_transport)
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    # the INVITE came in on A and went out on B; same for the caller's BYE
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="in") >= 1, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") >= 1, m
    assert m.get("b2bua_sip_requests_total", method="BYE", direction="in") >= 1, m
    assert m.get("b2bua_sip_requests_total", method="BYE", direction="out") >= 1, m
    assert m.get("b2bua_sip_responses_total", code="200", direction="out") >= 2, m


def test_caller_hangs_up(daemon, sipp_pair):
    result = sipp_pair(daemon, "uas_basic.xml", "uac_basic.xml")
    if daemon.direct:
        return
    # the B leg is a dialog of its own, and Max-Forwards went down by one
    a_invite = next(t for t in traced_messages(result.uac.message_file) if t.method == "INVITE")
    b_invite = next(t for t in traced_messages(result.uas.message_file) if t.method == "INVITE")
    assert b_invite.header("Call-ID") != a_invite.header("Call-ID")
    assert a_invite.header("Max-Forwards") == "70"
    assert b_invite.header("Max-Forwards") == "69", b_invite.text
    assert f"127.0.0.1:{daemon.listen_port}" in (b_invite.header("Via") or ""), b_invite.text
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_sip_requests_total", method="ACK", direction="out") >= 1, m
    assert m.relayed("BYE") == (1, 1), m


def test_callee_hangs_up(daemon, sipp_pair):
    sipp_pair(daemon, "uas_callee_bye.xml", "uac_callee_bye.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    # the BYE came from the callee (in on B) and was relayed to the caller (out on A)
    assert m.relayed("BYE") == (1, 1), m


def test_caller_cancels_while_ringing(daemon, sipp_pair):
    sipp_pair(daemon, "uas_cancel.xml", "uac_cancel.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="cancelled") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 0, m
    assert m.relayed("CANCEL") == (1, 1), m
    assert m.get("b2bua_sip_responses_total", code="487", direction="in") >= 1, m
    assert m.get("b2bua_sip_responses_total", code="487", direction="out") >= 1, m


def test_callee_busy(daemon, sipp_pair):
    sipp_pair(daemon, "uas_busy.xml", "uac_busy.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="rejected") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 0, m
    assert m.get("b2bua_sip_responses_total", code="486", direction="in") >= 1, m
    assert m.get("b2bua_sip_responses_total", code="486", direction="out") >= 1, m


def test_no_answer_timeout(start_daemon, sipp_pair, needs_daemon):
    daemon = start_daemon(env={"B2BUA_CALLS__NO_ANSWER_TIMEOUT_S": "2"})
    # the UAS rings forever; the daemon CANCELs it after 2 s and answers the caller 408
    sipp_pair(daemon, "uas_cancel.xml", "uac_no_answer.xml", recv_timeout_ms=8000)
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="timeout") == 1, m
    assert m.get("b2bua_sip_requests_total", method="CANCEL", direction="out") == 1, m
    assert m.get("b2bua_sip_responses_total", code="408", direction="out") >= 1, m
    assert m.get("b2bua_sip_responses_total", code="487", direction="in") >= 1, m


def test_early_media_183_then_200(daemon, sipp_pair):
    sipp_pair(daemon, "uas_early_media.xml", "uac_early_media.xml")
    if daemon.direct:
        return
    m = daemon.settled()
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_sip_responses_total", code="183", direction="in") >= 1, m
    assert m.get("b2bua_sip_responses_total", code="183", direction="out") >= 1, m


@pytest.mark.parametrize("b_transport", ["u1", "t1"])
def test_ipv4_caller_to_ipv6_callee(start_daemon, sipp_pair, b_transport):
    """The B leg runs over [::1]: our Via/Contact there must be IPv6, or the callee's BYE goes nowhere."""
    daemon = start_daemon(next_hop_host="::1", next_hop_transport="tcp" if b_transport == "t1" else "udp")
    result = sipp_pair(daemon, "uas_callee_bye.xml", "uac_callee_bye.xml", b_transport=b_transport)
    b_invite = next(t for t in traced_messages(result.uas.message_file) if t.method == "INVITE")
    assert f"[::1]:{daemon.listen_port}" in (b_invite.header("Via") or ""), b_invite.text
    assert f"[::1]:{daemon.listen_port}" in (b_invite.header("Contact") or ""), b_invite.text
    m = daemon.wait_metric("b2bua_calls_total", 1, result="answered")
    assert m.get("b2bua_sip_requests_total", method="BYE", direction="in") == 1
