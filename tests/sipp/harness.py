"""Helpers for the end-to-end SIPp tests.

Everything here talks to 127.0.0.1 only, and every process or loop is bounded
in count and time.

* ``free_port`` / ``free_port_block``: ports free on loopback right now.
* ``Daemon``: the b2bua daemon as a subprocess (``python -m b2bua``), with
  ``metrics()`` and ``stop()``.
* ``Metrics``: a parsed Prometheus text exposition.
* ``run_sipp_pair``: a UAS scenario and a UAC scenario run through pysipp,
  server first (and only once its socket is bound), then client.
* ``run_sipp_trio``: the same with a third agent, a UAS standing by on a port
  of its own (the target of a transfer, reached through a routing rule).
* ``RawSip``: a tiny raw-socket SIP client for OPTIONS / malformed input tests.

Set ``B2BUA_SIPP_DIRECT=1`` to run the call-flow tests UAC -> UAS directly,
without the daemon (only useful to validate the scenario XML itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO_ROOT / "sipp_scenarios"
SIPP_BIN = "/usr/bin/sipp"

# ports handed out during this session; never hand one out twice
_handed_out: set[int] = set()


def direct_mode() -> bool:
    return os.environ.get("B2BUA_SIPP_DIRECT", "") not in ("", "0")


# --------------------------------------------------------------------------
# ports


def _bindable(port: int, kinds: Iterable[int]) -> bool:
    for kind in kinds:
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port() -> int:
    """A port on 127.0.0.1 currently free for both UDP and TCP."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.close()
        if port in _handed_out:
            continue
        if _bindable(port, (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free loopback port")


BLOCK_PORTS = (20000, 60999)  # where blocks are looked for: below and in Linux's ephemeral range
RELAY_BLOCK = 64  # media ports of a test daemon's embedded relay: 16 calls with one stream (Daemon relay_block)


def free_port_block(size: int = 4) -> int:
    """First port of ``size`` consecutive UDP ports free on 127.0.0.1 (for SIPp media, relay blocks).

    Ports handed out once are never handed out again in this session, so after a few hundred
    daemons a random guess rarely finds a long free run: the search sweeps once through
    BLOCK_PORTS from a random even start, jumping past ports already handed out, and binds only
    candidates that are clear of them."""
    lo, hi = BLOCK_PORTS
    span = hi - lo - size
    base = lo + (random.randrange(span) & ~1)
    swept = 0
    while swept <= span:
        ports = range(base, base + size)
        clash = max((p for p in ports if p in _handed_out), default=None)
        if clash is None and all(_bindable(p, (socket.SOCK_DGRAM,)) for p in ports):
            _handed_out.update(ports)
            return base
        step = ((clash + 2) & ~1) - base if clash is not None else 2
        swept += step
        base += step
        if base + size > hi:
            base = lo + (base + size - hi) // 2 * 2
    raise RuntimeError("could not find a free block of loopback ports")


def _port_is_bound(port: int, proto: str) -> bool:
    """Read-only check (no bind attempt, so no race with the owner) via /proc/net."""
    want = f"{port:04X}"
    tables = {"udp": ["/proc/net/udp", "/proc/net/udp6"], "tcp": ["/proc/net/tcp", "/proc/net/tcp6"]}[proto]
    for table in tables:
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    local = fields[1]
                    state = fields[3]
                    if local.rsplit(":", 1)[1] != want:
                        continue
                    if proto == "tcp" and state != "0A":  # LISTEN
                        continue
                    return True
        except FileNotFoundError:
            pass
    return False


def wait_port_bound(port: int, proto: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_is_bound(port, proto):
            return
        if not alive():
            raise RuntimeError(f"process exited before binding {proto} port {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound {proto} port {port} within {timeout}s")


# --------------------------------------------------------------------------
# metrics

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


class Metrics:
    """Samples of a Prometheus text exposition: (name, labels) -> value."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                raise ValueError(f"unparsable metrics line: {raw!r}")
            name, labels_txt, value = m.groups()
            labels = {k: _unescape(v) for k, v in _LABEL_RE.findall(labels_txt or "")}
            self.samples.append((name, labels, float(value)))

    def get(self, name: str, **labels: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for sname, slabels, value in self.samples:
            if sname == name and all(slabels.get(k) == str(v) for k, v in labels.items()):
                total += value
        return total

    def relayed(self, method: str) -> tuple[float, float]:
        """(received, sent) counts of SIP requests of `method`."""
        name = "b2bua_sip_requests_total"
        return self.get(name, method=method, direction="in"), self.get(name, method=method, direction="out")

    def has(self, name: str) -> bool:
        return any(sname == name for sname, _, _ in self.samples)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        interesting = [s for s in self.samples if s[0].startswith("b2bua_")]
        return "Metrics(" + ", ".join(f"{n}{lab or ''}={v:g}" for n, lab, v in interesting) + ")"


# --------------------------------------------------------------------------
# the daemon


class DaemonError(AssertionError):
    pass


class Daemon:
    """The b2bua daemon under test, running as ``python -m b2bua``.

    ``next_hop_transport`` is "udp" or "tcp" (tcp appends ``;transport=tcp``).
    In direct mode nothing is started and ``sip_port`` is the next hop itself.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        next_hop_port: int | None = None,
        next_hop_transport: str = "udp",
        next_hop_host: str = LOOPBACK,
        env: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        direct: bool = False,
        relay_block: int = RELAY_BLOCK,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.direct = direct
        self.next_hop_port = next_hop_port or free_port()
        self.next_hop_transport = next_hop_transport
        self.next_hop_host = next_hop_host  # "::1" puts the B leg on IPv6 (the daemon listens on both)
        self.listen_port = free_port()
        self.http_port = free_port()
        self.extra_env = dict(env or {})
        low = free_port_block(relay_block)
        self.relay_ports = range(low, low + relay_block)  # the embedded relay's media ports
        self.config_file = config_file
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.workdir / "b2bua.stdout.log"
        self.stderr_path = self.workdir / "b2bua.stderr.log"
        self.exit_code: int | None = None
        self.stopped = False  # stop() was called: teardown skips the live checks

    # where SIP clients (the A side) send
    @property
    def sip_port(self) -> int:
        return self.next_hop_port if self.direct else self.listen_port

    def command(self) -> list[str]:
        v6 = ":" in self.next_hop_host
        host = f"[{self.next_hop_host}]" if v6 else self.next_hop_host
        next_hop = f"{host}:{self.next_hop_port}"
        if self.next_hop_transport == "tcp":
            next_hop += ";transport=tcp"
        cmd = [
            sys.executable, "-m", "b2bua",
            "--listen", f"{LOOPBACK}:{self.listen_port}",
            "--next-hop", next_hop,
            "--http", f"{LOOPBACK}:{self.http_port}",
            "--log-level", "info",
        ]  # fmt: skip
        if v6:
            cmd += ["--listen", f"[{self.next_hop_host}]:{self.listen_port}"]
        if self.config_file:
            cmd += ["--config", str(self.config_file)]
        return cmd

    def start(self, ready_timeout: float = 10.0) -> Daemon:
        if self.direct:
            return self
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["B2BUA_SHUTDOWN__DRAIN_TIMEOUT_S"] = "2"
        # The embedded relay gets a block of ports found free on loopback now (not a fixed range,
        # which a media benchmark or another relay on this machine may hold).
        env["B2BUA_MEDIA__EMBEDDED__PORTS"] = f"{self.relay_ports[0]}-{self.relay_ports[-1]}"
        env.update(self.extra_env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + ready_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"b2bua exited with code {self.proc.returncode} before /healthz answered\n"
                    f"command: {self.command()}\n{self.output_tail()}"
                )
            try:
                # Ask the kernel's table first, not by connecting: a connect to a port nobody listens
                # on yet, from the ephemeral range that port is in, can draw that very port as its
                # source and connect to itself (TCP simultaneous open). The probe then reads back
                # its own request, and while that socket lives the daemon cannot bind the port.
                if not _port_is_bound(self.http_port, "tcp"):
                    last_error = "HTTP port not listening yet"
                else:
                    status, _ = self.http_get("/healthz", timeout=1.0)
                    if status == 200:
                        return self
                    last_error = f"HTTP {status}"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        self.kill()
        raise DaemonError(
            f"b2bua /healthz not ready within {ready_timeout}s ({last_error})\n"
            f"command: {self.command()}\n{self.output_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict]:
        """The daemon's JSON log lines so far (structlog: one object per line on stdout)."""
        out = []
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def output_tail(self, max_chars: int = 6000) -> str:
        parts = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            try:
                data = path.read_text(errors="replace")
            except FileNotFoundError:
                data = ""
            if len(data) > max_chars:
                data = "...\n" + data[-max_chars:]
            parts.append(f"--- b2bua {label} ({path}) ---\n{data}")
        return "\n".join(parts)

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        # never go through an HTTP proxy from the environment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def metrics(self) -> Metrics:
        if self.direct:
            return Metrics("")
        status, body = self.http_get("/metrics")
        if status != 200:
            raise DaemonError(f"/metrics answered HTTP {status}: {body[:500]}")
        return Metrics(body)

    def wait_metric(self, name: str, expected: float, timeout: float = 5.0, **labels: str) -> Metrics:
        """Poll /metrics until ``name{labels}`` equals ``expected``; fail with the last value."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if self.direct or m.get(name, **labels) == expected:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{name}{labels or ''} is {m.get(name, **labels):g}, expected {expected:g} "
                    f"(waited {timeout}s)\n{m!r}"
                )
            time.sleep(0.1)

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown) without waiting."""
        if self.direct or self.proc is None:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to end and require exit code 0."""
        if self.direct or self.proc is None:
            return 0
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DaemonError(f"b2bua did not exit within {timeout}s of SIGTERM\n{self.output_tail()}") from None
        self.exit_code = self.proc.returncode
        if self.exit_code != 0:
            raise DaemonError(f"b2bua exited with code {self.exit_code} after SIGTERM\n{self.output_tail()}")
        return self.exit_code

    def settled(self, timeout: float = 5.0) -> Metrics:
        """Metrics once every call has ended (active calls back to 0)."""
        return self.wait_metric("b2bua_active_calls", 0, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, and require a clean exit (code 0) within ``timeout`` seconds."""
        if self.stopped and self.proc is not None and self.proc.poll() is not None:
            return self.wait_exit(timeout)
        self.terminate()
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def check_clean(self, active_timeout: float = 5.0) -> None:
        """The teardown invariants: nothing escaped into the event loop, no call left over."""
        if self.direct or self.proc is None or self.stopped:
            return
        if not self.alive():
            raise DaemonError(f"b2bua died during the test (exit code {self.proc.returncode})\n{self.output_tail()}")
        m = self.metrics()
        escaped = m.get("b2bua_escaped_exceptions_total")
        assert m.has("b2bua_escaped_exceptions_total"), "b2bua_escaped_exceptions_total missing from /metrics"
        assert escaped == 0, (
            f"b2bua_escaped_exceptions_total is {escaped:g}: an exception escaped into the event loop\n"
            f"{self.output_tail()}"
        )
        self.wait_metric("b2bua_active_calls", 0, timeout=active_timeout)


# --------------------------------------------------------------------------
# SIPp through pysipp

# exit codes SIPp documents
SIPP_EXIT = {
    0: "all calls were successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    -1: "fatal error",
    -2: "fatal error binding a socket",
    255: "fatal: command/scenario error, or the global -timeout was reached",
}


@dataclasses.dataclass
class AgentResult:
    role: str
    cmd: str
    returncode: int | None
    stderr: str
    screen_file: Path
    error_file: Path
    message_file: Path

    def stat(self, label: str) -> int | None:
        """Cumulative value of a line of SIPp's final statistics screen, e.g. "Successful call"."""
        try:
            text = self.screen_file.read_text(errors="replace")
        except FileNotFoundError:
            return None
        value = None
        for line in text.splitlines():
            if line.strip().startswith(label):
                cells = [c.strip() for c in line.split("|")]
                if len(cells) >= 3 and cells[-1].isdigit():
                    value = int(cells[-1])  # keep the last (final) screen
        return value

    def describe(self, max_chars: int = 5000) -> str:
        def tail(path: Path) -> str:
            try:
                data = path.read_text(errors="replace")
            except FileNotFoundError:
                return "(none)"
            return data if len(data) <= max_chars else "...\n" + data[-max_chars:]

        code = self.returncode
        meaning = SIPP_EXIT.get(code, "unknown") if code is not None else "still running"
        return (
            f"=== {self.role}: exit code {code} ({meaning})\n"
            f"command: {self.cmd}\n"
            f"--- stderr ---\n{self.stderr.strip()}\n"
            f"--- errors ({self.error_file}) ---\n{tail(self.error_file)}\n"
            f"--- screen ({self.screen_file}) ---\n{tail(self.screen_file)}\n"
            f"--- messages: {self.message_file} ---"
        )


_TRACE_RE = re.compile(
    r"(?:-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)[ \t]*\n)?"
    r"(UDP|TCP|TLS|SCTP) message (sent|received) (?:\((\d+) bytes\)|\[(\d+)\] bytes)\s*:\s*\n+(.*?)(?=\n-{20,} |\Z)",
    re.S,
)


@dataclasses.dataclass
class TracedMessage:
    transport: str
    direction: str  # "sent" | "received"
    size: int
    text: str
    at: datetime.datetime | None = None  # when SIPp traced it (the agents share this machine's clock)

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def method(self) -> str | None:
        word = self.first_line.split(" ", 1)[0]
        return None if word.startswith("SIP/") else word

    def header(self, name: str) -> str | None:
        m = re.search(rf"(?im)^{re.escape(name)}\s*:\s*(.*?)\s*$", self.text)
        return m.group(1) if m else None


def traced_messages(message_file: Path) -> list[TracedMessage]:
    """Messages from a SIPp ``-trace_msg`` file, in order."""
    text = Path(message_file).read_text(errors="replace")
    return [
        TracedMessage(m.group(2), m.group(3), int(m.group(4) or m.group(5)), m.group(6).strip("\n"),
                      datetime.datetime.fromisoformat(m.group(1)) if m.group(1) else None)
        for m in _TRACE_RE.finditer(text)
    ]


class SippFailure(AssertionError):
    pass


@dataclasses.dataclass
class PairResult:
    uas: AgentResult
    uac: AgentResult

    def describe(self) -> str:
        return self.uac.describe() + "\n" + self.uas.describe()


def _make_agent(role: str, scen: str, workdir: Path, host: str = LOOPBACK, **opts):
    import pysipp  # imported lazily: only the SIPp tests need it

    name = Path(scen).stem
    prefix = workdir / f"{name}"
    files = dict(
        screen_file=str(prefix) + "_screen.log",
        error_file=str(prefix) + "_errors.log",
        message_file=str(prefix) + "_messages.log",
        log_file=str(prefix) + "_logs.log",
        calldebug_file=str(prefix) + "_calldebug.log",
    )
    for f in files.values():
        Path(f).unlink(missing_ok=True)
    factory = pysipp.server if role == "uas" else pysipp.client
    agent = factory(
        scen_file=str(SCENARIO_DIR / scen),
        local_host=host,
        media_addr=host,
        trace_message=True,
        trace_error=True,
        trace_calldebug=True,
        trace_screen=True,
        timeout_error=True,
        **files,
        **opts,
    )
    return agent, files


class _StdinPipeSubprocess:
    """Stands in for the ``subprocess`` module inside pysipp's PopenRunner.

    SIPp reads keyboard commands from stdin: at end-of-file it starts a soft
    quit and soon exits with status 0 *without finishing its calls* (a false
    pass). pysipp lets SIPp inherit our stdin (often /dev/null under pytest),
    so give each SIPp a pipe that stays open and silent while it runs.
    (``-nostdin`` is avoided: SIPp 3.6 can crash with it in the foreground.)
    """

    PIPE = subprocess.PIPE

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 - mirrors subprocess.Popen
        kwargs.setdefault("stdin", subprocess.PIPE)
        return subprocess.Popen(*args, **kwargs)


def _launch(agent, timeout: float):
    """Start one agent through pysipp without blocking; returns its runner."""
    from pysipp import launch

    runner = launch.PopenRunner(subprocmod=_StdinPipeSubprocess)
    agent(block=False, timeout=timeout, runner=runner, raise_exc=False)
    return runner


def _collect(role: str, runner, files: dict, timeout: float) -> AgentResult:
    from pysipp import launch

    try:
        procs = runner.get(timeout=timeout)
    except launch.TimeoutError:
        procs = runner._procs
    # make sure nothing is left running (SIGUSR1 was tried by pysipp; escalate)
    for _cmd, proc in list(procs.items()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    ((cmd, proc),) = procs.items()
    if runner._waiter is not None:
        runner._waiter.join(timeout=5)
    streams = getattr(proc, "streams", None)
    stderr = ""
    if streams is not None and streams.stderr:
        stderr = streams.stderr.decode("utf-8", "replace")
    # SIPp prints this on every exit on some kernels; it is noise
    stderr = "\n".join(line for line in stderr.splitlines() if "Failed to delete FD from epoll" not in line)
    return AgentResult(
        role=role,
        cmd=cmd,
        returncode=proc.returncode,
        stderr=stderr,
        screen_file=Path(files["screen_file"]),
        error_file=Path(files["error_file"]),
        message_file=Path(files["message_file"]),
    )


def _kill_all(runners) -> None:
    for runner in runners:
        for proc in runner._procs.values():
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def run_sipp_pair(
    daemon: Daemon,
    uas: str,
    uac: str,
    workdir: Path,
    *,
    a_transport: str = "u1",
    b_transport: str = "u1",
    calls: int = 1,
    rate: float = 10,
    limit: int | None = None,
    pause_ms: int = 200,
    timeout_s: int = 20,
    recv_timeout_ms: int = 5000,
    uas_opts: Mapping | None = None,
    uac_opts: Mapping | None = None,
    check: bool = True,
) -> PairResult:
    """Run ``uas`` on the daemon's next hop, then ``uac`` against the daemon.

    Transports are SIPp's ``-t`` values (``u1`` UDP, ``t1`` TCP). Both agents
    stop after ``calls`` calls and are killed after ``timeout_s`` seconds.
    With ``check`` a failure raises ``SippFailure`` carrying SIPp's output.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    limit = limit or calls
    if daemon.direct:
        a_transport = b_transport  # no transport bridging without the daemon
    common = dict(
        call_count=calls,
        limit=limit,
        recv_timeout=recv_timeout_ms,
        timeout=f"{timeout_s}s",
        pause_duration=pause_ms,
    )
    uas_agent, uas_files = _make_agent(
        "uas", uas, workdir, daemon.next_hop_host,
        local_port=daemon.next_hop_port,
        media_port=free_port_block(),
        transport=b_transport,
        rate=rate,
        **common, **(uas_opts or {}),
    )  # fmt: skip
    uac_agent, uac_files = _make_agent(
        "uac", uac, workdir,
        local_port=free_port(),
        media_port=free_port_block(),
        transport=a_transport,
        destaddr=(LOOPBACK, daemon.sip_port),
        rate=rate,
        **common, **(uac_opts or {}),
    )  # fmt: skip

    wall = timeout_s + 5
    runners = []
    try:
        uas_runner = _launch(uas_agent, wall)
        runners.append(uas_runner)
        try:
            (uas_proc,) = uas_runner._procs.values()
            proto = "tcp" if b_transport.startswith("t") else "udp"
            wait_port_bound(daemon.next_hop_port, proto, timeout=5, alive=lambda: uas_proc.poll() is None)
        except Exception:
            uas_result = _collect("uas", uas_runner, uas_files, timeout=1)
            raise SippFailure("UAS did not start listening\n" + uas_result.describe()) from None

        uac_runner = _launch(uac_agent, wall)
        runners.append(uac_runner)
        uac_result = _collect("uac", uac_runner, uac_files, timeout=wall)
        # the UAS finishes on its own after its last call; give it a moment, then stop it
        uas_grace = 5 if uac_result.returncode == 0 else 1
        uas_result = _collect("uas", uas_runner, uas_files, timeout=uas_grace)
    finally:
        _kill_all(runners)  # whatever happened (including the per-test alarm), leave no SIPp running

    result = PairResult(uas=uas_result, uac=uac_result)
    if check:
        problems = [p for r in (uac_result, uas_result) for p in agent_problems(r, calls)]
        if problems:
            raise SippFailure(
                "SIPp reported failure: "
                + "; ".join(problems)
                + "\n"
                + result.describe()
                + ("" if daemon.direct else "\n" + daemon.output_tail(3000))
            )
    return result


# --------------------------------------------------------------------------
# three SIPp agents: a call that a transfer moves to a third party


@dataclasses.dataclass
class TrioResult:
    target: AgentResult  # the transfer target's UAS (reached through a routing rule)
    uas: AgentResult  # the callee's UAS (the daemon's next hop)
    uac: AgentResult  # the caller's UAC

    @property
    def agents(self) -> tuple[AgentResult, AgentResult, AgentResult]:
        return (self.uac, self.uas, self.target)

    def describe(self) -> str:
        return "\n".join(r.describe() for r in self.agents)


def agent_problems(result: AgentResult, calls: int) -> list[str]:
    """What is wrong with one agent's run, given the number of calls it should have completed.

    ``calls=0`` means the agent must have been left alone: nothing received, no call at all."""
    problems = []
    if result.returncode != 0:
        problems.append(f"{result.role} exit code {result.returncode}")
    ok, failed = result.stat("Successful call"), result.stat("Failed call")
    if ok is None or failed is None:
        problems.append(f"{result.role} left no final statistics screen")
    if failed:
        problems.append(f"{result.role} failed calls: {failed}")
    if ok is not None and ok != calls:
        problems.append(f"{result.role} successful calls: {ok}/{calls}")
    if calls == 0:
        try:
            received = [t.first_line for t in traced_messages(result.message_file) if t.direction == "received"]
        except FileNotFoundError:
            received = []
        if received:
            problems.append(f"{result.role} should have received nothing, got: {received}")
    return problems


def run_sipp_trio(
    daemon: Daemon,
    target: str,
    uas: str,
    uac: str,
    workdir: Path,
    *,
    target_port: int,
    target_calls: int = 1,
    transport: str = "u1",
    rate: float = 10,
    pause_ms: int = 200,
    timeout_s: int = 20,
    recv_timeout_ms: int = 5000,
    target_opts: Mapping | None = None,
    uas_opts: Mapping | None = None,
    uac_opts: Mapping | None = None,
    check: bool = True,
) -> TrioResult:
    """One call through the daemon with a third agent standing by: ``target``, a UAS on ``target_port``.

    The daemon must route the target's user to ``127.0.0.1:target_port`` (a ``routing.rules`` entry of
    its config file, chosen before it starts). The two UAS are started first, each only once its
    socket is bound, then the UAC; every agent runs one call (``target_calls=0``: the target must
    receive nothing and is stopped once the others are done). All three are killed after
    ``timeout_s`` + 5 seconds at the latest. Files go to ``workdir/{target,uas,uac}``. With ``check`` a
    failure of any agent raises ``SippFailure`` carrying the three SIPp outputs and the daemon's log.
    ``*_opts`` are extra pysipp options per agent, overriding the common ones (e.g. ``pause_duration``).
    """
    if daemon.direct:
        raise ValueError("a transfer needs the daemon: run_sipp_trio has no direct mode")
    workdir = Path(workdir)
    proto = "tcp" if transport.startswith("t") else "udp"
    common = dict(
        call_count=1,
        limit=1,
        recv_timeout=recv_timeout_ms,
        timeout=f"{timeout_s}s",
        pause_duration=pause_ms,
        rate=rate,
        transport=transport,
    )

    def agent(role: str, scen: str, port: int, opts: Mapping | None, **more):
        where = workdir / role
        where.mkdir(parents=True, exist_ok=True)
        kwargs = {**common, **more, "local_port": port, "media_port": free_port_block(), **(opts or {})}
        return _make_agent("uac" if role == "uac" else "uas", scen, where, **kwargs)

    specs = [
        ("target", *agent("target", target, target_port, target_opts)),
        ("uas", *agent("uas", uas, daemon.next_hop_port, uas_opts)),
    ]
    uac_agent, uac_files = agent("uac", uac, free_port(), uac_opts, destaddr=(LOOPBACK, daemon.sip_port))

    wall = timeout_s + 5
    deadline = time.monotonic() + wall
    runners: list = []
    results: dict[str, AgentResult] = {}
    try:
        servers = []
        for role, server, files in specs:
            runner = _launch(server, wall)
            runners.append(runner)
            servers.append((role, runner, files))
            (proc,) = runner._procs.values()
            port = target_port if role == "target" else daemon.next_hop_port
            try:
                wait_port_bound(port, proto, timeout=5, alive=lambda p=proc: p.poll() is None)
            except Exception:
                failed = _collect(role, runner, files, timeout=1)
                raise SippFailure(f"{role} did not start listening\n" + failed.describe()) from None

        uac_runner = _launch(uac_agent, wall)
        runners.append(uac_runner)
        results["uac"] = _collect("uac", uac_runner, uac_files, timeout=wall)
        uac_ok = results["uac"].returncode == 0
        for role, runner, files in servers:
            if role == "target" and target_calls == 0:
                runner.stop()  # SIGUSR1: SIPp's soft quit; with no call it exits at once
                results[role] = _collect(role, runner, files, timeout=5)
                continue
            # A UAS finishes on its own after its call (maybe after the UAC, e.g. a transferee
            # that hangs up last); give it the time left, then stop it.
            left = min(10.0, max(1.0, deadline - time.monotonic())) if uac_ok else 1.0
            results[role] = _collect(role, runner, files, timeout=left)
    finally:
        _kill_all(runners)  # whatever happened (including the per-test alarm), leave no SIPp running

    result = TrioResult(target=results["target"], uas=results["uas"], uac=results["uac"])
    if check:
        problems = [
            *agent_problems(result.uac, 1),
            *agent_problems(result.uas, 1),
            *agent_problems(result.target, target_calls),
        ]
        if problems:
            raise SippFailure(
                "SIPp reported failure: "
                + "; ".join(problems)
                + "\n"
                + result.describe()
                + "\n"
                + daemon.output_tail(3000)
            )
    return result


# --------------------------------------------------------------------------
# raw SIP over a loopback socket


@dataclasses.dataclass
class SipResponse:
    raw: bytes
    code: int
    reason: str
    headers: dict[str, list[str]]

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_response(data: bytes) -> SipResponse:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    m = re.match(r"^SIP/2\.0 (\d{3}) ?(.*)$", lines[0])
    if not m:
        raise ValueError(f"not a SIP response: {lines[0]!r}")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return SipResponse(raw=data, code=int(m.group(1)), reason=m.group(2), headers=headers)


class RawSip:
    """A UDP (or TCP) socket on 127.0.0.1 for hand-made SIP messages to the daemon.

    ``host``: the loopback address it sends from (127.0.0.2 is another signalling peer)."""

    def __init__(self, port: int, transport: str = "udp", host: str = LOOPBACK):
        self.dest = (LOOPBACK, port)
        self.transport = transport
        self.host = host
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, 0))
        else:
            self.sock = socket.create_connection(self.dest, timeout=3, source_address=(host, 0))
        self.local_port = self.sock.getsockname()[1]
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(
        self,
        method: str,
        uri: str | None = None,
        *,
        version: str = "SIP/2.0",
        headers: Mapping[str, str | None] | None = None,
        body: bytes = b"",
        content_length: int | None = None,
        call_id: str | None = None,
        cseq: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Build a request. ``headers`` override/add; a value of None removes that header."""
        branch = "z9hG4bK-raw-" + uuid.uuid4().hex[:16]
        tport = "UDP" if self.transport == "udp" else "TCP"
        base: dict[str, str | None] = {
            "Via": f"SIP/2.0/{tport} {self.host}:{self.local_port};branch={branch};rport",
            "Max-Forwards": "70",
            "From": f"<sip:raw@{self.host}:{self.local_port}>;tag=raw{uuid.uuid4().hex[:8]}",
            "To": f"<sip:service@{LOOPBACK}:{self.dest[1]}>",
            "Call-ID": call_id or f"raw-{uuid.uuid4().hex}@{self.host}",
            "CSeq": cseq or f"1 {method}",
            "Contact": f"<sip:raw@{self.host}:{self.local_port}>",
        }
        for k, v in (headers or {}).items():
            base[k] = v
        uri = uri or f"sip:service@{LOOPBACK}:{self.dest[1]}"
        lines = [f"{method} {uri} {version}"]
        lines += [f"{k}: {v}" for k, v in base.items() if v is not None]
        length = len(body) if content_length is None else content_length
        lines.append(f"Content-Length: {length}")
        msg = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        info = {k: v for k, v in base.items() if v is not None}
        info["_uri"] = uri
        info["_method"] = method
        return msg, info

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.dest)
        else:
            self.sock.sendall(data)

    def recv_response(self, timeout: float = 2.0, skip_provisional: bool = True) -> SipResponse | None:
        """Next response (1xx skipped by default), or None if nothing arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.transport == "udp":
                    data, _addr = self.sock.recvfrom(65535)
                else:
                    data = self._recv_tcp_message()
            except TimeoutError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED,):
                    continue
                raise
            if not data.startswith(b"SIP/2.0 "):
                continue  # a request to us; ignore
            resp = parse_response(data)
            if skip_provisional and resp.code < 200:
                continue
            return resp

    def _recv_tcp_message(self) -> bytes:
        while True:
            if b"\r\n\r\n" in self._buf:
                head, rest = self._buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                if len(rest) >= length:
                    self._buf = rest[length:]
                    return head + b"\r\n\r\n" + rest[:length]
            chunk = self.sock.recv(65535)
            if not chunk:
                raise TimeoutError("connection closed")
            self._buf += chunk

    def ack_for(self, info: Mapping[str, str], resp: SipResponse) -> None:
        """ACK a non-2xx final response to an INVITE we sent (same branch, To tag from the response)."""
        to = resp.header("to") or info["To"]
        lines = [
            f"ACK {info['_uri']} SIP/2.0",
            f"Via: {info['Via']}",
            "Max-Forwards: 70",
            f"From: {info['From']}",
            f"To: {to}",
            f"Call-ID: {info['Call-ID']}",
            f"CSeq: {info['CSeq'].split()[0]} ACK",
            "Content-Length: 0",
        ]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
