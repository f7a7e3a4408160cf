"""`make bench`: every benchmark in one run, beside the peers, in one Markdown table (and JSON).

How this works: the parts run in turn, each bounded in time, all on 127.0.0.1:

- signalling (bench/signalling.py): our daemon with the relay off and on, Sippy B2BUA as
  `b2bua_simple` and as `b2bua` with a static route, Kamailio as a dialog-stateful proxy;
- memory (bench/memory.py): our daemon holding N calls at once (relay off), RSS per call, RSS and
  descriptors after they end;
- media (bench/relay_bench.py, unchanged in what it measures): rtp_relay beside rtpengine;
- transfers (bench/transfers.py): blind and attended transfers started by phones, through our daemon.

The peers are installed first (bench/.venv-peers for Sippy, apt-get for Kamailio), never into the
project's environment. Results go to bench/results/latest.md and latest.json (the per-step detail
and SIPp's files of this run under bench/results/work/). `--quick` is a smoke run of every part
in a few minutes, for development; its figures are rough.

    python -m bench.run [--quick] [--parts signalling,memory,media,transfers] [--turns N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import media, memory, report, signalling, transfers  # noqa: E402
from bench.procs import machine_info  # noqa: E402
from bench.sut import KAMAILIO, OURS, OURS_RELAY, SIPPY_B2BUA, SIPPY_SIMPLE, ensure_peers  # noqa: E402

PARTS = ("signalling", "memory", "media", "transfers")

# (quick, full) settings of each part
PROFILES = {
    "quick": dict(turns=1, fixed_s=5, step_s=3, probe_s=0, cap=1200, memory_calls=1000, media_seconds=2,
                  media_repeats=1, media_steps="1000x50,3000x50", transfer_s=3),
    "full": dict(turns=2, fixed_s=12, step_s=8, probe_s=2, cap=2500, memory_calls=20000, media_seconds=4,
                 media_repeats=2, media_steps="1000x50,3000x50,3000x70", transfer_s=10),
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run of every part")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--turns", type=int, help="signalling turns per system (A B A B ...)")
    p.add_argument("--memory-calls", type=int, help="concurrent calls of the memory part")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    # Ctrl-C and SIGTERM unwind through every `finally`, which kills what this run started (a shell
    # that starts us in the background leaves SIGINT ignored: restore it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = dict(PROFILES["quick" if args.quick else "full"])
    if args.turns:
        cfg["turns"] = min(max(args.turns, 1), 9)
    if args.memory_calls:
        cfg["memory_calls"] = min(max(args.memory_calls, 100), 50_000)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")

    out: Path = args.out
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f}s] {msg}", flush=True)

    results: dict = {"started": started_at, "mode": "quick" if args.quick else "full", "settings": cfg,
                     "machine": machine_info(), "parts": {}}
    problems = ensure_peers(log)
    results["peer_problems"] = problems
    for name, why in problems.items():
        log(f"peer unavailable: {name}: {why}")

    if "signalling" in parts:
        log("signalling")
        suts = [OURS, OURS_RELAY]
        if "sippy" not in problems:
            suts += [SIPPY_SIMPLE, SIPPY_B2BUA]
        if "kamailio" not in problems:
            suts.append(KAMAILIO)
        sig = signalling.run(suts, work / "signalling", turns=cfg["turns"], fixed_s=cfg["fixed_s"],
                             step_s=cfg["step_s"], probe_s=cfg["probe_s"], cap=cfg["cap"], log=log)
        results["parts"]["signalling"] = {k: v.summary() for k, v in sig.items()}
    if "memory" in parts:
        log(f"memory: {cfg['memory_calls']} concurrent calls")
        clean_rate = None
        sig_ours = results["parts"].get("signalling", {}).get("ours")
        if sig_ours:
            clean_rate = sig_ours["best_clean_median"]
        results["parts"]["memory"] = memory.run(work / "memory", calls=cfg["memory_calls"], clean_rate=clean_rate,
                                                log=log)
    if "media" in parts:
        log("media: bench/relay_bench.py")
        results["parts"]["media"] = media.run(work / "media", seconds=cfg["media_seconds"],
                                              repeats=cfg["media_repeats"], steps=cfg["media_steps"], log=log)
    if "transfers" in parts:
        sig_ours = results["parts"].get("signalling", {}).get("ours")
        clean_rate = sig_ours["best_clean_median"] if sig_ours else None
        log("transfers")
        results["parts"]["transfers"] = transfers.run(work / "transfers", clean_rate=clean_rate,
                                                      seconds=cfg["transfer_s"], log=log)

    results["duration_s"] = round(time.monotonic() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    md = report.markdown(results)
    (out / "latest.md").write_text(md)
    print()
    print(md)
    log(f"done in {results['duration_s'] / 60:.1f} min; {out / 'latest.md'}, {out / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
