"""Blind transfers carried out by the B2BUA (REFER, ``transfers.mode = terminate``), end to end.

Three SIPp agents per test (``harness.run_sipp_trio``): the caller (UAC, A leg), the callee (UAS,
the daemon's next hop) and the transfer target "carol", a UAS on a port of its own that the
daemon reaches through a ``routing.rules`` entry of its config file. Each party's scenario checks
what it receives (the sipfrag bodies and Event/Subscription-State of the NOTIFYs, the Referred-By
at the target, the SDP of the re-INVITE); the tests add what one scenario cannot see (who the
target sees calling, which relay ports the SDP names, the o= line of the transferee's session) and
the daemon's counters. The ``start_daemon`` teardown checks that no exception escaped and no call
is left over.

Each daemon's embedded relay uses the block of ports the harness found free for it
(``daemon.relay_ports``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Daemon, Metrics
from .transfers import TransferRig, heard, local_port, origin, received, start_rig

pytestmark = pytest.mark.sipp



@pytest.fixture
def rig(start_daemon: Callable[..., Daemon], tmp_path: Path, needs_daemon) -> Callable[..., TransferRig]:
    """``rig(transfers="...toml lines...")``: a daemon routing "carol" and "900..." to a target port."""

    def make(transfers: str = "") -> TransferRig:
        return start_rig(start_daemon, tmp_path, f"[transfers]\n{transfers}\n" if transfers else "")

    return make


def assert_one_answered_call(m: Metrics) -> None:
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_calls_total") == 1, m  # the transfer is the same call, not a second one
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m


# -- the flows ----------------------------------------------------------------------------------------


def test_blind_transfer_by_the_callee(rig):
    """The callee REFERs the caller to carol: carol is called as the caller, then bridged to it."""
    r = rig()
    result = r.run("uas_transfer_target.xml", "uas_transfer_transferor.xml", "uac_transfer_transferee.xml")
    callee_port = local_port(result.uas.cmd)

    [t_inv] = received(result.target.message_file, "INVITE")
    assert t_inv.first_line.startswith(f"INVITE sip:carol@127.0.0.1:{r.target_port} "), t_inv.text
    assert "sip:caller@" in (t_inv.header("From") or ""), t_inv.text  # the target sees the transferee
    assert t_inv.header("Referred-By") == f"<sip:callee@127.0.0.1:{callee_port}>", t_inv.text
    assert "a=x-party:caller" in t_inv.text
    r.assert_on_relay(t_inv)
    assert len(received(result.target.message_file, "BYE")) == 1  # the caller's hangup

    [bye] = received(result.uas.message_file, "BYE")
    assert 'text="call transferred"' in (bye.header("Reason") or ""), bye.text
    assert len(received(result.uas.message_file, "NOTIFY")) == 3

    # The caller's session goes on under its own o= line, one version up (RFC 3264 §8).
    answer = received(result.uac.message_file, "SIP/2.0 200")[0]  # to the INVITE
    [reinvite] = received(result.uac.message_file, "INVITE")
    assert "a=x-party:target" in reinvite.text
    r.assert_on_relay(reinvite)
    assert origin(reinvite)[0] == origin(answer)[0], (reinvite.text, answer.text)
    assert origin(reinvite)[1] > origin(answer)[1], (reinvite.text, answer.text)

    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="REFER", direction="in") == 1, m
    assert m.get("b2bua_sip_responses_total", code="202", direction="out") == 1, m
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 3, m
    # the B leg, the target, the re-INVITE of the caller
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 3, m
    # the transferor released, the caller's BYE passed to the target
    assert m.relayed("BYE") == (1, 2), m
    events = r.event_names()
    assert "transfer_completed" in events and "transfer_failed" not in events, events


def test_blind_transfer_by_the_caller(rig):
    """The caller REFERs the callee to carol: the callee becomes the transferee."""
    r = rig()
    result = r.run("uas_transfer_target.xml", "uas_transfer_transferee.xml", "uac_transfer_transferor.xml")
    caller_port = local_port(result.uac.cmd)

    [t_inv] = received(result.target.message_file, "INVITE")
    assert t_inv.first_line.startswith(f"INVITE sip:carol@127.0.0.1:{r.target_port} "), t_inv.text
    assert "sip:caller@" not in (t_inv.header("From") or ""), t_inv.text  # the transferee is the callee
    assert t_inv.header("Referred-By") == f"<sip:caller@127.0.0.1:{caller_port}>", t_inv.text
    assert "a=x-party:callee" in t_inv.text
    r.assert_on_relay(t_inv)
    assert len(received(result.target.message_file, "BYE")) == 1  # the callee's hangup

    [bye] = received(result.uac.message_file, "BYE")
    assert 'text="call transferred"' in (bye.header("Reason") or ""), bye.text

    # The callee's session (the B leg's o= line) goes on, one version up.
    [offer, reinvite] = received(result.uas.message_file, "INVITE")
    assert "a=x-party:target" in reinvite.text
    r.assert_on_relay(reinvite)
    assert origin(reinvite)[0] == origin(offer)[0], (reinvite.text, offer.text)
    assert origin(reinvite)[1] > origin(offer)[1], (reinvite.text, offer.text)

    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="REFER", direction="in") == 1, m
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 3, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 3, m
    assert m.relayed("BYE") == (1, 2), m
    assert "transfer_completed" in r.event_names()


def test_target_busy_leaves_the_call_as_it_was(rig):
    """carol answers 486: the transferor hears it in the final NOTIFY and keeps the caller."""
    r = rig()
    result = r.run("uas_transfer_target_busy.xml", "uas_transfer_transferor_busy.xml", "uac_transfer_stays.xml")

    assert len(received(result.target.message_file, "INVITE")) == 1
    assert len(received(result.target.message_file, "ACK")) == 1
    frags = [n.text.rsplit("\n", 1)[-1].strip() for n in received(result.uas.message_file, "NOTIFY")]
    assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 486 Busy Here"], frags
    # No re-INVITE anywhere, no BYE to the transferor: the callee's own BYE reached the caller.
    assert len(received(result.uac.message_file, "INVITE")) == 0
    assert len(received(result.uas.message_file, "INVITE")) == 1
    assert len(received(result.uas.message_file, "BYE")) == 0

    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 3, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 2, m  # B leg + target
    assert m.get("b2bua_sip_responses_total", code="486", direction="in") >= 1, m
    assert m.relayed("BYE") == (1, 1), m
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events


def test_transferor_hangs_up_right_after_the_202(rig):
    """The callee sends BYE as soon as it has the 202: the transfer goes on and completes.

    The target waits 1 s before ringing, so the BYE certainly reaches the daemon while the target
    is being called (else the daemon would already have sent the 180 NOTIFY, or its own BYE)."""
    r = rig()
    result = r.run(
        "uas_transfer_target.xml",
        "uas_transfer_transferor_leaves.xml",
        "uac_transfer_transferee.xml",
        target_opts={"pause_duration": 1000},
    )

    # The transferor heard only the 202, the first NOTIFY and the 200 to its BYE.
    got = heard(result.uas.message_file)
    assert "SIP/2.0 202" in got, got
    assert got[got.index("SIP/2.0 202") :] == ["SIP/2.0 202", "NOTIFY", "SIP/2.0 200"], got

    [t_inv] = received(result.target.message_file, "INVITE")
    assert "sip:caller@" in (t_inv.header("From") or ""), t_inv.text
    [reinvite] = received(result.uac.message_file, "INVITE")
    r.assert_on_relay(reinvite)
    assert len(received(result.target.message_file, "BYE")) == 1

    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 1, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 3, m
    # BYE in from the transferor and from the caller; out only to the target
    assert m.relayed("BYE") == (2, 1), m
    assert "transfer_completed" in r.event_names()


@pytest.mark.parametrize(
    "transfers",
    ['deny = [{user = "900*"}]', 'mode = "reject"'],
    ids=["denied-target", "transfers-off"],
)
def test_refused_refer_reaches_nobody(rig, transfers):
    """A REFER the policy refuses gets 403; the target agent (routed, ready) receives nothing."""
    r = rig(transfers)
    result = r.run("uas_transfer_target.xml", "uas_transfer_denied.xml", "uac_transfer_stays.xml", target_calls=0)

    assert not received(result.target.message_file, "INVITE")
    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="REFER", direction="in") == 1, m
    assert m.get("b2bua_sip_responses_total", code="403", direction="out") == 1, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 1, m  # the B leg only
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 0, m
    assert m.relayed("BYE") == (1, 1), m
    events = r.event_names()
    assert "refer_refused" in events and "transfer_started" not in events, events


def test_target_busy_after_the_transferor_left_ends_the_call(rig):
    """The transferor has hung up and the target is busy: nobody is left for the transferee,
    whom the daemon hangs up (RFC 5589 §6.2 would return it to the transferor, who is gone)."""
    r = rig()
    result = r.run(
        "uas_transfer_target_busy.xml",
        "uas_transfer_transferor_leaves.xml",
        "uac_transfer_stays.xml",
        target_opts={"pause_duration": 1000},
    )

    [bye] = received(result.uac.message_file, "BYE")
    assert "transferor has left" in (bye.header("Reason") or ""), bye.text
    m = r.daemon.settled()
    assert_one_answered_call(m)
    assert m.get("b2bua_sip_requests_total", method="NOTIFY", direction="out") == 1, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="out") == 2, m  # no re-INVITE
    assert m.relayed("BYE") == (1, 1), m  # the transferor's in, ours to the caller
    events = r.event_names()
    assert "transfer_failed" in events and "transfer_completed" not in events, events
