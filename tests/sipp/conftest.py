"""Fixtures for the end-to-end SIPp tests (see harness.py)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import rtp
from .harness import SIPP_BIN, Daemon, DaemonError, PairResult, direct_mode, run_sipp_pair
from .transfers import TransferRig, start_rig

# every test in this directory gets this wall-clock bound unless it says otherwise
DEFAULT_TEST_TIMEOUT_S = 45
BIND_ATTEMPTS = 3  # a daemon that lost a port race is started again on new ports


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "time_limit(seconds): wall-clock bound for one SIPp test (default 45 s)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.sipp)


@pytest.fixture(autouse=True)
def _sipp_available() -> None:
    if not Path(SIPP_BIN).exists() and not shutil.which("sipp"):
        pytest.fail("SIPp is not installed (apt-get install sip-tester)")


class _TestTimeout(BaseException):
    """Raised from SIGALRM; BaseException so that no `except Exception` swallows it."""


@pytest.fixture(autouse=True)
def _time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("time_limit")
    seconds = float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT_S

    def on_alarm(signum, frame):
        raise _TestTimeout(f"test exceeded its {seconds:g}s time limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``start_daemon(next_hop_transport="udp", env={...})`` -> a running Daemon.

    At teardown every daemon started must show no escaped exception and no
    active call, and must exit 0 on SIGTERM; it is killed in any case. A daemon that
    could not bind a port the harness had just found free (another process on the
    machine took it in between) is started again on new ports, up to BIND_ATTEMPTS times.
    """
    daemons: list[Daemon] = []

    def factory(**kwargs) -> Daemon:
        for attempt in range(BIND_ATTEMPTS):
            d = Daemon(tmp_path / f"daemon{len(daemons)}-{attempt}", direct=direct_mode(), **kwargs)
            try:
                d.start()
            except DaemonError as exc:
                d.kill()
                if "could not bind" in str(exc) and attempt + 1 < BIND_ATTEMPTS:
                    continue
                raise
            daemons.append(d)
            return d
        raise AssertionError("unreachable")

    yield factory

    try:
        for d in daemons:
            d.check_clean()
            d.stop()
    finally:
        for d in daemons:
            d.kill()


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon whose next hop is UDP, with default settings."""
    return start_daemon()


@pytest.fixture
def daemon_tcp_next_hop(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(next_hop_transport="tcp")


@pytest.fixture
def sipp_pair(tmp_path: Path) -> Callable[..., PairResult]:
    """``sipp_pair(daemon, "uas_x.xml", "uac_x.xml", a_transport="u1", b_transport="t1", ...)``."""
    runs = [0]

    def run(daemon: Daemon, uas: str, uac: str, **kwargs) -> PairResult:
        runs[0] += 1
        return run_sipp_pair(daemon, uas, uac, tmp_path / f"sipp{runs[0]}", **kwargs)

    return run


@pytest.fixture
def needs_daemon() -> None:
    if direct_mode():
        pytest.skip("checks daemon behaviour; not meaningful in B2BUA_SIPP_DIRECT mode")


@pytest.fixture
def raw_sockets() -> None:
    """SIPp's pcap player and the loopback sniffer (tests/sipp/rtp.py) need root or CAP_NET_RAW."""
    if not rtp.raw_sockets_available():
        pytest.skip("SIPp's pcap player and the loopback sniffer need root or CAP_NET_RAW")


@pytest.fixture
def rig(start_daemon: Callable[..., Daemon], tmp_path: Path, needs_daemon) -> Callable[..., TransferRig]:
    """``rig(extra_toml, rules={user prefix: next hop})``: a daemon routing "carol" (and "900...") to
    the target agent's port (transfers.start_rig). A test module may define its own ``rig``."""

    def make(extra_toml: str = "", rules: dict[str, str] | None = None) -> TransferRig:
        return start_rig(start_daemon, tmp_path, extra_toml, rules)

    return make
