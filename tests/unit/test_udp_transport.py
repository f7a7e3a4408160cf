"""UdpTransport on a real loopback socket: datagrams in and out, and the receive buffer it asks for."""

from __future__ import annotations

import asyncio
from pathlib import Path

from b2bua.sip.address import Address
from b2bua.transport.udp import UdpTransport


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def test_datagrams_both_ways() -> None:
    async def scenario() -> None:
        got: list[tuple[bytes, Address]] = []
        a = await UdpTransport.listen("127.0.0.1", 0, lambda d, src: got.append((d, src)))
        b = await UdpTransport.listen("127.0.0.1", 0, lambda d, src: got.append((d, src)))
        port_a = a._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        port_b = b._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        b.send(b"OPTIONS", Address("udp", "127.0.0.1", port_a))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        a.close()
        b.close()
        assert got == [(b"OPTIONS", Address("udp", "127.0.0.1", port_b))]

    asyncio.run(scenario())


def test_the_receive_buffer_asked_for_is_granted_up_to_the_kernels_cap() -> None:
    async def scenario() -> None:
        asked = 1_048_576
        default = await UdpTransport.listen("127.0.0.1", 0, lambda d, src: None)
        bigger = await UdpTransport.listen("127.0.0.1", 0, lambda d, src: None, receive_buffer=asked)
        try:
            # Linux grants min(asked, net.core.rmem_max) and reports twice that (its bookkeeping).
            assert bigger.buffer_size == 2 * min(asked, rmem_max())
            assert bigger.buffer_size > default.buffer_size or rmem_max() * 2 <= default.buffer_size
        finally:
            default.close()
            bigger.close()

    asyncio.run(scenario())


def test_it_answers_every_call_the_loop_makes_of_a_datagram_protocol() -> None:
    """Not a subclass of asyncio.DatagramProtocol (it is compiled), so each method the loop may call
    must be its own: uvloop calls pause_writing when its send buffer fills, and a missing one
    would reach the loop's exception handler (counted as a bug)."""
    wanted = {name for name in dir(asyncio.DatagramProtocol) if not name.startswith("_")}
    assert wanted <= {name for name in dir(UdpTransport) if not name.startswith("_")}
    udp = UdpTransport(lambda data, source: None)
    udp.pause_writing()
    udp.resume_writing()
