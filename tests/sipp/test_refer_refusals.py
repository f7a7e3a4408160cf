"""What a transferor may not do, end to end (``transfers.mode = terminate``): a REFER whose Refer-To
asks for another method than INVITE, a second REFER while a transfer is in progress, a NOTIFY in a
dialog that has ended.

Three SIPp agents (``harness.run_sipp_trio``) and the real daemon: the caller (who stays), the
callee (who sends everything, uas_refer_refusals_transferor.xml) and carol (the target, busy after
ringing 1 s: the second REFER certainly arrives while she rings). The callee's scenario checks each
status and reason phrase; the test adds what everybody else heard and the daemon's counters. The
``start_daemon`` teardown checks that no exception escaped and no call is left over.
"""

from __future__ import annotations

import pytest

from .transfers import heard, received, sipfrag

pytestmark = [pytest.mark.sipp]  # rig: conftest


def test_refused_refers_and_a_late_notify(rig):
    """method=BYE in the Refer-To: 403, and carol is not called for it; a second REFER during the
    transfer to carol: 491, and the first transfer goes on to its end (486: the call stays); the
    callee's NOTIFY after its BYE: 481."""
    r = rig()
    result = r.run("uas_transfer_target_busy.xml", "uas_refer_refusals_transferor.xml", "uac_transfer_stays.xml",
                   target_opts={"pause_duration": 1000})
    callee, caller, carol = result.uas.message_file, result.uac.message_file, result.target.message_file

    got = [h for h in heard(callee) if not h.startswith("SIP/2.0 1")]
    assert got == ["INVITE", "ACK", "SIP/2.0 403", "SIP/2.0 202", "NOTIFY", "SIP/2.0 491", "NOTIFY", "NOTIFY",
                   "SIP/2.0 200", "SIP/2.0 481"], got
    [forbidden] = received(callee, "SIP/2.0 403")
    assert forbidden.first_line == "SIP/2.0 403 Only INVITE transfers are allowed", forbidden.text
    assert forbidden.header("CSeq") == "101 REFER", forbidden.text
    [pending] = received(callee, "SIP/2.0 491")
    assert pending.header("CSeq") == "103 REFER", pending.text
    frags = [sipfrag(n) for n in received(callee, "NOTIFY")]
    assert frags == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 486 Busy Here"], frags
    assert all(n.header("Event") == "refer;id=102" for n in received(callee, "NOTIFY"))  # the accepted REFER's
    [late] = received(callee, "SIP/2.0 481")
    assert late.header("CSeq") == "105 NOTIFY", late.text

    assert heard(carol) == ["INVITE", "ACK"], heard(carol)  # one call: the accepted REFER's
    [c_inv] = received(carol, "INVITE")
    assert c_inv.first_line.startswith("INVITE sip:carol@"), c_inv.text
    assert [h for h in heard(caller) if not h.startswith("SIP/")] == ["BYE"], heard(caller)

    m = r.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="blind", result="failed") == 1, m
    assert m.get("b2bua_transfers_total") == 1, m  # the refused REFERs started nothing
    assert m.get("b2bua_calls_total", result="answered") == 1 and m.get("b2bua_calls_total") == 1, m
    assert m.relayed("REFER") == (3, 0), m
    for code in ("403", "491", "202", "481"):
        assert m.get("b2bua_sip_responses_total", code=code, direction="out") == 1, (code, m)
    assert m.relayed("INVITE") == (1, 2), m  # call 1 in; its B leg and the one call to carol out
    assert m.relayed("NOTIFY") == (1, 3), m  # the late one in (refused); the daemon's three out
    assert m.relayed("BYE") == (1, 1), m
    assert m.get("b2bua_active_calls") == 0 and m.get("b2bua_media_sessions") == 0, m
    refused = [(e.get("status"), e.get("reason")) for e in r.daemon.events() if e.get("event") == "refer_refused"]
    assert refused == [(403, "Only INVITE transfers are allowed"),
                       (491, "Request Pending (a transfer is in progress)")], refused
