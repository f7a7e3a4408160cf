"""The ng datagram layer (cookies, reply cache, malformed input) and the relay's settings."""

from __future__ import annotations

import pytest

from rtp_relay import bencode
from rtp_relay.config import ConfigError, load_settings
from rtp_relay.control import ControlCore
from rtp_relay.ports import PortAllocator
from rtp_relay.session import Relay, RelayConfig

from .test_rtp_session import A, FakeOpener, sdp

CLIENT = ("127.0.0.1", 40000)


@pytest.fixture
def core() -> ControlCore:
    relay = Relay(RelayConfig("127.0.0.1"), PortAllocator(30000, 30019), FakeOpener())
    return ControlCore(relay, cache_ttl=30.0, cache_max=4)


def request(core: ControlCore, cookie: bytes, msg: object, now: float = 0.0, addr: object = CLIENT) -> dict:
    out = core.receive(cookie + b" " + bencode.encode(msg), addr, now)
    assert out is not None
    got_cookie, _, body = out.partition(b" ")
    assert got_cookie == cookie
    return bencode.decode(body)


def test_ping(core: ControlCore) -> None:
    assert request(core, b"1", {"command": "ping"}) == {"result": b"pong"}


def test_retransmitted_offer_is_answered_from_cache(core: ControlCore) -> None:
    offer = {"command": "offer", "call-id": "c", "from-tag": "x", "sdp": sdp(A, 4000)}
    first = request(core, b"abc", offer)
    again = request(core, b"abc", offer, now=5.0)
    assert first == again and core.retransmissions == 1
    assert core.relay.ports.ports_in_use == 4  # executed once
    # a retransmitted delete does not turn into "Unknown call-id"
    d1 = request(core, b"del", {"command": "delete", "call-id": "c"}, now=6.0)
    d2 = request(core, b"del", {"command": "delete", "call-id": "c"}, now=7.0)
    assert d1["result"] == d2["result"] == b"ok"


def test_cache_expires_and_is_per_client(core: ControlCore) -> None:
    offer = {"command": "offer", "call-id": "c", "from-tag": "x", "sdp": sdp(A, 4000)}
    request(core, b"k", offer)
    request(core, b"k", {"command": "ping"}, addr=("127.0.0.1", 40001))  # other client, same cookie
    assert core.retransmissions == 0
    assert request(core, b"k", {"command": "ping"}, now=31.0) == {"result": b"pong"}  # expired: executed


def test_cache_is_bounded(core: ControlCore) -> None:
    for i in range(10):
        request(core, str(i).encode(), {"command": "ping"})
    assert len(core) == 4


@pytest.mark.parametrize("data, reason", [
    (b"c1 not-bencode", b"Could not decode"),
    (b"c1 i42e", b"not a dictionary"),
    (b"c1 d7:command4:nopee", b"Unrecognized command"),
    (b"c1 d7:command5:offere", b"No call-id"),
    (b"c1 ", b"empty input"),
])
def test_bad_input_is_answered_with_error(core: ControlCore, data: bytes, reason: bytes) -> None:
    out = core.receive(data, CLIENT, 0.0)
    assert out is not None and out.startswith(b"c1 ")
    reply = bencode.decode(out[3:])
    assert reply["result"] == b"error" and reason in reply["error-reason"]


def test_no_cookie_is_dropped(core: ControlCore) -> None:
    assert core.receive(b"nocookie", CLIENT, 0.0) is None
    assert core.receive(b" d7:command4:pinge", CLIENT, 0.0) is None
    assert core.malformed["no_cookie"] == 2


def test_settings_defaults_and_parsing() -> None:
    s = load_settings({"ports": "30000-30999", "control": "127.0.0.1:2223", "http": "127.0.0.1:9191"})
    assert s.port_range == (30000, 30999) and s.control_addr == ("127.0.0.1", 2223)
    assert s.http_addr == ("127.0.0.1", 9191) and s.sdp_address == "127.0.0.1"
    assert s.control_fd is None and s.exit_with_parent is False
    s = load_settings({"control_fd": "7", "exit_with_parent": True})
    assert s.control_fd == 7 and s.exit_with_parent


@pytest.mark.parametrize("values, field", [
    ({"ports": "30000"}, "ports"),
    ({"ports": "40000-30000"}, "ports"),
    ({"control": "localhost:2223"}, "control"),
    ({"control": "127.0.0.1:0"}, "control"),
    ({"address": "nope"}, "address"),
    ({"media_timeout": 0}, "media_timeout"),
    ({"log_level": "loud"}, "log_level"),
    ({"address": "0.0.0.0"}, "advertised_address"),
    ({"bogus": 1}, "bogus"),
    ({"control_fd": -1}, "control_fd"),
    ({"control_fd": 3, "control": "127.0.0.1:2223"}, "exclusive"),
])
def test_settings_errors_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(values)
