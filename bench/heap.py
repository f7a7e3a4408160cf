"""What one held call keeps on our daemon's heap, by source line (tracemalloc), and its GC pauses.

How this works: the daemon runs as in the benchmark (relay off) but through a small wrapper
(`--wrapped`, this same file) that starts tracemalloc and installs two signal handlers before it
runs `python -m b2bua`: SIGUSR2 takes a heap snapshot (after gc.collect(): only live objects) and
writes the difference to the first snapshot, by line, to the report file; gc callbacks log every
full (generation 2) collection with its pause. The driver warms the daemon with 100 calls, waits
for their transactions to end (Timer J, 32 s), takes the base snapshot, places `--calls` calls
held long enough to be all up after their INVITE transactions have ended (Timer L/M, 32 s), and
takes the second: the difference divided by the calls is what one concurrent call keeps.
tracemalloc slows the daemon and adds its own bookkeeping to RSS, so RSS here is not the figure
to quote (bench/memory.py is); the traced bytes per call and where they come from are.

    python -m bench.heap [--calls 1000] [--top 30]
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT_ENV = "B2BUA_HEAP_REPORT"


def wrapped() -> None:
    """Inside the daemon's process: tracemalloc, the SIGUSR2 snapshot, GC pause log; then b2bua."""
    import runpy
    import tracemalloc

    tracemalloc.start(1)
    report = Path(os.environ[REPORT_ENV])
    base: list[tracemalloc.Snapshot] = []
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif info["generation"] == 2:
            with report.open("a") as f:
                f.write(f"gc gen2 pause {1000 * (time.perf_counter() - started['t']):.1f} ms, "
                        f"{len(gc.get_objects())} objects tracked\n")

    def snapshot(signum: int, frame: object) -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        with report.open("a") as f:
            if not base:
                base.append(snap)
                f.write("base snapshot\n")
                return
            stats = snap.compare_to(base[0], "lineno")
            f.write(f"diff {sum(s.size_diff for s in stats)} bytes\n")
            for s in stats[: int(os.environ.get("B2BUA_HEAP_TOP", "30"))]:
                where = s.traceback[0]
                name = where.filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
                f.write(f"line {s.size_diff} {s.count_diff} {name}:{where.lineno}\n")

    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR2, snapshot)
    sys.argv = ["b2bua", *sys.argv[1:]]
    runpy.run_module("b2bua", run_name="__main__", alter_sys=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.sipp import run_calls
    from bench.sut import OURS, started
    from tests.sipp import harness

    work = ROOT / "bench" / "results" / "work" / "heap"
    work.mkdir(parents=True, exist_ok=True)
    report = work / "report.txt"
    report.unlink(missing_ok=True)
    plain = harness.Daemon.command
    # python -m b2bua ARGS -> python bench/heap.py --wrapped ARGS
    harness.Daemon.command = lambda self: [plain(self)[0], __file__, "--wrapped", *plain(self)[3:]]  # type: ignore
    calls = min(max(args.calls, 10), 20_000)
    hold_ms = int((calls / args.rate + 40) * 1000)
    try:
        with started(OURS, work / "daemon", env={REPORT_ENV: str(report), "B2BUA_HEAP_TOP": str(args.top)}) as r:
            run_calls(r, work / "warm", rate=50, calls=100, hold_ms=100)
            time.sleep(35)  # the warm-up's transactions end (Timer J)
            os.kill(r.tree.pid, signal.SIGUSR2)
            time.sleep(2)
            load = threading.Thread(target=run_calls, args=(r, work / "load"),
                                    kwargs=dict(rate=args.rate, calls=calls, hold_ms=hold_ms))
            load.start()
            time.sleep(calls / args.rate + 36)  # all up, and their INVITE transactions over (Timer L/M)
            active = r.active_calls()
            os.kill(r.tree.pid, signal.SIGUSR2)
            time.sleep(3)
            load.join()
    finally:
        harness.Daemon.command = plain  # type: ignore
    lines = report.read_text().splitlines()
    total = next((int(x.split()[1]) for x in lines if x.startswith("diff ")), 0)
    print(f"{active:.0f} calls held: {total / calls / 1024:.2f} KiB of traced heap per call")
    for x in lines:
        if x.startswith("line "):
            _, size, count, where = x.split()
            print(f"  {int(size) / calls:8.0f} B/call {int(count) / calls:6.1f} blocks/call  {where}")
        elif x.startswith("gc "):
            print(f"  {x}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--wrapped":
        del sys.argv[1]
        wrapped()
    else:
        sys.exit(main())
