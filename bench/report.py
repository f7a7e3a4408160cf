"""The Markdown report of a bench run (bench/results/latest.md), from the JSON of bench/run.py."""

from __future__ import annotations

import math
import statistics


def _ok(x) -> bool:
    return isinstance(x, int | float) and not math.isnan(x)


def spread(values: list[float], digits: int = 1) -> str:
    """'median (min–max)', or the one value, or '–'."""
    values = [v for v in values if _ok(v)]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}×" if _ok(a) and _ok(b) and b else "–"


def markdown(r: dict) -> str:
    lines: list[str] = []
    add = lines.append
    m = r["machine"]
    add(f"Run {r['started']}, `{r['mode']}` mode, {r.get('duration_s', 0) / 60:.1f} min. Machine: {m['cpu']}, "
        f"{m['memory']}, Linux {m['kernel']}, Python {m['python']}, SIPp {m['sipp']}, {m['kamailio']}; load "
        f"average at start {m['load average at start']}.")
    add("")
    parts = r["parts"]
    targets: list[tuple[str, str, str]] = []

    sig = parts.get("signalling")
    if sig:
        turns = r["settings"]["turns"]
        add(f"**Signalling** (SIPp caller → system → SIPp callee, UDP on 127.0.0.1, calls held 1 s; median (min–max) "
            f"of {turns} alternating turn(s); highest clean rate on a ladder 10 % apart)")
        add("")
        add("| system | highest clean calls/s | b2bua (relay off) ÷ this | b2bua (relay on) ÷ this | "
            "INVITE→200 p50 / p99 ms at that rate | "
            "CPU ms/call at 50 calls/s | b2bua ÷ this | INVITE→200 p50 ms | p99 ms |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

        def vals(key: str, what: str) -> list[float]:
            s = sig.get(key)
            if not s:
                return []
            out = []
            for t in s["turns"]:
                if what == "best":
                    # A turn that spent its steps on the way down without one clean rung has no
                    # figure (not 0: that would halve the median of two turns).
                    if not t["error"] and t["best_clean"]:
                        out.append(t["best_clean"])
                elif what in ("best_p50", "best_p99"):
                    # Setup latency at the highest clean rung: the clean criterion has no latency
                    # bound, and near saturation a queue shorter than Timer A (500 ms) still passes.
                    at = [st for st in t.get("steps", []) if st.get("clean") and st["target"] == t["best_clean"]]
                    if not t["error"] and at:
                        out.append(at[-1]["setup_p50_ms" if what == "best_p50" else "setup_p99_ms"])
                elif t["fixed_50"] and t["fixed_50"]["successful"] >= 0.99 * t["fixed_50"]["calls"]:
                    out.append(t["fixed_50"][{"cpu": "cpu_ms_per_call", "p50": "setup_p50_ms",
                                              "p99": "setup_p99_ms"}[what]])
            return out

        def med(key: str, what: str) -> float:
            v = vals(key, what)
            return statistics.median(v) if v else float("nan")

        ours, ours_relay = med("ours", "best"), med("ours_relay", "best")
        ours_cpu = med("ours", "cpu")
        for key, s in sig.items():
            bound = any(t["generator_bound"] for t in s["turns"])
            lost = sum(1 for t in s["turns"] if not t["error"] and not t["best_clean"])
            best = (spread(vals(key, "best"), 0) + (" (SIPp-bound)" if bound else "")
                    + (f" ({lost} turn(s) without a clean rung, left out)" if lost else ""))
            peer = not key.startswith("ours")
            at_best = f"{spread(vals(key, 'best_p50'), 1)} / {spread(vals(key, 'best_p99'), 1)}"
            add(f"| {s['name']} | {best} | {ratio(ours, med(key, 'best')) if peer else ''} | "
                f"{ratio(ours_relay, med(key, 'best')) if peer else ''} | {at_best} | {spread(vals(key, 'cpu'), 2)} | "
                f"{ratio(ours_cpu, med(key, 'cpu')) if peer else ''} | {spread(vals(key, 'p50'), 2)} | "
                f"{spread(vals(key, 'p99'), 2)} |")
        add("")
        add("Clean step: 0 failed calls, 0 unexpected messages, retransmissions ≤ 0.1 %, achieved rate ≥ 99 % of "
            "the target. CPU: utime + stime of the system's whole process tree (/proc) over a 50 calls/s step, "
            "per call (counted when ≥ 99 % of the step's calls succeeded). INVITE→200: caller-side wall clock, "
            "µs resolution. \"SIPp-bound\": at the failing step "
            "SIPp used most of a core, so the load generator may be the limit. Our daemon logs one JSON line "
            "per call (`call_ended`, at info, its default); the peers log nothing per call.")
        add("")
        best_sippy = max([med(k, "best") for k in ("sippy_simple", "sippy_b2bua") if k in sig] or [float("nan")])
        if _ok(best_sippy):
            targets.append(("calls/s ≥ 5× Sippy (relay off)", ratio(ours, best_sippy, 1),
                            _met(_ok(ours) and ours >= 5 * best_sippy)))
            targets.append(("calls/s ≥ 3× Sippy (relay on)", ratio(ours_relay, best_sippy, 1),
                            _met(_ok(ours_relay) and ours_relay >= 3 * best_sippy)))
        kam_cpu = med("kamailio", "cpu")
        if _ok(kam_cpu):
            targets.append(("CPU/call at 50 calls/s ≤ 2× Kamailio", ratio(ours_cpu, kam_cpu, 1),
                            _met(_ok(ours_cpu) and ours_cpu <= 2 * kam_cpu)))

    mem = parts.get("memory")
    if mem:
        add(f"**Memory** (our daemon, relay off: {mem.get('calls', 0):,} calls placed at {mem.get('rate', 0):.0f} "
            f"calls/s and held together)")
        add("")
        if "error" in mem:
            add(f"failed: {mem['error']}")
        else:
            pre, held, post = mem["pre"], mem["held"], mem["post"]
            add("| calls held at once | RSS before | RSS at peak | KiB per concurrent call | RSS after all ended | "
                "descriptors before / after | SIPp failed / unexpected |")
            add("|---:|---:|---:|---:|---:|---:|---:|")
            add(f"| {held['active_calls']:,.0f} | {pre['rss_kb'] / 1024:.1f} MiB | {held['rss_kb'] / 1024:.1f} MiB | "
                f"{mem['kb_per_call']:.2f} | {post['rss_kb'] / 1024:.1f} MiB ({mem['rss_after_pct']:+.1f} %) | "
                f"{pre['fds']} / {post['fds']} | {mem['sipp']['failed']} / {mem['sipp']['unexpected']} |")
            targets.append(("≤ 10 KB RSS per concurrent call", f"{mem['kb_per_call']:.2f} KiB at "
                            f"{held['active_calls']:,.0f} calls", _met(mem["kb_per_call"] * 1024 <= 10_000)))
            targets.append(("RSS after within 5 % of before", f"{mem['rss_after_pct']:+.1f} %",
                            _met(abs(mem["rss_after_pct"]) <= 5)))
            targets.append(("no descriptor left", f"{mem['fds_left']:+d}", _met(mem["fds_left"] <= 0)))
        add("")

    med_part = parts.get("media")
    if med_part:
        add("**Media** (bench/relay_bench.py: 172-byte RTP, one stream per call, relay pinned to one core, "
            f"median of {med_part.get('repeats', '?')} alternating turn(s))")
        add("")
        if "error" in med_part:
            add(f"failed: {med_part['error']}")
        else:
            relays = med_part["relays"]
            eng = relays.get("rtpengine")
            add("| relay | packets/s at < 0.1 % loss | ÷ rtpengine | CPU µs/packet at " +
                (next(iter(relays.values()))["first_step"] if relays else "") +
                " | at saturation | KiB/session |")
            add("|---|---:|---:|---:|---:|---:|")
            for key, x in relays.items():
                add(f"| {x['name']} | {'≥ ' if x['top_step_passed'] else ''}{x['saturation_pps']:,.0f} | "
                    f"{ratio(x['saturation_pps'], eng['saturation_pps']) if eng and key != 'rtpengine' else ''} | "
                    f"{x['cpu_us_first_step']:.2f} | {x['cpu_us_at_saturation']:.2f} | "
                    f"{x['rss_kib_per_session']:.1f} |")
            add("")
            add(f"Reproduce: `{med_part.get('command', '')}`. " + (med_part.get("skipped") or ""))
            ours_r = relays.get("rtp_relay")
            if ours_r and eng:
                targets.append(("media packets/s per core ≥ rtpengine", ratio(ours_r["saturation_pps"],
                                eng["saturation_pps"]), _met(ours_r["saturation_pps"] >= eng["saturation_pps"])))
                targets.append(("media CPU/packet ≤ rtpengine", f"{ours_r['cpu_us_first_step']:.2f} vs "
                                f"{eng['cpu_us_first_step']:.2f} µs",
                                _met(ours_r["cpu_us_first_step"] <= eng["cpu_us_first_step"])))
        add("")

    tr = parts.get("transfers")
    if tr:
        add(f"**Transfers** (phone-started, through our daemon with the relay off, at {tr['rate']} transfers/s: "
            f"{tr['basis']})")
        add("")
        add("| transfer | transfers | clean | INVITE→200 p50 / p99 ms | REFER→final NOTIFY p50 / p99 ms | "
            "REFER→target's media p50 / p99 ms | p99 NOTIFY ÷ p99 setup |")
        add("|---|---:|---|---:|---:|---:|---:|")
        for kind in ("blind", "attended"):
            x = tr.get(kind)
            if not x:
                continue
            if "error" in x:
                add(f"| {kind} | | failed: {x['error']} | | | | |")
                continue
            add(f"| {kind} | {x['calls']} | {'yes' if x['clean'] else 'no: ' + '; '.join(x['problems'])} | "
                f"{x['setup']['p50_ms']:.1f} / {x['setup']['p99_ms']:.1f} | "
                f"{x['refer_to_final_notify']['p50_ms']:.1f} / {x['refer_to_final_notify']['p99_ms']:.1f} | "
                f"{x['refer_to_media']['p50_ms']:.1f} / {x['refer_to_media']['p99_ms']:.1f} | "
                f"{x['p99_final_over_setup']} |")
            if x.get("p99_final_over_setup") is not None:
                targets.append((f"{kind}: p99 REFER→final NOTIFY ≤ 2× p99 setup", f"{x['p99_final_over_setup']}×",
                                _met(x["p99_final_over_setup"] <= 2 and x["clean"])))
        add("")
        add("REFER→target's media: the transferor's REFER leaving → the transferee receiving the B2BUA's re-INVITE "
            "with the target's SDP (answered at once; no RTP is sent in this part). Times are wall clocks of the "
            "SIPp agents (µs), matched per transfer by an X-Bench-Id header.")
        add("")

    if targets:
        add("**Targets** (issue 6)")
        add("")
        add("| target | this run | met |")
        add("|---|---|---|")
        for name, value, met in targets:
            add(f"| {name} | {value} | {met} |")
        add("")
    if r.get("peer_problems"):
        add("Peers not measured: " + "; ".join(f"{k}: {v}" for k, v in r["peer_problems"].items()))
    return "\n".join(lines) + "\n"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
