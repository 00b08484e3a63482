"""Event bus backend on Apache Kafka via confluent-kafka (librdkafka).

`publish` reports success only for records the broker acknowledged (acks=all, idempotent producer);
consumers never auto-commit: offsets move only through `commit`, after processing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer as _KConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _KProducer
from confluent_kafka.admin import AdminClient, NewTopic

from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError
from zerorec.storage.bus import Consumer, EventBus, OutgoingRecord, Record

if TYPE_CHECKING:
    from zerorec.settings import Settings

log = logging.getLogger(__name__)

# Delivery reports that mean "the broker did not answer" (not "it refused the record").
_UNACKNOWLEDGED = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
# Errors librdkafka raises when it cannot reach the cluster at all.
_TRANSPORT = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
}


class KafkaEventBus(EventBus):
    """A lazily created idempotent producer plus consumers created on demand."""

    def __init__(
        self,
        bootstrap: str,
        *,
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 5.0,
        client_id: str = "zerorec",
    ) -> None:
        self.bootstrap = bootstrap
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self._common: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "socket.connection.setup.timeout.ms": int(connect_timeout_s * 1000),
            "socket.timeout.ms": max(int(request_timeout_s * 1000), 10),
            "reconnect.backoff.max.ms": 1000,
        }
        self._producer: _KProducer | None = None
        self._lock = threading.Lock()
        # Fail fast while the broker does not acknowledge: one probe publish at a time finds out
        # when it is back; the others are refused at once instead of each waiting its full timeout
        # (a behavior function under load would queue requests behind them past any client timeout).
        self._failing_since: float | None = None
        self._next_probe = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaEventBus:
        """Build the bus from ZEROREC_KAFKA_BOOTSTRAP and the timeouts."""
        return cls(
            settings.kafka_bootstrap,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )

    # ---- admin -----------------------------------------------------------------------------

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        if not topics:
            return
        admin = AdminClient(dict(self._common))
        timeout = self.connect_timeout_s + self.request_timeout_s
        new = [
            NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in topics
        ]  # broker default
        try:
            futures = admin.create_topics(
                new, request_timeout=timeout, operation_timeout=self.request_timeout_s
            )
        except (KafkaException, ValueError, TypeError) as exc:
            raise InvalidInputError(f"cannot create topics {list(topics)}: {exc}") from exc
        for topic, fut in futures.items():
            try:
                fut.result(timeout=timeout + 1)
            except FutureTimeout:
                raise BackendUnavailableError(
                    f"kafka at {self.bootstrap} did not answer create_topics({topic!r}) within {timeout:.0f}s"
                ) from None
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if err.code() in _TRANSPORT:
                    raise BackendUnavailableError(
                        f"kafka at {self.bootstrap} unreachable while creating {topic!r}: {err.str()}"
                    ) from exc
                raise InvalidInputError(f"kafka refused topic {topic!r}: {err.str()}") from exc

    # ---- produce ---------------------------------------------------------------------------

    def _get_producer(self) -> _KProducer:
        with self._lock:
            if self._producer is None:
                self._producer = _KProducer(
                    {
                        **self._common,
                        "acks": "all",
                        "enable.idempotence": True,
                        "linger.ms": 5,
                        # librdkafka itself fails a record it could not deliver within this time.
                        "message.timeout.ms": int((self.connect_timeout_s + self.request_timeout_s) * 1000),
                    }
                )
            return self._producer

    def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        """Produce all records, flush, and raise DeliveryError unless every one was acknowledged."""
        if not records:
            return
        wait_s = self.connect_timeout_s + self.request_timeout_s + 2.0
        with self._lock:
            now = time.monotonic()
            if self._failing_since is not None:
                if now < self._next_probe:
                    raise DeliveryError(
                        f"kafka at {self.bootstrap} has acknowledged nothing for "
                        f"{now - self._failing_since:.0f}s; {len(records)} records to {topic!r} not sent "
                        "(none of them may be treated as sent; retrying is safe)"
                    )
                self._next_probe = now + wait_s  # this publish is the probe: one at a time
        producer = self._get_producer()
        acked = 0
        failures: list[str] = []
        fatal = False
        unreachable = False

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            nonlocal acked, fatal, unreachable
            if err is None:
                acked += 1
            else:
                failures.append(err.str())
                fatal = fatal or err.fatal()
                unreachable = unreachable or err.code() in _UNACKNOWLEDGED

        try:
            for r in records:
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=r.value,
                            key=r.key,
                            headers=list(r.headers) or None,
                            on_delivery=on_delivery,
                        )
                        break
                    except BufferError:  # local queue full: serve callbacks, then retry
                        producer.poll(0.1)
        except KafkaException as exc:
            raise DeliveryError(f"kafka refused a record for {topic!r}: {exc.args[0].str()}") from exc
        left = producer.flush(wait_s)
        if fatal:
            with self._lock:
                self._producer = None  # a fatal producer can never send again; start afresh
        with self._lock:
            if acked == len(records) and not failures:
                self._failing_since = None
            elif left or unreachable:
                self._failing_since = self._failing_since or time.monotonic()
                self._next_probe = time.monotonic() + 1.0
        if failures or left or acked != len(records):
            missing = len(records) - acked
            reason = failures[0] if failures else f"no acknowledgement within {wait_s:.0f}s"
            raise DeliveryError(
                f"kafka at {self.bootstrap}: {missing} of {len(records)} records to {topic!r} "
                f"not acknowledged ({reason}); none of them may be treated as sent"
            )

    # ---- consume ---------------------------------------------------------------------------

    def consumer(self, topics: Sequence[str], group: str, *, from_beginning: bool = True) -> KafkaConsumer:
        if not group:
            raise InvalidInputError("consumer group must be non-empty")
        return KafkaConsumer(self, list(topics), group, from_beginning)

    def close(self) -> None:
        """Flush what is still queued (bounded) and drop the producer."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.request_timeout_s)


class KafkaConsumer(Consumer):
    """A confluent-kafka consumer with auto-commit off; `commit` is synchronous."""

    def __init__(self, bus: KafkaEventBus, topics: list[str], group: str, from_beginning: bool) -> None:
        self._bus = bus
        self._down: str | None = None
        conf = {
            **bus._common,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            # A crashed member's partitions move on after ~10 s instead of the 45 s default.
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 3000,
            # Bounded prefetch: librdkafka queues up to 64 MB (and fetches 50 MB responses) by
            # default, which a reader of the whole log (the worker's tasks) would hold in a 256 MiB pod.
            "queued.max.messages.kbytes": 8192,
            "fetch.max.bytes": 8 * 1024 * 1024,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
        }
        self._buffered: list[Any] = []  # messages fetched while waiting for a commit's answer
        self._commit_answer: tuple[Any, list[Any]] | None = None
        self._c = _KConsumer(conf)
        try:  # fail fast (bounded) when the cluster is unreachable, instead of polling forever
            self._c.list_topics(timeout=bus.connect_timeout_s + bus.request_timeout_s)
        except KafkaException as exc:
            self._c.close()
            raise BackendUnavailableError(
                f"kafka at {bus.bootstrap} unreachable: {exc.args[0].str()} (is the broker running?)"
            ) from exc
        self._c.subscribe(topics)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN or err.fatal():
            self._down = err.str()

    def _convert(self, msgs: list[Any]) -> list[Record]:
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in _TRANSPORT:
                    raise BackendUnavailableError(f"kafka at {self._bus.bootstrap}: {err.str()}")
                log.warning("kafka consumer error (skipped): %s", err.str())
                continue
            _ts_type, ts = m.timestamp()
            out.append(
                Record(
                    topic=m.topic(),
                    partition=m.partition(),
                    offset=m.offset(),
                    value=m.value() or b"",
                    key=m.key(),
                    headers=tuple(m.headers() or ()),
                    timestamp_ms=max(ts, 0),
                )
            )
        return out

    def _on_commit(self, err: KafkaError | None, partitions: list[Any]) -> None:
        self._commit_answer = (err, partitions)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            return []
        if self._buffered:
            msgs, self._buffered = self._buffered[:max_records], self._buffered[max_records:]
            return self._convert(msgs)
        try:
            first = self._c.poll(timeout_s)
            msgs = [] if first is None else [first]
            if first is not None and max_records > 1:
                msgs += self._c.consume(num_messages=max_records - 1, timeout=0)
        except KafkaException as exc:
            raise BackendUnavailableError(f"kafka at {self._bus.bootstrap}: {exc.args[0].str()}") from exc
        except RuntimeError as exc:  # "Consumer closed"
            raise InvalidInputError(str(exc)) from exc
        if not msgs and self._down is not None:
            reason, self._down = self._down, None
            raise BackendUnavailableError(f"kafka at {self._bus.bootstrap} unreachable: {reason}")
        return self._convert(msgs)

    def commit(self, records: Sequence[Record]) -> None:
        """Commit offset+1 of the last record per partition, waiting for the broker's answer."""
        latest: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            latest[key] = max(latest.get(key, -1), r.offset)
        if not latest:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
        want = {(t, p, o + 1) for (t, p), o in latest.items()}
        # Asynchronous commit, answer awaited with a bound: librdkafka's synchronous commit can
        # wait forever after a broker restart (seen in the soak: a KafkaSource stuck for good).
        # Waiting serves the commit callback through consume(); messages it fetches meanwhile are
        # kept for the next poll, in order.
        self._commit_answer = None
        try:
            self._c.commit(offsets=offsets, asynchronous=True)
            wait_s = self._bus.connect_timeout_s + self._bus.request_timeout_s
            deadline = time.monotonic() + wait_s
            while True:
                answer = self._commit_answer
                if answer is not None and {(tp.topic, tp.partition, tp.offset) for tp in answer[1]} >= want:
                    break
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"kafka at {self._bus.bootstrap}: no answer to an offset commit within "
                        f"{wait_s:.0f}s; "
                        "the records will be redelivered unless a later commit covers them"
                    )
                self._buffered += self._c.consume(num_messages=100, timeout=0.05)
        except KafkaException as exc:
            err = exc.args[0]
            cls = BackendUnavailableError if err.code() in _TRANSPORT else DeliveryError
            raise cls(f"kafka offset commit failed ({err.str()}); the records will be redelivered") from exc
        err, result = answer
        if err is not None:
            cls = BackendUnavailableError if err.code() in _TRANSPORT else DeliveryError
            raise cls(f"kafka offset commit failed ({err.str()}); the records will be redelivered")
        for tp in result or ():
            if tp.error is not None:
                raise DeliveryError(
                    f"kafka offset commit failed for {tp.topic}[{tp.partition}]: {tp.error.str()}; "
                    "the records will be redelivered"
                )

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self._c.close()
