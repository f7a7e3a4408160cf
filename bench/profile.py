"""Profile our daemon under a steady SIPp load with py-spy (installed in bench/.venv-peers).

How this works: the daemon is started as in the benchmark (relay off unless --relay), SIPp places
calls at `--rate` for `--seconds`, and py-spy samples the daemon meanwhile (`record --format raw`:
collapsed stacks). The top functions by own time and by inclusive time are printed, and the raw
stacks are kept (bench/results/work/profile/) for a flame graph (e.g. speedscope or flamegraph.pl).

    python -m bench.profile [--rate 150] [--seconds 15] [--relay] [--native]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sipp import run_calls  # noqa: E402
from bench.sut import OURS, OURS_RELAY, ensure_peers, py_spy, started  # noqa: E402


def top(raw: Path, n: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    out = [f"{total} samples", "", "own time:"]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in own.most_common(n)]
    out += ["", "inclusive:"]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=150.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--relay", action="store_true")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    args = p.parse_args()
    ensure_peers()
    spy = py_spy()
    if spy is None:
        p.error("py-spy missing from bench/.venv-peers")
    work = ROOT / "bench" / "results" / "work" / "profile"
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "daemon.raw"
    with started(OURS_RELAY if args.relay else OURS, work / "daemon") as running:
        cmd = [str(spy), "record", "--pid", str(running.tree.pid), "--duration", str(int(args.seconds)),
               "--format", "raw", "--rate", "250", "-o", str(raw), "--nonblocking"]
        if args.native:
            cmd.append("--native")
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(step=run_calls(
            running, work / "sipp", rate=args.rate, calls=int(args.rate * args.seconds), hold_ms=1000)))
        t.start()
        t.join()
        spy_proc.wait(timeout=args.seconds + 30)
        step = result["step"]
        print(f"{args.rate:g} calls/s: {step.summary()}")
    print(top(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
