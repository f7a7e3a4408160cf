"""Memory: our daemon holding N calls at once (signalling only, relay off), and after they end.

How this works: the daemon is started, warmed with 100 calls, and left until its transactions are
gone (RFC 3261 keeps a completed non-INVITE server transaction for Timer J, 32 s over UDP); its RSS
and open descriptors then are the pre-load figures. SIPp's caller then places N calls at a steady
rate, each held long enough that all N are up together for a while; when the daemon's
`b2bua_active_calls` gauge shows all N, RSS is sampled a few times (steady state) and
`(RSS at N calls - RSS before) / N` is the memory one concurrent call costs. The calls then end
with BYE at the rate they started; once the daemon holds no call and no transaction, RSS and
descriptors are read again: RSS should be back within 5 % of the pre-load value and no descriptor
should be left (a leak shows here). "Once" means after the daemon's own housekeeping has run
(`SETTLE_S`: b2bua/trim.py gives memory back when the load has stopped falling, checking every
5 s); RSS at the moment the last transaction ended is kept too (`rss_idle_kb`). Only our daemon
runs this part.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .sipp import Agent
from .sut import OURS, Running, free_port, started

WARMUP_CALLS = 100
SETTLE_S = 12.0  # two of b2bua/trim.py's 5 s checks, and a margin


def wait_metric(running: Running, name: str, want: float, timeout: float) -> float:
    assert running.daemon is not None
    deadline = time.monotonic() + timeout
    value = running.daemon.metrics().get(name)
    while value != want and time.monotonic() < deadline:
        time.sleep(1.0)
        value = running.daemon.metrics().get(name)
    return value


def run(workdir: Path, *, calls: int, clean_rate: float | None, log) -> dict:
    # Well below the clean rate: the heap grows all along, and so do the collector's pauses.
    rate = min(max(0.4 * clean_rate, 50.0), 250.0) if clean_rate else 200.0
    ramp = calls / rate
    hold_s = ramp + 10.0
    out: dict = {"calls": calls, "rate": rate, "hold_s": round(hold_s, 1)}
    try:
        with started(OURS, workdir) as running:
            warm_uas = Agent("warm_uas", "bench_uas.xml", workdir / "warm", running.next_hop_port,
                             calls=WARMUP_CALLS, timeout_s=30)
            warm_uac = Agent("warm_uac", "bench_uac.xml", workdir / "warm", free_port(), remote=running.sip_port,
                             rate=50, calls=WARMUP_CALLS, hold_ms=200, timeout_s=30)
            try:
                warm_uas.start().wait_bound()
                warm_uac.start().wait(35)
                warm_uas.wait(5)
            finally:
                warm_uac.stop()
                warm_uas.stop()
            wait_metric(running, "b2bua_active_calls", 0, 10)
            left = wait_metric(running, "b2bua_transactions", 0, 45)
            out["pre"] = {"rss_kb": running.tree.rss_kb(), "fds": running.tree.fds(), "transactions": left}
            log(f"  before: RSS {out['pre']['rss_kb']} KiB, {out['pre']['fds']} descriptors; "
                f"{calls} calls at {rate:.0f} calls/s, each held {hold_s:.0f} s")

            uas = Agent("uas", "bench_uas.xml", workdir, running.next_hop_port, calls=calls,
                        timeout_s=2 * ramp + hold_s + 60, recv_timeout_ms=int(hold_s * 1000) + 10_000)
            uac = Agent("uac", "bench_uac.xml", workdir, free_port(), remote=running.sip_port, rate=rate, calls=calls,
                        hold_ms=int(hold_s * 1000), limit=calls + 10, timeout_s=2 * ramp + hold_s + 60)
            peak, samples = 0.0, []
            try:
                uas.start().wait_bound()
                t0 = time.monotonic()
                uac.start()
                deadline = t0 + ramp * 1.5 + 30
                while time.monotonic() < deadline:
                    active = running.active_calls() or 0
                    peak = max(peak, active)
                    if active >= calls:
                        break
                    if uac.proc is not None and uac.proc.poll() is not None:
                        break
                    time.sleep(1.0)
                time.sleep(2.0)
                for _ in range(4):
                    samples.append(running.tree.rss_kb())
                    peak = max(peak, running.active_calls() or 0)
                    time.sleep(1.0)
                out["held"] = {"active_calls": peak, "rss_kb": int(statistics.median(samples)),
                               "fds": running.tree.fds(), "seconds_to_reach": round(time.monotonic() - t0, 1)}
                log(f"  held {peak:.0f} calls: RSS {out['held']['rss_kb']} KiB")
                uac.wait(2 * ramp + hold_s + 60)
                uas.wait(10)
            finally:
                uac.stop()
                uas.stop()
            s_uac, s_uas = uac.stats(), uas.stats()
            out["sipp"] = {"successful": s_uac.successful, "failed": s_uac.failed + s_uas.failed,
                           "unexpected": s_uac.unexpected + s_uas.unexpected,
                           "retransmissions": s_uac.retransmissions + s_uas.retransmissions}
            wait_metric(running, "b2bua_active_calls", 0, 30)
            left = wait_metric(running, "b2bua_transactions", 0, 45)
            idle_rss = running.tree.rss_kb()
            time.sleep(SETTLE_S)  # the daemon's settling pass (b2bua/trim.py) runs within two checks
            out["post"] = {"rss_kb": running.tree.rss_kb(), "rss_idle_kb": idle_rss, "fds": running.tree.fds(),
                           "transactions": left}
            pre, held, post = out["pre"], out["held"], out["post"]
            out["kb_per_call"] = round((held["rss_kb"] - pre["rss_kb"]) / max(peak, 1), 2)
            out["rss_after_pct"] = round(100.0 * (post["rss_kb"] - pre["rss_kb"]) / pre["rss_kb"], 1)
            out["fds_left"] = post["fds"] - pre["fds"]
            log(f"  {out['kb_per_call']} KiB per call; after: RSS {post['rss_kb']} KiB "
                f"({out['rss_after_pct']:+.1f} %), descriptors {post['fds']} ({out['fds_left']:+d}); "
                f"SIPp {out['sipp']}")
    except Exception as exc:  # noqa: BLE001 - report what failed, keep the other parts
        out["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  memory part failed: {out['error']}")
    return out
