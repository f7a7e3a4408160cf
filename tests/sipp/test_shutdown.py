"""SIGTERM: refuse new calls with 503, let the active call finish, exit 0."""

from __future__ import annotations

import threading
import time

import pytest

from .harness import RawSip

pytestmark = pytest.mark.sipp


def test_sigterm_drains_active_call(start_daemon, sipp_pair, needs_daemon):
    daemon = start_daemon(env={"B2BUA_SHUTDOWN__DRAIN_TIMEOUT_S": "8"})
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["result"] = sipp_pair(daemon, "uas_basic.xml", "uac_basic.xml", pause_ms=2500)
        except BaseException as exc:  # reported from the main thread
            outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    daemon.wait_metric("b2bua_active_calls", 1, timeout=5)

    daemon.terminate()
    time.sleep(0.2)

    # a new call while draining is refused with 503
    with RawSip(daemon.listen_port, "udp") as raw:
        msg, info = raw.request("INVITE")
        raw.send(msg)
        resp = raw.recv_response(timeout=2)
        if resp is not None and resp.code >= 300:
            raw.ack_for(info, resp)
    assert resp is not None and resp.code == 503, resp and resp.raw.decode(errors="replace")
    m = daemon.metrics()
    assert m.get("b2bua_escaped_exceptions_total") == 0, m
    assert m.get("b2bua_active_calls") == 1, m

    # the call in progress completes normally
    caller.join(timeout=20)
    assert not caller.is_alive(), "SIPp call did not finish"
    if "error" in outcome:
        raise outcome["error"]

    # then the daemon exits by itself, with status 0
    assert daemon.wait_exit(timeout=8) == 0
