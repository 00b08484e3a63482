"""A producer whose broker does not answer fails fast: one probe publish at a time waits for the
broker, the others are refused at once (not sent), so a behavior function under load answers 503
quickly instead of queueing requests behind full timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from zerorec.errors import DeliveryError
from zerorec.storage.bus import OutgoingRecord
from zerorec.storage.bus_kafka import KafkaEventBus


def test_publishes_to_a_dead_broker_are_refused_fast_after_the_first(unused_tcp_port: int) -> None:
    bus = KafkaEventBus(f"127.0.0.1:{unused_tcp_port}", connect_timeout_s=1.0, request_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(DeliveryError, match="not acknowledged"):
            bus.publish("t", [OutgoingRecord(b"v")])
        first = time.monotonic() - t0
        took: list[float] = []
        errors: list[str] = []

        def post() -> None:
            start = time.monotonic()
            try:
                bus.publish("t", [OutgoingRecord(b"w")])
            except DeliveryError as exc:
                errors.append(str(exc))
            took.append(time.monotonic() - start)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert len(errors) == 8  # never reported sent
        assert sorted(took)[-2] < 0.2 < first, (first, took)  # all but at most one probe: at once
        assert any("acknowledged nothing" in e for e in errors)
    finally:
        bus.close()


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
