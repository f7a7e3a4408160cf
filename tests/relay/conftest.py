from collections.abc import Iterator

import pytest

from .harness import RelayProcess


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    proc = RelayProcess(pairs=20).start()
    yield proc
    metrics = proc.metrics()
    rc, out, err = proc.stop()
    assert rc == 0, err
    assert metrics.get("rtp_relay_escaped_exceptions_total", 0) == 0, out
