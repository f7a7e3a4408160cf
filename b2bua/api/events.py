"""The fan-out of the core's call events to the API's event streams, with a bound on every reader.

How this works: the `EventHub` is fed from the core's listener (one call per event the log gets,
inside the core's own turn of the loop) and must never block it or raise into it: each event is
serialised once into an SSE frame (`id`, `event`, `data` as one JSON line) and put, without waiting,
into every subscribed client's bounded queue. A client whose queue is full has fallen too far
behind: it is dropped at once (its queue is emptied, so a stuck reader holds no memory) and its
stream is ended after a final `stream_overflow` event (stream.py writes the frames). A client that
follows one call ends after that call's `call_ended`; at shutdown every client is ended.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ..logs import utc_timestamp

FINAL = None  # queue sentinel: the stream ends


class StreamClient:
    __slots__ = ("queue", "call", "ending")

    def __init__(self, size: int, call: str | None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self.call = call  # only this call's events (API id), or all
        self.ending: str | None = None  # why the stream ends: "overflow", "shutdown", "call_ended"


class EventHub:
    def __init__(self, queue_events: int, max_clients: int, wall: Any = time.time) -> None:
        self.queue_events = queue_events
        self.max_clients = max_clients
        self._wall = wall
        self.clients: set[StreamClient] = set()
        self.seq = 0
        self.dropped = 0  # clients dropped for falling behind or not reading

    def subscribe(self, call: str | None = None) -> StreamClient | None:
        if len(self.clients) >= self.max_clients:
            return None
        client = StreamClient(self.queue_events, call)
        self.clients.add(client)
        return client

    def unsubscribe(self, client: StreamClient) -> None:
        self.clients.discard(client)

    def publish(self, call: str, sip_call_id: str, event: str, fields: dict[str, Any]) -> None:
        self.seq += 1
        if not self.clients:
            return  # nobody listens: the core pays only this
        data = {"seq": self.seq, "time": utc_timestamp(self._wall()),
                "event": event, "call": call, "sip_call_id": sip_call_id, "fields": fields}
        frame = f"id: {self.seq}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()
        for client in list(self.clients):
            if client.call is not None and client.call != call:
                continue
            try:
                client.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.dropped += 1
                self._end(client, "overflow")
                continue
            if client.call is not None and event == "call_ended":
                self._end(client, "call_ended")

    def close_all(self) -> None:
        for client in list(self.clients):
            self._end(client, "shutdown")

    def _end(self, client: StreamClient, why: str) -> None:
        """No more events for `client`: its handler writes what is queued (only after `call_ended`),
        then a last word, and ends the stream."""
        self.clients.discard(client)
        client.ending = why
        if why != "call_ended":
            _clear(client.queue)
        try:
            client.queue.put_nowait(FINAL)
        except asyncio.QueueFull:  # the call's last event took the last place: too far behind after all
            self.dropped += 1
            client.ending = "overflow"
            _clear(client.queue)
            client.queue.put_nowait(FINAL)


def _clear(queue: asyncio.Queue[bytes | None]) -> None:
    while not queue.empty():
        queue.get_nowait()
