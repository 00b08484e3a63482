"""Local KafkaSource: consume each KafkaSource's topics and deliver records to its sink over HTTP.

What the real KafkaSource data plane does, on one machine, through the EventBus port (so it runs on
the in-process bus and on Kafka alike):
- a record that is a CloudEvent (Kafka binding, `ce_*` headers or structured) is forwarded with its
  own attributes; any other record becomes a `dev.knative.kafka.event` (see
  `zerorec.cloudevents_io.kafka_source_event`); ceOverrides extensions are applied;
- delivery is a binary-mode CloudEvent POST; `ordering: ordered` waits for the sink's answer before
  the next record of the same partition (partitions run in parallel, bounded);
- 5xx, 404, 408, 409, 429 and network errors are retried per `delivery` (retry, backoffPolicy,
  backoffDelay, timeout); other answers and exhausted retries go to `deadLetterSink` (a KafkaSink
  topic or a URL) with knativeerrordest/code/data; without one the record is dropped (logged);
- a record that claims to be a CloudEvent but is malformed goes straight to the dead letters (code 400);
- offsets are committed only for records that got a 2xx or went to the dead letters.

Run: `python -m local.eventing.kafka_source [--source NAME] [--sink consumer=http://...]` from the repo
root; the bus comes from ZEROREC_EVENT_BUS / ZEROREC_KAFKA_BOOTSTRAP (bootstrapServers in the
manifests are the cluster's and are ignored). SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from zerorec.cloudevents_io import (
    CloudEvent,
    dead_letter_event,
    from_kafka_record,
    is_cloudevent_record,
    kafka_source_event,
    to_http_binary,
    to_kafka_record,
)
from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError, ZeroRecError
from zerorec.storage.bus import Consumer, EventBus, Record

from local.eventing.manifests import (
    DEFAULT_MANIFESTS,
    KafkaSourceSpec,
    Sink,
    SinkResolver,
    kafka_sources,
    load_documents,
)

log = logging.getLogger("zerorec.eventing.kafka_source")

RETRYABLE = frozenset({404, 408, 409, 429})
MAX_ERROR_BODY = 1024


def is_retryable(code: int) -> bool:
    """Knative data-plane rule: retry 5xx, 404, 408, 409, 429 (and network errors, code 0)."""
    return code == 0 or code >= 500 or code in RETRYABLE


@dataclass
class Stats:
    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    committed: int = 0

    def line(self) -> str:
        return (
            f"delivered={self.delivered} failed_attempts={self.failed_attempts} "
            f"dlq={self.dead_lettered} dropped={self.dropped} committed={self.committed}"
        )


@dataclass(frozen=True)
class Outcome:
    ok: bool
    code: int = 0  # last HTTP status; 0 = no answer
    body: bytes = b""
    aborted: bool = False  # stopped while waiting to retry: not done, must not be committed


class KafkaSourceDispatcher:
    """Delivers one KafkaSource's records; `run()` loops until `stop()`."""

    def __init__(
        self,
        spec: KafkaSourceSpec,
        bus: EventBus,
        *,
        client: httpx.Client | None = None,
        max_batch: int = 200,
        max_parallel: int = 8,
        poll_timeout_s: float = 0.5,
        progress_every_s: float = 10.0,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        if spec.sink.url is None:
            raise InvalidInputError(f"KafkaSource {spec.name}: sink must be an HTTP destination")
        self.spec = spec
        self.bus = bus
        self.max_batch = max(1, min(max_batch, 10_000))
        self.max_parallel = max(1, min(max_parallel, 64))
        self.poll_timeout_s = poll_timeout_s
        self.progress_every_s = progress_every_s
        self.on_progress = on_progress or (lambda line: log.info(line))
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._killed = False
        self._own_client = client is None
        limits = httpx.Limits(
            max_connections=self.max_parallel * 2, max_keepalive_connections=self.max_parallel
        )
        self.client = client or httpx.Client(limits=limits, timeout=spec.delivery.timeout_s)
        self._consumer: Consumer | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish: the record in flight gets its answer, retries are abandoned."""
        self._stop.set()

    def kill(self) -> None:
        """Simulate a crash: leave the group now, commit nothing more (tests)."""
        self._killed = True
        self._stop.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def run(self) -> None:
        """Consume and deliver until `stop()`; commits after each batch."""
        spec = self.spec
        self._consumer = self._join()
        last_progress = time.monotonic()
        failures = 0
        try:
            with ThreadPoolExecutor(self.max_parallel, thread_name_prefix=f"ks-{spec.name}") as pool:
                while not self._stop.is_set():
                    consumer = self._consumer
                    if consumer is None:
                        break
                    try:
                        records = consumer.poll(self.max_batch, self.poll_timeout_s)
                    except BackendUnavailableError as exc:
                        failures += 1
                        log.error("[kafka-source %s] poll failed (%s); retrying", spec.name, exc)
                        self._stop.wait(min(0.5 * 2**failures, 10.0))
                        continue
                    failures = 0
                    if records:
                        self._process(records, pool)
                    if time.monotonic() - last_progress >= self.progress_every_s:
                        last_progress = time.monotonic()
                        self.on_progress(f"[kafka-source {spec.name}] {self.stats.line()}")
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()
            if self._own_client:
                self.client.close()
            self.on_progress(f"[kafka-source {spec.name}] stopped: {self.stats.line()}")

    def _join(self) -> Consumer | None:
        """Join the consumer group, retrying (bounded backoff) while the bus is unreachable."""
        spec, failures = self.spec, 0
        while not self._stop.is_set():
            try:
                return self.bus.consumer(
                    list(spec.topics), spec.consumer_group, from_beginning=spec.initial_offset == "earliest"
                )
            except BackendUnavailableError as exc:
                failures += 1
                log.error("[kafka-source %s] cannot join the group (%s); retrying", spec.name, exc)
                self._stop.wait(min(0.5 * 2**failures, 10.0))
        return None

    # ------------------------------------------------------------ one batch

    def _process(self, records: Sequence[Record], pool: ThreadPoolExecutor) -> None:
        partitions: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            partitions.setdefault((record.topic, record.partition), []).append(record)
        if self.spec.ordering == "unordered":
            futures = {
                key: [pool.submit(self._handle, r) for r in batch] for key, batch in partitions.items()
            }
            done = {
                key: self._prefix(batch, [f.result() for f in futures[key]])
                for key, batch in partitions.items()
            }
        else:
            futures2 = {key: pool.submit(self._handle_in_order, batch) for key, batch in partitions.items()}
            done = {key: f.result() for key, f in futures2.items()}
        to_commit = [batch[-1] for batch in done.values() if batch]
        consumer = self._consumer
        if to_commit and consumer is not None and not self._killed:
            try:
                consumer.commit(to_commit)
            except (BackendUnavailableError, DeliveryError) as exc:
                # Delivered but not committed: redelivered after a restart (the sink is idempotent);
                # the next successful commit covers these offsets too.
                log.error("[kafka-source %s] commit failed: %s", self.spec.name, exc)
            else:
                with self._lock:
                    self.stats.committed += sum(len(batch) for batch in done.values())
        if any(len(done[key]) < len(batch) for key, batch in partitions.items()):
            self._stop.set()  # an abandoned record: leave so that it is redelivered

    @staticmethod
    def _prefix(batch: list[Record], results: list[bool]) -> list[Record]:
        prefix = []
        for record, ok in zip(batch, results, strict=True):
            if not ok:
                break
            prefix.append(record)
        return prefix

    def _handle_in_order(self, batch: list[Record]) -> list[Record]:
        done = []
        for record in batch:
            if self._stop.is_set() or not self._handle(record):
                break
            done.append(record)
        return done

    # ------------------------------------------------------------ one record

    def to_event(self, record: Record) -> CloudEvent:
        """The event sent for `record` (InvalidInputError for a malformed CloudEvent record)."""
        if is_cloudevent_record(record):
            event = from_kafka_record(record, raw_data=True)
        else:
            event = kafka_source_event(record, namespace=self.spec.namespace, source_name=self.spec.name)
        for name, value in self.spec.ce_overrides.items():
            event[name] = value
        return event

    def _handle(self, record: Record) -> bool:
        """Deliver one record; True when it is done (2xx, dead-lettered or dropped)."""
        if self._stop.is_set():
            return False  # shutting down: leave it uncommitted for the next member
        url = str(self.spec.sink.url)
        try:
            event = self.to_event(record)
        except InvalidInputError as exc:
            event = kafka_source_event(record, namespace=self.spec.namespace, source_name=self.spec.name)
            return self._dead_letter(record, event, Outcome(ok=False, code=400, body=str(exc).encode()))
        headers, body = to_http_binary(event)
        outcome = self._post_with_retries(url, headers, body)
        if outcome.ok:
            with self._lock:
                self.stats.delivered += 1
            return True
        if outcome.aborted or self._killed:
            return False
        return self._dead_letter(record, event, outcome)

    def _post_with_retries(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        delivery = self.spec.delivery
        outcome = Outcome(ok=False)
        for attempt in range(delivery.retry + 1):
            if attempt and self._stop.wait(delivery.backoff_s(attempt)):
                return Outcome(ok=False, aborted=True)
            outcome = self._post(url, headers, body, delivery.timeout_s)
            if outcome.ok:
                return outcome
            with self._lock:
                self.stats.failed_attempts += 1
            if not is_retryable(outcome.code):
                break
        return outcome

    def _post(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> Outcome:
        try:
            response = self.client.post(url, headers=headers, content=body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return Outcome(ok=False, code=0, body=f"dispatch error: {exc!r}".encode())
        return Outcome(ok=200 <= response.status_code < 300, code=response.status_code, body=response.content)

    def _dead_letter(self, record: Record, event: CloudEvent, outcome: Outcome) -> bool:
        target = self.spec.delivery.dead_letter
        code = outcome.code or 500  # Knative reports "no answer" as 500
        if target is None:
            log.warning(
                "[kafka-source %s] dropped %s (HTTP %s), no deadLetterSink", self.spec.name, event["id"], code
            )
            with self._lock:
                self.stats.dropped += 1
            return True
        letter = dead_letter_event(
            event, destination=str(self.spec.sink.url), code=code, body=outcome.body[:MAX_ERROR_BODY]
        )
        attempt = 0
        while not self._killed:
            try:
                self._send_dead_letter(target, letter, record)
                with self._lock:
                    self.stats.dead_lettered += 1
                return True
            except (ZeroRecError, httpx.HTTPError, OSError) as exc:
                attempt += 1
                log.error("[kafka-source %s] dead-letter send failed (%s), retrying", self.spec.name, exc)
                if self._stop.wait(self.spec.delivery.backoff_s(min(attempt, 8))):
                    return False
        return False

    def _send_dead_letter(self, target: Sink, letter: CloudEvent, record: Record) -> None:
        if target.topic is not None:
            self.bus.publish(target.topic, [to_kafka_record(letter, key=record.key)])
            return
        headers, body = to_http_binary(letter)
        response = self.client.post(str(target.url), headers=headers, content=body)
        if not 200 <= response.status_code < 300:
            raise InvalidInputError(f"dead-letter sink answered HTTP {response.status_code}")


def build_dispatchers(
    bus: EventBus,
    *,
    manifests: Sequence[str] = (str(DEFAULT_MANIFESTS),),
    names: Sequence[str] = (),
    sink_overrides: dict[str, str] | None = None,
    **options: object,
) -> list[KafkaSourceDispatcher]:
    """One dispatcher per KafkaSource in `manifests` (all, or those in `names`)."""
    docs = load_documents(manifests)
    specs = kafka_sources(docs, SinkResolver(docs, overrides=sink_overrides))
    unknown = set(names) - {s.name for s in specs}
    if unknown:
        raise InvalidInputError(f"no KafkaSource named {', '.join(sorted(unknown))}")
    chosen = [s for s in specs if not names or s.name in names]
    return [KafkaSourceDispatcher(spec, bus, **options) for spec in chosen]  # type: ignore[arg-type]


def _parse_sinks(values: Sequence[str]) -> dict[str, str]:
    result = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not url:
            raise SystemExit(f"--sink wants NAME=URL, got {value!r}")
        result[name] = url
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", action="append", help="file or folder (default: knative/)")
    parser.add_argument("--source", action="append", default=[], help="only this KafkaSource (repeatable)")
    parser.add_argument("--sink", action="append", default=[], help="NAME=URL: where Service NAME listens")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from zerorec.settings import get_settings
    from zerorec.storage import event_bus

    try:
        bus = event_bus(get_settings())
        dispatchers = build_dispatchers(
            bus,
            manifests=args.manifests or [str(DEFAULT_MANIFESTS)],
            names=args.source,
            sink_overrides=_parse_sinks(args.sink),
            progress_every_s=args.progress_every,
        )
        topics = {t for d in dispatchers for t in d.spec.topics}
        topics |= {d.spec.delivery.dead_letter.topic for d in dispatchers if d.spec.delivery.dead_letter}
        bus.ensure_topics(sorted(t for t in topics if t))
    except ZeroRecError as exc:
        log.error("error: %s", exc)
        return 2

    def _stop(signum: int, frame: object) -> None:
        log.info("signal %s: stopping", signum)
        for dispatcher in dispatchers:
            dispatcher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    threads = [threading.Thread(target=d.run, name=d.spec.name) for d in dispatchers]
    for thread, dispatcher in zip(threads, dispatchers, strict=True):
        log.info(
            "[kafka-source %s] %s -> %s",
            dispatcher.spec.name,
            ",".join(dispatcher.spec.topics),
            dispatcher.spec.sink,
        )
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
