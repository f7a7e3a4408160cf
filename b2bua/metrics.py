"""Prometheus metrics, read from plain counters at scrape time.

How this works: the hot path never touches prometheus_client. The core counts in plain Python ints
and dicts held by a `Stats` object (`stats.requests_in["INVITE"] += 1` costs one dict update); at
scrape time a custom collector turns the current values into metric families. That keeps per-message
cost to a few hundred nanoseconds and makes the numbers exactly what the core saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

TRANSFER_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)  # seconds
TRANSFER_KINDS = ("blind", "attended", "early", "deflection", "recall")
TRANSFER_RESULTS = ("completed", "failed", "abandoned", "bridge_failed")


@dataclass
class Stats:
    requests_in: Counter[str] = field(default_factory=Counter)
    requests_out: Counter[str] = field(default_factory=Counter)
    responses_in: Counter[int] = field(default_factory=Counter)
    responses_out: Counter[int] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)  # by result
    malformed: Counter[str] = field(default_factory=Counter)  # by kind
    media_events: Counter[str] = field(default_factory=Counter)  # relay_down, timeout, call_ended, ...
    transfers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, result)
    # Transfer durations (REFER to result) as histogram bucket counts, cumulative at scrape time.
    transfer_seconds: dict[str, list[float]] = field(default_factory=dict)  # kind -> [per-bucket..., sum]
    escaped_exceptions: int = 0
    tcp_connections_opened: int = 0

    def transfer_ended(self, kind: str, result: str, seconds: float) -> None:
        """Count one transfer and put its duration (REFER to result) in its histogram bucket."""
        self.transfers[(kind, result)] += 1
        counts = self.transfer_seconds.setdefault(kind, [0.0] * (len(TRANSFER_BUCKETS) + 2))
        for i, bound in enumerate(TRANSFER_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[len(TRANSFER_BUCKETS)] += 1  # beyond the last bound: counted only in +Inf
        counts[-1] += seconds  # the sum


class StatsCollector:
    """Exposes Stats plus a few gauges computed on demand."""

    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, tuple[str, float]]],
                 counters: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._stats = stats
        self._gauges = gauges
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        req = CounterMetricFamily("b2bua_sip_requests", "SIP requests by method and direction",
                                  labels=["method", "direction"])
        for m, n in s.requests_in.items():
            req.add_metric([m, "in"], n)
        for m, n in s.requests_out.items():
            req.add_metric([m, "out"], n)
        yield req
        resp = CounterMetricFamily("b2bua_sip_responses", "SIP responses by status code and direction",
                                   labels=["code", "direction"])
        for c, n in s.responses_in.items():
            resp.add_metric([str(c), "in"], n)
        for c, n in s.responses_out.items():
            resp.add_metric([str(c), "out"], n)
        yield resp
        calls = CounterMetricFamily("b2bua_calls", "Calls ended, by result", labels=["result"])
        for r in ("answered", "cancelled", "rejected", "failed", "timeout", "transferred"):
            calls.add_metric([r], s.calls.get(r, 0))
        yield calls
        transfers = CounterMetricFamily("b2bua_transfers", "Transfers the B2BUA carried out, by kind and result",
                                        labels=["kind", "result"])
        for kind in TRANSFER_KINDS:
            for result in TRANSFER_RESULTS:
                transfers.add_metric([kind, result], s.transfers.get((kind, result), 0))
        yield transfers
        durations = HistogramMetricFamily("b2bua_transfer_duration_seconds",
                                          "Time from REFER to the transfer's result, by kind", labels=["kind"])
        for kind in TRANSFER_KINDS:
            counts = s.transfer_seconds.get(kind, [0.0] * (len(TRANSFER_BUCKETS) + 2))
            buckets: list[tuple[str, float]] = []
            cumulative = 0.0
            for label, in_bucket in zip([*map(str, TRANSFER_BUCKETS), "+Inf"], counts[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((label, cumulative))
            durations.add_metric([kind], buckets, sum_value=counts[-1])
        yield durations
        bad = CounterMetricFamily("b2bua_sip_malformed", "Malformed SIP messages received, by kind",
                                  labels=["kind"])
        for k, n in s.malformed.items():
            bad.add_metric([k], n)
        yield bad
        media = CounterMetricFamily(
            "b2bua_media_events", "Media relay events: relay_down, relay_up, offer_failed (a new call refused), "
            "call_ended (a call ended because its relay failed), timeout (a call ended for lack of media)",
            labels=["event"])
        for e in ("relay_down", "relay_up", "offer_failed", "call_ended", "timeout"):
            media.add_metric([e], s.media_events.get(e, 0))
        yield media
        yield CounterMetricFamily("b2bua_escaped_exceptions",
                                  "Exceptions that escaped into the event loop (bugs; must stay 0)",
                                  value=s.escaped_exceptions)
        for name, (doc, value) in self._counters().items():
            yield CounterMetricFamily(name, doc, value=value)
        for name, (doc, value) in self._gauges().items():
            yield GaugeMetricFamily(name, doc, value=value)


def make_registry(collector: StatsCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
