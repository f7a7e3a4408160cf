"""Transfers: blind and attended transfers started by phones, through our daemon, under load.

How this works: three SIPp agents per kind of transfer, as in tests/sipp/test_transfer.py and
test_attended_transfer.py: alice (bench_transferee.xml, the caller), bob (the callee at the
daemon's next hop, who transfers her: bench_blind_transferor.xml or bench_attended_transferor.xml)
and carol (the target, a UAS that the daemon reaches through a routing rule for user "carol").
The load is half our highest clean call rate (relay off), counted in calls through the daemon:
each transfer brings two (blind: alice's call and the daemon's call to carol; attended: alice's
call and bob's consultation call to carol), so transfers start at a quarter of that rate. (Until
session 6 transfers started at half the call rate, i.e. calls at the full clean rate and, with
REFER, NOTIFYs and re-INVITEs on top, 2 to 3 times the messages of the clean plain-call load: the
daemon ran saturated, not at half load.) Each transfer starts 200 ms after bob answered
(attended: 200 ms after carol answered bob's consultation call). alice's INVITE carries
X-Bench-Id, which crosses the B2BUA to bob, and every agent logs microsecond wall-clock times
(SIPp's gettimeofday action) with that id, so one transfer's events are matched across agents:

- setup: alice's INVITE -> her 200 (a plain call setup, under the same load);
- REFER -> final NOTIFY: bob sends the REFER -> bob receives the NOTIFY with the final sipfrag;
- REFER -> media: bob sends the REFER -> alice receives the B2BUA's re-INVITE carrying carol's
  media (she answers it at once; with the relay off, RTP then flows straight between them). No
  RTP is sent: this is when the target's media can flow, not a packet seen on the wire.

The target of the issue: p99 REFER -> final NOTIFY at most 2x the p99 of a plain call setup in
the same run.
"""

from __future__ import annotations

from pathlib import Path

from .sipp import Agent, percentile, stamp
from .sut import OURS, free_port, started

CALLS_PER_TRANSFER = 2  # INVITE dialogs through the daemon per transfer, either kind (see above)
PAUSE_S = 0.2  # bob's pause before the REFER (attended: before the consultation, and again before the REFER)
HOLD_MS = 500  # alice's talk with carol after the transfer


def run_kind(kind: str, workdir: Path, rate: float, seconds: float, log) -> dict:
    calls = max(int(rate * seconds), 10)
    target_port = free_port()
    config = f'[routing]\nrules = [{{user_prefix = "carol", next_hop = "127.0.0.1:{target_port}"}}]\n'
    flow_s = PAUSE_S * (2 if kind == "attended" else 1) + HOLD_MS / 1000 + 2
    wall = calls / rate + flow_s + 30
    out: dict = {"rate": rate, "calls": calls}
    with started(OURS, workdir, config_toml=config) as running:
        target = Agent("target", f"bench_{kind}_target.xml", workdir, target_port, calls=calls, timeout_s=wall + 5)
        bob = Agent("transferor", f"bench_{kind}_transferor.xml", workdir, running.next_hop_port, calls=calls,
                    timeout_s=wall + 5)
        alice = Agent("transferee", "bench_transferee.xml", workdir, free_port(), remote=running.sip_port,
                      rate=rate, calls=calls, hold_ms=HOLD_MS, timeout_s=wall)
        agents = (target, bob, alice)
        try:
            for a in (target, bob):
                a.start().wait_bound()
            alice.start().wait(wall + 5)
            for a in (bob, target):
                a.wait(5)
        finally:
            for a in agents:
                a.stop()
        stats = {a.role: a.stats() for a in agents}
        m = running.daemon.metrics() if running.daemon else None
        if m is not None:
            out["daemon_transfers_completed"] = m.get("b2bua_transfers_total", kind=kind, result="completed")
    problems = []
    for role, s in stats.items():
        if s.successful != calls:
            problems.append(f"{role}: {s.successful}/{calls} successful")
        if s.failed:
            problems.append(f"{role}: {s.failed} failed")
        if s.unexpected:
            problems.append(f"{role}: {s.unexpected} unexpected messages")
    retrans = sum(s.retransmissions for s in stats.values())
    out["retransmissions"] = retrans
    out["problems"] = problems
    out["clean"] = not problems

    def events(s, what: str) -> dict[str, float]:
        return {x[1]: stamp(x, 2) for x in s.log if x and x[0] == what and len(x) >= 4}

    setups = [1000 * (stamp(x, 4) - stamp(x, 2)) for x in stats["transferee"].log if x and x[0] == "setup"]
    refer = events(stats["transferor"], "refer")
    final = events(stats["transferor"], "final")
    media = events(stats["transferee"], "media")
    to_final = [1000 * (final[i] - refer[i]) for i in refer if i in final]
    to_media = [1000 * (media[i] - refer[i]) for i in refer if i in media]
    for name, values in (("setup", setups), ("refer_to_final_notify", to_final), ("refer_to_media", to_media)):
        out[name] = {"n": len(values), "p50_ms": round(percentile(values, 50), 3),
                     "p99_ms": round(percentile(values, 99), 3)}
    sends = sorted(stamp(x, 2) for x in stats["transferee"].log if x and x[0] == "setup")
    out["achieved"] = round((len(sends) - 1) / (sends[-1] - sends[0]), 2) if len(sends) > 1 and sends[-1] > sends[0] \
        else 0.0
    p99_setup = out["setup"]["p99_ms"]
    out["p99_final_over_setup"] = round(out["refer_to_final_notify"]["p99_ms"] / p99_setup, 2) if p99_setup else None
    log(f"  {kind}: {calls} transfers at {rate:g}/s ({'clean' if not problems else '; '.join(problems)}): setup p50 "
        f"{out['setup']['p50_ms']:.1f} p99 {p99_setup:.1f} ms; REFER->final NOTIFY p50 "
        f"{out['refer_to_final_notify']['p50_ms']:.1f} p99 {out['refer_to_final_notify']['p99_ms']:.1f} ms; "
        f"REFER->media p50 {out['refer_to_media']['p50_ms']:.1f} p99 {out['refer_to_media']['p99_ms']:.1f} ms")
    return out


def run(workdir: Path, *, clean_rate: float | None, seconds: float, log) -> dict:
    rate = max(round((clean_rate or 100.0) / 2 / CALLS_PER_TRANSFER), 5)
    out: dict = {"rate": rate, "basis": (
        f"{CALLS_PER_TRANSFER * rate} calls/s through the daemon ({CALLS_PER_TRANSFER} per transfer), half our "
        "highest clean call rate (relay off)") if clean_rate
        else f"no signalling figure in this run: {rate} transfers/s"}
    for kind in ("blind", "attended"):
        try:
            out[kind] = run_kind(kind, workdir / kind, rate, seconds, log)
        except Exception as exc:  # noqa: BLE001 - report, keep the other kind
            out[kind] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {kind} failed: {out[kind]['error']}")
    return out
