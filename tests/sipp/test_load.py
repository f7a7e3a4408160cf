"""A short burst of calls."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.sipp

CALLS = 200
RATE = 50


@pytest.mark.time_limit(60)
def test_burst_200_calls_at_50_cps(start_daemon, sipp_pair):
    # The burst holds about 16-20 calls at once: more media ports than the default 16 calls' worth,
    # or the relay rightly answers "Ran out of ports" and a call gets 503.
    daemon = start_daemon(relay_block=256)
    result = sipp_pair(
        daemon, "uas_basic.xml", "uac_basic.xml",
        calls=CALLS, rate=RATE, limit=CALLS, pause_ms=300, timeout_s=40,
    )  # fmt: skip
    assert result.uac.stat("Successful call") == CALLS
    assert result.uac.stat("Failed call") == 0
    if daemon.direct:
        return
    m = daemon.wait_metric("b2bua_active_calls", 0, timeout=10)
    assert m.get("b2bua_calls_total", result="answered") == CALLS, m
    for result_label in ("cancelled", "rejected", "failed", "timeout"):
        assert m.get("b2bua_calls_total", result=result_label) == 0, m
    assert m.get("b2bua_sip_requests_total", method="INVITE", direction="in") == CALLS, m
    assert m.get("b2bua_transaction_timeouts_total") == 0, m
