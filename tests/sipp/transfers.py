"""What the SIPp transfer tests share: a daemon routing the target, and readers of SIPp's traces.

How this works: every transfer test runs three SIPp agents (`harness.run_sipp_trio`) against a
daemon whose config routes the users `carol` (and `900...`, for the denied-target tests) to the
target agent's port. `start_rig` writes that config (plus whatever TOML a test adds) and starts the
daemon through conftest's `start_daemon`, so every daemon gets the same teardown checks. The trace
readers turn an agent's `-trace_msg` file into what the tests assert on: the messages it received
or sent without retransmissions, the sequence it heard, tags, sipfrag bodies, SDP lines.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from pathlib import Path

from . import rtp
from .harness import AgentResult, Daemon, TracedMessage, TrioResult, free_port, run_sipp_trio, traced_messages


@dataclasses.dataclass
class TransferRig:
    daemon: Daemon
    target_port: int  # where the daemon sends calls for carol: the target agent's SIP port
    workdir: Path

    def run(self, target: str, uas: str, uac: str, **kwargs) -> TrioResult:
        return run_sipp_trio(self.daemon, target, uas, uac, self.workdir, target_port=self.target_port, **kwargs)

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.daemon.events()]

    def assert_on_relay(self, msg: TracedMessage) -> None:
        """The SDP of `msg` names one of this daemon's relay ports (the media is anchored)."""
        port = int(sdp_line(msg, "m").split()[1])
        relay = self.daemon.relay_ports
        assert port in relay, f"media not on a relay port ({relay}):\n{msg.text}"
        assert sdp_line(msg, "c") == "IN IP4 127.0.0.1", msg.text


def start_rig(start_daemon: Callable[..., Daemon], tmp_path: Path, extra_toml: str = "",
              rules: Mapping[str, str] | None = None) -> TransferRig:
    """A daemon routing "carol" and "900..." to a fresh target port, with `extra_toml` appended.

    `rules` adds routes of its own ({user prefix: next hop}, e.g. a port where nothing listens)."""
    target_port = free_port()
    hop = f"127.0.0.1:{target_port}"
    routes = {**(rules or {}), "carol": hop, "900": hop}
    config = tmp_path / "b2bua.toml"
    config.write_text(
        "[routing]\n"
        + "rules = ["
        + ", ".join(f'{{user_prefix = "{user}", next_hop = "{to}"}}' for user, to in routes.items())
        + "]\n\n"
        + extra_toml
    )
    return TransferRig(start_daemon(config_file=config), target_port, tmp_path / "sipp")


# -- reading the traces -----------------------------------------------------------------------------


def received(message_file: Path, what: str, direction: str = "received") -> list[TracedMessage]:
    """Messages an agent received (or sent) whose method (or ``"SIP/2.0 <code>"`` status) is
    ``what``, without retransmissions (the same first line, Via and CSeq again)."""
    out, seen = [], set()
    for t in traced_messages(message_file):
        if t.direction != direction:
            continue
        if t.method == what or (t.method is None and t.first_line.startswith(what)):
            key = (t.first_line, t.header("Via"), t.header("CSeq"))
            if key not in seen:
                seen.add(key)
                out.append(t)
    return out


def sent(message_file: Path, what: str) -> list[TracedMessage]:
    return received(message_file, what, "sent")


def heard(message_file: Path) -> list[str]:
    """What an agent received, in order, without retransmissions: methods, and "SIP/2.0 <code>"."""
    out, seen = [], set()
    for t in traced_messages(message_file):
        key = (t.first_line, t.header("Via"), t.header("CSeq"), t.header("To"))
        if t.direction == "received" and key not in seen:
            seen.add(key)
            out.append(t.method or t.first_line[:11])
    return out


def tag(header: str | None) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", header or "")
    assert m, header
    return m.group(1)


def sipfrag(notify: TracedMessage) -> str:
    return notify.text.rsplit("\n", 1)[-1].strip()


def sdp_line(msg: TracedMessage, kind: str) -> str:
    m = re.search(rf"(?m)^{kind}=(.*?)\s*$", msg.text)
    assert m, f"no {kind}= line in\n{msg.text}"
    return m.group(1)


def origin(msg: TracedMessage) -> tuple[str, int]:
    """(session id, version) of the o= line of a message's SDP."""
    fields = sdp_line(msg, "o").split()
    return fields[1], int(fields[2])


def local_port(cmd: str, option: str = "-p") -> int:
    """The SIP port of a SIPp agent, from its command line (``option="-mp"``: its first media port)."""
    m = re.search(rf"{option} '(\d+)'", cmd)
    assert m, cmd
    return int(m.group(1))


# -- media ------------------------------------------------------------------------------------------


# What the transferee (media.uac) and the target (media.uas) play once a transfer is done.
AFTER_TRANSFER = rtp.ScenarioMedia(uac=("rtp_a3.pcap",), uas=("rtp_b3.pcap",))


def assert_talking(sniffer: rtp.LoopbackSniffer, daemon: Daemon, one: AgentResult, other: AgentResult,
                   media: rtp.ScenarioMedia, left_out: AgentResult | None = None) -> None:
    """The RTP `one` and `other` played (`media.uac` and `media.uas`: what each plays) reached the
    other party, every packet exactly once, through relay ports only; none of it reached
    `left_out` (a released transferor, a replaced party)."""
    pair = types.SimpleNamespace(uac=one, uas=other)
    d = rtp.media_delivery(sniffer, pair, media)
    rtp.assert_media_delivered(d)
    relay = daemon.relay_ports
    for addr in (*d.media.a.peer, *d.media.b.peer):
        assert addr[0] == "127.0.0.1" and addr[1] in relay, d.describe()
    assert not set(d.media.a.peer) & set(d.media.b.own), d.describe()
    assert not set(d.media.b.peer) & set(d.media.a.own), d.describe()
    if left_out is not None:
        gone = rtp.side_media(left_out.message_file)
        reached = [x for x in sniffer.rtp() if any(x.dst == own for own in gone.own)]
        assert not reached, f"RTP reached {left_out.role}, who has left the call: {reached[:5]}"
