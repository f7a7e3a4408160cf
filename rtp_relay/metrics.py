"""Prometheus metrics of the relay, computed at scrape time from the plain counters.

How this works: the hot path only increments ints on `RelayPort`s. A scrape walks the live ports
(a few thousand attribute reads for a thousand calls) and adds the `Totals` kept for ports already
released, so the counters are monotonic across calls and cost nothing per packet. `packets` and
`bytes` with `direction="in"` are what the relay accepted from latched sources; `direction="out"`
is what it forwarded (accepted minus undeliverable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from .control import ControlCore
from .session import Relay, Totals


class RelayCollector:
    def __init__(self, relay: Relay, control: ControlCore, escaped: Callable[[], int]) -> None:
        self.relay = relay
        self.control = control
        self.escaped = escaped

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        kinds = {k: Totals(t.packets, t.bytes, t.dropped, t.undeliverable, t.errors) for k, t in relay.totals.items()}
        for port in relay.live_ports():
            kinds[port.kind].add(port)
        allocator = relay.ports

        g = GaugeMetricFamily("rtp_relay_ports_in_use", "RTP and RTCP ports bound by calls")
        g.add_metric([], allocator.ports_in_use)
        yield g
        g = GaugeMetricFamily("rtp_relay_ports_capacity", "RTP and RTCP ports in the configured range")
        g.add_metric([], 2 * allocator.capacity)
        yield g
        g = GaugeMetricFamily("rtp_relay_sessions", "Calls known to the relay")
        g.add_metric([], len(relay.calls))
        yield g
        g = GaugeMetricFamily("rtp_relay_sessions_timed_out", "Calls whose media timed out")
        g.add_metric([], sum(1 for c in relay.calls.values() if c.timed_out))
        yield g

        packets = CounterMetricFamily("rtp_relay_packets", "Datagrams relayed", labels=["direction", "kind"])
        octets = CounterMetricFamily("rtp_relay_bytes", "Bytes relayed", labels=["direction", "kind"])
        dropped = CounterMetricFamily("rtp_relay_dropped", "Datagrams dropped, by reason", labels=["reason", "kind"])
        for kind, t in kinds.items():
            packets.add_metric(["in", kind], t.packets)
            packets.add_metric(["out", kind], t.packets - t.undeliverable)
            octets.add_metric(["in", kind], t.bytes)
            octets.add_metric(["out", kind], t.bytes)  # approximate: undelivered bytes are not tracked
            dropped.add_metric(["hijack", kind], t.dropped)
            dropped.add_metric(["no_destination", kind], t.undeliverable)
            dropped.add_metric(["socket_error", kind], t.errors)
        yield packets
        yield octets
        yield dropped

        c = CounterMetricFamily("rtp_relay_control_requests", "ng requests answered", labels=["command", "result"])
        for (command, result), n in relay.commands.items():
            c.add_metric([command, result], n)
        yield c
        c = CounterMetricFamily("rtp_relay_control_retransmissions", "ng requests answered from the reply cache")
        c.add_metric([], self.control.retransmissions)
        yield c
        c = CounterMetricFamily("rtp_relay_control_malformed", "ng datagrams without a usable request",
                                labels=["kind"])
        for kind, n in self.control.malformed.items():
            c.add_metric([kind], n)
        yield c
        c = CounterMetricFamily("rtp_relay_media_timeouts", "Calls whose media timed out")
        c.add_metric([], relay.media_timeouts)
        yield c
        c = CounterMetricFamily("rtp_relay_calls_expired", "Timed-out calls deleted by the relay itself")
        c.add_metric([], relay.calls_expired)
        yield c
        c = CounterMetricFamily("rtp_relay_port_bind_failures", "Port pairs the OS refused to bind")
        c.add_metric([], allocator.bind_failures)
        yield c
        c = CounterMetricFamily("rtp_relay_escaped_exceptions", "Bugs: exceptions caught at the loop boundary")
        c.add_metric([], self.escaped() + relay.internal_errors)
        yield c


def make_registry(collector: RelayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
