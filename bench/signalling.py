"""Signalling: highest clean call rate, CPU per call and setup latency, for each system under test.

How this works: for each turn (A B C A B C ..., so slow drifts of the machine's load fall on every
system alike) each system is started fresh and driven by a SIPp caller/callee pair on 127.0.0.1:

1. a fixed step at 50 calls/s (`fixed_s` seconds): CPU milliseconds per call (utime + stime of the
   system's whole process tree over the step, /proc) and the INVITE -> 200 time of every call
   (p50/p99, microsecond timestamps from the caller's log);
2. a ladder of rates 10 % apart, `step_s` seconds each, each call held 1 s. A step is clean with 0
   failed calls, 0 unexpected messages, retransmissions <= 0.1 % of the messages the agents send
   and an achieved rate >= 99 % of the target (from the INVITE send times). Where the ladder
   starts comes from a quick probe in the first turn (short steps 50 % apart), so each turn
   spends its time near the system's limit: it starts two rungs below the probe's figure (one
   below the best of an earlier turn) and steps down when even that fails; at most 5 steps a
   turn. An unclean step is run once more on a freshly started system (an overloaded system keeps
   what it lost, and the machine may be shared); the climb stops at the second unclean run.

The figure per system is the median over the turns of its highest clean rate (min and max beside
it). A step where SIPp itself used most of a core is marked: SIPp, not the system under test, may
then be the limit.

A 10 s step on a freshly started system does not reach the heap a steady load builds (completed
transactions are kept 32 s, RFC 3261 Timers J/L/M), so the figure is that of a load of a few
seconds more than of a sustained one; the same holds for every system measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from .sipp import Step, median, run_calls
from .sut import Sut, started

HOLD_MS = 1000
FIXED_RATE = 50.0
LADDER = [round(50 * 1.1**k) for k in range(45)]  # 50 .. ~3,600 calls/s, 10 % apart
MAX_STEPS = 5  # ladder steps per turn, retries included: the run stays bounded
MAX_DOWN = 3  # rungs (of 2) to step down when the start of a turn fails, before giving up
FIXED_MIN_OK = 0.99  # the fixed step's CPU and latency count if this share of its calls succeeded
GEN_BOUND = 0.85  # SIPp cores above which a failed step may be the generator's limit


@dataclasses.dataclass
class Turn:
    fixed: Step | None = None
    steps: list[Step] = dataclasses.field(default_factory=list)
    best: float = 0.0
    generator_bound: bool = False  # the step that failed had SIPp near a full core
    error: str = ""

    def summary(self) -> dict:
        return {"fixed_50": self.fixed.summary() if self.fixed else None, "best_clean": self.best,
                "generator_bound": self.generator_bound, "error": self.error,
                "steps": [s.summary() for s in self.steps]}


@dataclasses.dataclass
class SutResult:
    sut: Sut
    turns: list[Turn] = dataclasses.field(default_factory=list)
    probe: float = 0.0

    def values(self, what: str) -> list[float]:
        out = []
        for t in self.turns:
            if what == "best":
                if not t.error and t.best:  # no clean rung within the turn's steps: no figure (report.py)
                    out.append(t.best)
            elif t.fixed is not None and t.fixed.successful >= FIXED_MIN_OK * t.fixed.calls:
                out.append({"cpu": t.fixed.cpu_ms_per_call, "p50": t.fixed.p50, "p99": t.fixed.p99}[what])
        return out

    def summary(self) -> dict:
        return {"name": self.sut.name, "probe": self.probe, "turns": [t.summary() for t in self.turns],
                "best_clean_median": median(self.values("best")),
                "cpu_ms_per_call_median": median(self.values("cpu")),
                "setup_p50_ms_median": median(self.values("p50")),
                "setup_p99_ms_median": median(self.values("p99"))}


def rung_at_or_below(rate: float) -> int:
    k = 0
    while k + 1 < len(LADDER) and LADDER[k + 1] <= rate:
        k += 1
    return k


def step(running, workdir: Path, rate: float, seconds: float, log) -> Step:
    calls = max(int(rate * seconds), 10)
    s = run_calls(running, workdir / f"r{rate:g}", rate=rate, calls=calls, hold_ms=HOLD_MS, recv_timeout_ms=3000)
    gen = s.gen_cpu_s / max(s.seconds, 0.01)
    log(f"    {rate:6g} calls/s x {calls:6d}: {'clean' if s.clean else 'NOT clean: ' + ', '.join(s.problems())}; "
        f"CPU {s.cpu_ms_per_call:.2f} ms/call, setup p50 {s.p50:.2f} p99 {s.p99:.2f} ms; "
        f"cores: system {s.sut_cpu_s / max(s.seconds, 0.01):.2f}, SIPp {gen:.2f}, "
        f"foreign {s.foreign_cpu_s / max(s.seconds, 0.01):.2f}")
    running.settle()
    return s


def probe(sut: Sut, workdir: Path, seconds: float, cap: float, log) -> float:
    """A quick climb (short steps, 50 % apart) to find where the real ladder should start."""
    best, rate = 0.0, 100.0
    with started(sut, workdir) as running:
        while rate <= cap:
            s = step(running, workdir, rate, seconds, log)
            if not s.clean:
                break
            best, rate = rate, rate * 1.5
    return best or 50.0


def climb(sut: Sut, workdir: Path, start_rung: int, fixed_s: float, step_s: float, cap: float, log, *,
          stride: int = 1, retry: bool = True, max_steps: int = MAX_STEPS) -> Turn:
    """The fixed 50 calls/s step, then the ladder from `start_rung`, `stride` rungs a step.

    After an unclean step the system is restarted: an overloaded system keeps the calls it lost
    (Sippy, for one, then fails even at 50 calls/s), and the next step must not pay for them."""
    turn = Turn()
    runs = 0
    stack = contextlib.ExitStack()

    def fresh():
        nonlocal runs
        stack.close()
        runs += 1
        return stack.enter_context(started(sut, workdir / f"run{runs}"))

    try:
        running = fresh()
        turn.fixed = step(running, workdir / "fixed", FIXED_RATE, fixed_s, log)
        if not turn.fixed.clean:
            running = fresh()
        k = start_rung
        failures_here = 0
        down = 0  # rungs stepped down because even the start failed
        while 0 <= k < len(LADDER) and LADDER[k] <= cap and len(turn.steps) < max_steps:
            s = step(running, workdir, LADDER[k], step_s, log)
            turn.steps.append(s)
            if s.clean:
                turn.best = max(turn.best, LADDER[k])
                if down:
                    break  # the first clean rung on the way down is the answer
                k, failures_here = k + stride, 0
                continue
            running = fresh()
            failures_here += 1
            if retry and failures_here < 2:
                continue  # once more: the machine may be shared
            turn.generator_bound = s.gen_cpu_s / max(s.seconds, 0.01) > GEN_BOUND
            if turn.best or not retry or down >= MAX_DOWN:
                break
            down, failures_here = down + 1, 0  # even the start failed: step down
            k -= 2
    except Exception as exc:  # noqa: BLE001 - one system failing must not lose the others' figures
        turn.error = f"{type(exc).__name__}: {exc}"
        log(f"    failed: {turn.error}")
    finally:
        stack.close()
    return turn


def run(suts: list[Sut], workdir: Path, *, turns: int, fixed_s: float, step_s: float, probe_s: float,
        cap: float, log) -> dict[str, SutResult]:
    """`probe_s` 0: no probe (quick mode), the ladder starts at 50 calls/s and climbs 50 % a step."""
    results = {s.key: SutResult(s) for s in suts}
    if not probe_s:
        for s in suts:
            log(f"  {s.name}: ladder 50 % apart from 50 calls/s")
            results[s.key].turns.append(climb(s, workdir / s.key / "turn1", 0, fixed_s, step_s, cap, log,
                                              stride=4, retry=False, max_steps=len(LADDER)))
            log(f"    highest clean: {results[s.key].turns[-1].best:g} calls/s")
        return results
    for s in suts:
        log(f"  probe: {s.name}")
        try:
            results[s.key].probe = probe(s, workdir / s.key / "probe", probe_s, cap, log)
        except Exception as exc:  # noqa: BLE001
            log(f"    probe failed: {exc}")
            results[s.key].probe = 50.0
    for n in range(turns):
        for s in suts:
            r = results[s.key]
            seen = [t.best for t in r.turns if t.best]
            # two rungs below the probe's figure (3 s steps flatter), one below a turn's
            start = max(rung_at_or_below(max(seen)) - 1, 0) if seen else max(rung_at_or_below(r.probe) - 2, 0)
            log(f"  turn {n + 1}/{turns}: {s.name}, ladder from {LADDER[start]} calls/s")
            r.turns.append(climb(s, workdir / s.key / f"turn{n + 1}", start, fixed_s, step_s, cap, log))
            log(f"    highest clean: {r.turns[-1].best:g} calls/s")
    return results
