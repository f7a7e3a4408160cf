"""Media: bench/relay_bench.py (our rtp_relay beside rtpengine in userspace over ng), run as it is.

How this works: relay_bench.py is the media benchmark (its docstring tells how it measures); this
part only runs it as a child process with the run's settings, in a network namespace of its own
when we are root (`--netns`: no other process's traffic or packet sniffer on its loopback, which
would slow every relay measured), and reads the JSON it writes (`--json`). Its console output goes
to work/media/relay_bench.log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(workdir: Path, *, seconds: float, repeats: int, steps: str, log) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out_json = workdir / "relay_bench.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / "relay_bench.py"), "--seconds", f"{seconds:g}",
           "--repeats", str(repeats), "--steps", steps, "--json", str(out_json)]
    if os.geteuid() == 0:
        cmd.append("--netns")
    log(f"  {' '.join(cmd[1:])}")
    budget = 120 + repeats * 2 * len(steps.split(",")) * (seconds + 2) * 4  # retries of disturbed steps included
    try:
        with open(workdir / "relay_bench.log", "wb") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=budget, cwd=ROOT,
                                  start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": f"relay_bench.py did not finish within {budget:.0f} s", "command": cmd}
    if done.returncode != 0 or not out_json.exists():
        tail = (workdir / "relay_bench.log").read_text(errors="replace")[-1500:]
        return {"error": f"relay_bench.py exited {done.returncode}", "tail": tail, "command": cmd}
    result = json.loads(out_json.read_text())
    shown = [a for a in cmd[2:] if a not in ("--json", str(out_json))]
    result["command"] = "python bench/relay_bench.py " + " ".join(shown)
    for key, r in result["relays"].items():
        log(f"  {key}: saturation {r['saturation_pps']:,.0f} pps, {r['cpu_us_first_step']:.2f} µs/packet at "
            f"{r['first_step']}, {r['rss_kib_per_session']:.1f} KiB/session")
    return result
