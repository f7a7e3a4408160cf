"""The JSON log lines' timestamp, and why it is not datetime's (b2bua/logs.py)."""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from b2bua.logs import configure_logging, get_logger, utc_timestamp

ROOT = Path(__file__).resolve().parents[2]


def test_utc_timestamp_is_rfc3339_with_microseconds() -> None:
    assert utc_timestamp(0.0) == "1970-01-01T00:00:00.000000Z"
    assert utc_timestamp(1795304150.25) == "2026-11-21T23:35:50.250000Z"
    assert utc_timestamp(1795304151.000001) in ("2026-11-21T23:35:51.000000Z", "2026-11-21T23:35:51.000001Z")
    # The cached second is only a shortcut: going back and forth gives the same text.
    assert utc_timestamp(1795304150.5) == "2026-11-21T23:35:50.500000Z"
    now = time.time()
    parsed = datetime.datetime.fromisoformat(utc_timestamp(now).replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - now) < 1e-5


def test_a_log_line_is_one_json_object_with_level_and_timestamp() -> None:
    out = io.StringIO()
    configure_logging("info")
    try:
        structlog.configure(logger_factory=structlog.WriteLoggerFactory(out))
        get_logger("t", call_id="c1").info("call_ended", result="answered")
        get_logger("t").debug("not shown")
    finally:
        structlog.reset_defaults()
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "call_ended" and record["call_id"] == "c1" and record["level"] == "info"
    stamp = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert abs(stamp.timestamp() - time.time()) < 5


# Run on the C library's malloc, as the daemon is (b2bua/allocator.py): a fresh name then lands at
# a new address each time, where pymalloc tends to hand the last freed one back.
_KEPT = """
import datetime, json, random, sys, time, tracemalloc
from b2bua.logs import utc_timestamp

def kept(stamp):
    # Bytes the interpreter's attribute cache holds after 20,000 stamps among other allocations.
    keep, rng = [], random.Random(1)
    tracemalloc.start()
    for _ in range(20_000):
        stamp()
        keep.append("x" * rng.randint(5, 12))  # the size of a short name: scatters the addresses
        if len(keep) > 3000:
            keep.pop(rng.randrange(len(keep)))
    before = tracemalloc.get_traced_memory()[0]
    sys._clear_type_cache()
    freed = before - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return freed

print(json.dumps({"datetime": kept(lambda: datetime.datetime.now(tz=datetime.timezone.utc).isoformat()),
                  "ours": kept(lambda: utc_timestamp(time.time()))}))
"""


def test_stamping_leaves_no_names_in_the_attribute_cache() -> None:
    env = dict(os.environ, PYTHONMALLOC="malloc", B2BUA_NATIVE="0")
    done = subprocess.run([sys.executable, "-c", _KEPT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    kept = json.loads(done.stdout)
    if kept["datetime"] < 20_000:
        pytest.skip(f"this interpreter's attribute cache keeps no fresh names ({kept})")
    assert kept["ours"] < 2_000, kept
