"""Deflection end to end: the ringing callee's phone sends REFER in its early dialog (deflection.py).

Three SIPp agents (``harness.run_sipp_trio``): the caller (``uac_deflected.xml``), the callee's phone
that rings and deflects to carol (``uas_deflecting_phone.xml``), and carol, the target
(``uas_transfer_target.xml``, the same target as for blind transfers). The scenarios check what each
hears; the test adds who carol sees calling, the relay ports every SDP names, and the counters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Daemon
from .transfers import heard, received, start_rig

pytestmark = pytest.mark.sipp


def test_the_ringing_callee_deflects_the_call_to_the_target(start_daemon: Callable[..., Daemon], tmp_path: Path,
                                                            needs_daemon):
    rig = start_rig(start_daemon, tmp_path)
    result = rig.run("uas_transfer_target.xml", "uas_deflecting_phone.xml", "uac_deflected.xml")

    [t_inv] = received(result.target.message_file, "INVITE")
    assert "sip:caller@" in (t_inv.header("From") or ""), t_inv.text  # carol sees the caller calling
    assert "a=x-party:caller" in t_inv.text
    rig.assert_on_relay(t_inv)

    # The phone: 202, three NOTIFYs, then its INVITE is cancelled (after the final NOTIFY).
    assert heard(result.uas.message_file) == ["INVITE", "SIP/2.0 202", "NOTIFY", "NOTIFY", "NOTIFY",
                                              "CANCEL", "ACK"]
    # The caller: ringing from the phone, the answer from carol on a relay port, nothing else.
    caller_heard = [h for h in heard(result.uac.message_file) if h != "SIP/2.0 100"]
    assert caller_heard == ["SIP/2.0 180", "SIP/2.0 200", "SIP/2.0 200"], caller_heard  # 200 INVITE, 200 BYE
    answer = received(result.uac.message_file, "SIP/2.0 200")[0]
    rig.assert_on_relay(answer)
    assert len(received(result.target.message_file, "BYE")) == 1  # the caller's hangup reached carol

    m = rig.daemon.settled()
    assert m.get("b2bua_transfers_total", kind="deflection", result="completed") == 1, m
    assert m.get("b2bua_calls_total", result="answered") == 1, m
    assert m.get("b2bua_active_calls") == 0, m
    assert m.get("b2bua_media_sessions") == 0, m
