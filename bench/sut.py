"""The systems under test: our daemon, Sippy B2BUA (two ways) and Kamailio, each on 127.0.0.1.

How this works: every system is described by a `Sut` (a name, how to start it) and started with
`started(sut, workdir)`, a context manager that binds it between a caller port (`sip_port`, where
SIPp's UAC sends) and a next hop (`next_hop_port`, where SIPp's UAS answers), waits until its SIP
socket is bound, and yields a `Running` whose `tree` measures the whole process tree. Every process
is started in a session of its own and its whole process group is killed on the way out, whatever
happened. The peers are installed by `ensure_peers()` into places that are the benchmark's only:
Sippy (PyPI `sippy`) into bench/.venv-peers, Kamailio from Debian with apt-get; the project's own
environment and dependencies are never touched.

Our daemon runs through tests/sipp/harness.Daemon (the same command line, environment and health
check as the end-to-end tests), at its production log level (info: one JSON line per call event).
Kamailio runs as a dialog-stateful proxy (dialog module, record_route) with two UDP workers; Sippy
runs with its message log off (SIPLOG_LVL=WARN), as the peers log nothing per message either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Tree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sipp.harness import LOOPBACK, Daemon, free_port, wait_port_bound  # noqa: E402

PEERS_VENV = ROOT / "bench" / ".venv-peers"
SIPPY_VERSION = "2.5.0"  # runs on Python 3.11 as is (checked: b2bua_simple and b2bua, 2.5.0)
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


@dataclass
class Sut:
    key: str  # short name in the JSON
    name: str  # name in the table
    kind: str  # ours | sippy_simple | sippy_b2bua | kamailio
    relay: bool = False  # ours: the embedded RTP relay on
    env: dict[str, str] = field(default_factory=dict)  # ours: extra B2BUA_* settings


OURS = Sut("ours", "b2bua (relay off)", "ours")
OURS_RELAY = Sut("ours_relay", "b2bua (embedded relay on)", "ours", relay=True)
SIPPY_SIMPLE = Sut("sippy_simple", "Sippy b2bua_simple", "sippy_simple")
SIPPY_B2BUA = Sut("sippy_b2bua", "Sippy b2bua (static route)", "sippy_b2bua")
KAMAILIO = Sut("kamailio", "Kamailio (dialog-stateful proxy)", "kamailio")


@dataclass
class Running:
    sut: Sut
    sip_port: int
    next_hop_port: int
    tree: Tree
    daemon: Daemon | None = None  # ours only: /metrics

    def active_calls(self) -> float | None:
        if self.daemon is None:
            return None
        return self.daemon.metrics().get("b2bua_active_calls")

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the system holds no call (ours: its gauge; peers: a short pause)."""
        if self.daemon is None:
            time.sleep(1.0)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.metrics().get("b2bua_active_calls") == 0:
                return
            time.sleep(0.2)


# -- installing the peers --------------------------------------------------------------------------


def ensure_peers(log=print) -> dict[str, str]:
    """Install what the peers need, once; returns {peer: problem} for those that cannot run."""
    problems: dict[str, str] = {}
    py = PEERS_VENV / "bin" / "python"
    if not (PEERS_VENV / "bin" / "b2bua_simple").exists():
        log(f"installing sippy=={SIPPY_VERSION} into {PEERS_VENV} (bench only)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True, timeout=120)
            subprocess.run([str(py), "-m", "pip", "install", "-q", f"sippy=={SIPPY_VERSION}", "py-spy"],
                           check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            problems["sippy"] = f"pip install sippy=={SIPPY_VERSION} failed: {exc}"
    if shutil.which("kamailio") is None:
        log("installing kamailio from Debian (apt-get)")
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-q"], check=True, timeout=600, env=env,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "kamailio"], check=True, timeout=900, env=env,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            problems["kamailio"] = f"apt-get install kamailio failed: {exc}"
    return problems


def py_spy() -> Path | None:
    path = PEERS_VENV / "bin" / "py-spy"
    return path if path.exists() else None


# -- starting them ---------------------------------------------------------------------------------

KAMAILIO_CFG = """#!KAMAILIO
# A dialog-stateful, record-routing proxy: every call to the next hop, in-dialog requests along
# the route set. Written by bench/sut.py for the benchmark only.
debug=1
log_stderror=yes
children={children}
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "dialog.so"
modparam("rr", "append_fromtag", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();
    if (is_method("INVITE")) {{
        dlg_manage();
        record_route();
    }}
    $du = "sip:127.0.0.1:{next_hop}";
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}
"""


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def started(sut: Sut, workdir: Path, *, config_toml: str = "", env: dict[str, str] | None = None
            ) -> Iterator[Running]:
    workdir.mkdir(parents=True, exist_ok=True)
    if sut.kind == "ours":
        yield from _ours(sut, workdir, config_toml, env or {})
        return
    sip_port, next_hop = free_port(), free_port()
    penv = dict(os.environ)
    if sut.kind == "sippy_simple":
        cmd = [str(PEERS_VENV / "bin" / "b2bua_simple"), "-f", "-l", LOOPBACK, "-p", str(sip_port),
               "-n", f"{LOOPBACK}:{next_hop}", "-L", str(workdir / "sippy.log")]
        penv.update(SIPLOG_LVL="WARN", SIPLOG_BEND="stderr")
    elif sut.kind == "sippy_b2bua":
        cmd = [str(PEERS_VENV / "bin" / "b2bua"), "--foreground=on", f"--sip_address={LOOPBACK}",
               f"--sip_port={sip_port}", f"--static_route={LOOPBACK}:{next_hop}",
               "--auth_enable=off", "--acct_enable=off",  # no RADIUS: it would start radiusclient helpers
               f"--logfile={workdir / 'sippy.log'}", f"--b2bua_socket=udp:{LOOPBACK}:{free_port()}"]
        penv.update(SIPLOG_LVL="WARN", SIPLOG_BEND="stderr")
    elif sut.kind == "kamailio":
        cfg = workdir / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG.format(port=sip_port, next_hop=next_hop, children=2, modules=KAMAILIO_MODULES))
        cmd = ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "256", "-M", "16", "-P", str(workdir / "k.pid"),
               "-Y", str(workdir), "-w", str(workdir)]
    else:
        raise ValueError(sut.kind)
    with open(workdir / f"{sut.key}.out", "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=penv, cwd=workdir, start_new_session=True)
    try:
        wait_port_bound(sip_port, "udp", timeout=15, alive=lambda: proc.poll() is None)
        time.sleep(0.5)  # Kamailio forks its workers after binding
        if proc.poll() is not None:
            raise RuntimeError(f"{sut.name} exited with {proc.returncode}: see {workdir / (sut.key + '.out')}")
        yield Running(sut, sip_port, next_hop, Tree(proc.pid))
    finally:
        _kill_group(proc)


def _ours(sut: Sut, workdir: Path, config_toml: str, env: dict[str, str]) -> Iterator[Running]:
    settings = {
        "B2BUA_MEDIA__ENABLED": "true" if sut.relay else "false",
        "B2BUA_CALLS__MAX_CALLS": "100000",
        **sut.env,
        **env,
    }
    if sut.relay:
        # Below the ephemeral range, where the tests' relays take their blocks; the relay skips a
        # pair someone else holds. 10,000 ports: 2,500 calls with one stream.
        settings.setdefault("B2BUA_MEDIA__EMBEDDED__PORTS", "20000-29999")
    config = None
    if config_toml:
        config = workdir / "b2bua.toml"
        config.write_text(config_toml)
    daemon = Daemon(workdir, env=settings, config_file=config, relay_block=64)
    try:
        daemon.start(ready_timeout=20)
        assert daemon.proc is not None
        yield Running(sut, daemon.sip_port, daemon.next_hop_port, Tree(daemon.proc.pid), daemon)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            with contextlib.suppress(Exception):
                daemon.stop(timeout=15)
        daemon.kill()
