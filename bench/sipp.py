"""SIPp agents for the benchmark: started, bounded, measured, always killed.

How this works: an `Agent` is one SIPp process (a scenario from sipp_scenarios/, a role, a port),
run in a session of its own with a stdin pipe that stays open and silent (SIPp takes end-of-file
on stdin as a soft quit, and `-nostdin` can crash it in the foreground). Every agent has a hard
deadline (`-timeout` and our own kill after it). What an agent did is read from its files when it
has ended: the last line of its statistics CSV (`-trace_stat`: calls created, successful, failed,
unexpected messages, retransmissions...) and its log (`-trace_logs`), where the bench scenarios
write wall-clock timestamps in microseconds with SIPp's gettimeofday action ("setup <call>
<s> <us> <s> <us>": INVITE sent, 200 received). SIPp's own response times (rtd) count whole
milliseconds only, too coarse for a B2BUA on loopback.

`run_calls` runs one step (a UAS at the system's next hop, then a UAC at a rate for a number of
calls) and measures around it the CPU of the system under test's process tree, of the SIPp agents
(RUSAGE_CHILDREN: they are our children) and of the whole machine, so what other processes took
(`foreign`) shows next to each figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import signal
import statistics
import subprocess
import time
from pathlib import Path

from .procs import machine_busy_s
from .sut import LOOPBACK, Running, free_port, wait_port_bound

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "sipp_scenarios"
SIPP = "sipp"
MESSAGES_PER_CALL = 5  # bench_uac sends INVITE, ACK, BYE; bench_uas 200, 200


@dataclasses.dataclass
class AgentStats:
    role: str
    returncode: int | None
    created: int = 0
    successful: int = 0
    failed: int = 0
    unexpected: int = 0  # FailedUnexpectedMessage + OutOfCallMsgs
    dead: int = 0  # messages for calls already over: late retransmissions
    retransmissions: int = 0
    log: list[list[str]] = dataclasses.field(default_factory=list)
    errors: str = ""


class Agent:
    def __init__(self, role: str, scenario: str, workdir: Path, port: int, *, remote: int | None = None,
                 calls: int, rate: float | None = None, hold_ms: int = 0, limit: int | None = None,
                 timeout_s: float = 60, recv_timeout_ms: int = 5000, extra: list[str] | None = None) -> None:
        self.role, self.port, self.workdir = role, port, workdir
        self.timeout_s = timeout_s
        workdir.mkdir(parents=True, exist_ok=True)
        self.stat = workdir / f"{role}_stat.csv"
        self.logf = workdir / f"{role}_log.txt"
        self.errf = workdir / f"{role}_errors.txt"
        for f in (self.stat, self.logf, self.errf):
            f.unlink(missing_ok=True)
        cmd = [SIPP, "-sf", str(SCENARIOS / scenario), "-i", LOOPBACK, "-p", str(port), "-mp", str(free_port()),
               "-m", str(calls), "-trace_stat", "-stf", str(self.stat), "-fd", "1", "-trace_logs",
               "-log_file", str(self.logf), "-trace_err", "-error_file", str(self.errf),
               "-recv_timeout", str(recv_timeout_ms), "-timeout", f"{int(timeout_s)}s", "-timeout_error",
               "-max_recv_loops", "10000", "-max_sched_loops", "10000", "-buff_size", str(4 << 20)]
        if remote is not None:
            cmd += [f"{LOOPBACK}:{remote}", "-r", f"{rate:g}", "-rp", "1000", "-d", str(hold_ms),
                    "-l", str(limit or calls)]
        cmd += extra or []
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Agent:
        with open(self.workdir / f"{self.role}.out", "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        return self

    def wait_bound(self) -> None:
        assert self.proc is not None
        proc = self.proc
        wait_port_bound(self.port, "udp", timeout=10, alive=lambda: proc.poll() is None)

    def wait(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(timeout, 0.1))
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace: float = 3.0) -> None:
        """SIGUSR1 (SIPp's soft quit: final statistics written), then SIGKILL to the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGUSR1)
            if not self.wait(grace):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.wait(5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stats(self) -> AgentStats:
        s = AgentStats(self.role, self.proc.returncode if self.proc else None)
        with contextlib.suppress(OSError, StopIteration, ValueError):
            with open(self.stat) as f:
                header = next(f).rstrip(";\n").split(";")
                last = ""
                for line in f:
                    if line.strip():
                        last = line
            row = dict(zip(header, last.rstrip(";\n").split(";"), strict=False))

            def n(key: str) -> int:
                return int(float(row.get(key, "0") or 0))

            s.created, s.successful, s.failed = n("TotalCallCreated"), n("SuccessfulCall(C)"), n("FailedCall(C)")
            s.unexpected = n("FailedUnexpectedMessage(C)") + n("OutOfCallMsgs(C)")
            s.dead, s.retransmissions = n("DeadCallMsgs(C)"), n("Retransmissions(C)")
        with contextlib.suppress(OSError):
            s.log = [line.split() for line in self.logf.read_text().splitlines() if line.strip()]
        with contextlib.suppress(OSError):
            s.errors = self.errf.read_text(errors="replace")[-2000:]
        return s


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))
    return v[k]


def stamp(fields: list[str], at: int) -> float:
    """Seconds from SIPp's gettimeofday pair (printed as floats: "1795255018.000000 598397.000000")."""
    return float(fields[at]) + float(fields[at + 1]) / 1e6


@dataclasses.dataclass
class Step:
    target: float  # calls/s asked
    calls: int
    seconds: float  # UAC wall time
    uac: AgentStats
    uas: AgentStats
    sut_cpu_s: float
    gen_cpu_s: float
    foreign_cpu_s: float
    achieved: float = 0.0  # calls/s, from the INVITE send times
    setup_ms: list[float] = dataclasses.field(default_factory=list)

    @property
    def successful(self) -> int:
        return self.uac.successful

    @property
    def retrans_pct(self) -> float:
        sent = MESSAGES_PER_CALL * max(self.calls, 1)
        return 100.0 * (self.uac.retransmissions + self.uas.retransmissions + self.uac.dead + self.uas.dead) / sent

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000.0 * self.sut_cpu_s / self.successful if self.successful else float("nan")

    @property
    def p50(self) -> float:
        return percentile(self.setup_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.setup_ms, 99)

    def problems(self) -> list[str]:
        out = []
        if self.uac.successful != self.calls:
            out.append(f"{self.uac.successful}/{self.calls} calls successful")
        failed = self.uac.failed + self.uas.failed
        if failed:
            out.append(f"{failed} failed")
        unexpected = self.uac.unexpected + self.uas.unexpected
        if unexpected:
            out.append(f"{unexpected} unexpected messages")
        if self.retrans_pct > 0.1:
            out.append(f"retransmissions {self.retrans_pct:.2f} %")
        if self.achieved < 0.99 * self.target:
            out.append(f"achieved {self.achieved:.1f} of {self.target:g} calls/s")
        return out

    @property
    def clean(self) -> bool:
        return not self.problems()

    def summary(self) -> dict:
        return {"target": self.target, "calls": self.calls, "successful": self.successful,
                "achieved": round(self.achieved, 2), "clean": self.clean, "problems": self.problems(),
                "retrans_pct": round(self.retrans_pct, 4), "cpu_ms_per_call": round(self.cpu_ms_per_call, 4),
                "setup_p50_ms": round(self.p50, 3), "setup_p99_ms": round(self.p99, 3),
                "sut_cores": round(self.sut_cpu_s / max(self.seconds, 0.01), 3),
                "gen_cores": round(self.gen_cpu_s / max(self.seconds, 0.01), 3),
                "foreign_cores": round(self.foreign_cpu_s / max(self.seconds, 0.01), 3)}


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_calls(running: Running, workdir: Path, *, rate: float, calls: int, hold_ms: int = 1000,
              uac: str = "bench_uac.xml", uas: str = "bench_uas.xml", recv_timeout_ms: int = 5000,
              wall_s: float | None = None) -> Step:
    """One step: `calls` calls at `rate` calls/s through `running`, each held `hold_ms`."""
    wall = wall_s or (calls / rate + hold_ms / 1000 + 20)
    server = Agent("uas", uas, workdir, running.next_hop_port, calls=calls, timeout_s=wall + 5,
                   recv_timeout_ms=recv_timeout_ms + hold_ms)
    client = Agent("uac", uac, workdir, free_port(), remote=running.sip_port, rate=rate, calls=calls,
                   hold_ms=hold_ms, timeout_s=wall, recv_timeout_ms=recv_timeout_ms)
    try:
        server.start()
        server.wait_bound()
        gen0, sut0, busy0, t0 = children_cpu_s(), running.tree.cpu_s(), machine_busy_s(), time.monotonic()
        self0 = sum(os.times()[:2])
        client.start()
        client.wait(wall + 5)
        sut1, t1 = running.tree.cpu_s(), time.monotonic()
        busy1 = machine_busy_s()
        server.wait(3.0)
    finally:
        client.stop()
        server.stop()
    gen = children_cpu_s() - gen0
    own = sum(os.times()[:2]) - self0
    sut_cpu = sut1 - sut0
    step = Step(rate, calls, t1 - t0, client.stats(), server.stats(), sut_cpu, gen,
                max(busy1 - busy0 - sut_cpu - gen - own, 0.0))
    setups = [x for x in step.uac.log if x and x[0] == "setup" and len(x) >= 6]
    step.setup_ms = [1000 * (stamp(x, 4) - stamp(x, 2)) for x in setups]
    sends = sorted(stamp(x, 2) for x in setups)
    if len(sends) >= 2 and sends[-1] > sends[0]:
        step.achieved = (len(sends) - 1) / (sends[-1] - sends[0])
    return step


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")
