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

Local throughput mode (opt-in: `--delivery batch` or the annotation `zerorec.dev/local-delivery:
batch` on the KafkaSource, `zerorec.dev/local-batch-size` events per request): records go out as
`application/cloudevents-batch+json` requests (the CloudEvents HTTP batched content mode), in
partition order; the sink answers one result per event, only the retryable ones are retried and only
the refused or exhausted ones are dead-lettered; offsets are committed after that, as above. The
real KafkaSource has no such mode: on a cluster every event is its own request.
Kafka unreachable at start: the dispatcher logs and retries with backoff (exit 2 is only for a bad
manifest or setting).

Run: `python -m local.eventing.kafka_source [--source NAME] [--sink consumer=http://...]` from the repo
root; the bus comes from ZEROREC_EVENT_BUS / ZEROREC_KAFKA_BOOTSTRAP (bootstrapServers in the
manifests are the cluster's and are ignored). SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from zerorec.cloudevents_io import (
    MAX_BATCH_EVENTS,
    CloudEvent,
    batch_entry,
    dead_letter_event,
    from_kafka_record,
    is_cloudevent_record,
    kafka_source_event,
    record_to_http_binary,
    to_http_batch,
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
    """Delivers one KafkaSource's records; `run()` loops until `stop()`.

    Delivery runs on an asyncio loop (uvloop when installed) with one keep-alive aiohttp session,
    at most `max_parallel` requests in flight; Kafka polls and commits run on a worker thread.
    """

    def __init__(
        self,
        spec: KafkaSourceSpec,
        bus: EventBus,
        *,
        max_batch: int | None = None,
        max_parallel: int = 8,
        poll_timeout_s: float = 0.5,
        progress_every_s: float = 10.0,
        on_progress: Callable[[str], None] | None = None,
        delivery_mode: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if spec.sink.url is None:
            raise InvalidInputError(f"KafkaSource {spec.name}: sink must be an HTTP destination")
        self.spec = spec
        self.bus = bus
        self.delivery_mode = delivery_mode or spec.local_delivery
        # Records per poll: the cap of one poll/deliver/commit cycle. A batched cycle costs about the
        # same for 500 or 5,000 records, so batch mode polls more at a time.
        default_poll = 5000 if self.delivery_mode == "batch" else 500
        self.max_batch = max(1, min(max_batch or default_poll, 10_000))
        self.max_parallel = max(1, min(max_parallel, 64))
        self.poll_timeout_s = poll_timeout_s
        self.progress_every_s = progress_every_s
        self.on_progress = on_progress or (lambda line: log.info(line))
        if self.delivery_mode not in ("single", "batch"):
            raise InvalidInputError(f"delivery mode must be single or batch, got {self.delivery_mode!r}")
        self.batch_size = max(1, min(batch_size or spec.local_batch_size, MAX_BATCH_EVENTS))
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._killed = False
        self._consumer: Consumer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish: the request in flight gets its answer, retries are abandoned."""
        self._stop.set()

    def kill(self) -> None:
        """Simulate a crash: leave the group now, commit nothing more (tests)."""
        self._killed = True
        self._stop.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def run(self) -> None:
        """Consume and deliver until `stop()`; commits after each polled batch."""
        try:
            import uvloop

            loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
            loop_factory = None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self._run())

    async def _run(self) -> None:
        spec = self.spec
        self._consumer = await asyncio.to_thread(self._join)
        self._slots = asyncio.Semaphore(self.max_parallel)
        connector = aiohttp.TCPConnector(limit=self.max_parallel * 2, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector)
        last_progress = time.monotonic()
        failures = 0
        try:
            while not self._stop.is_set():
                consumer = self._consumer
                if consumer is None:
                    break
                try:
                    records = await asyncio.to_thread(consumer.poll, self.max_batch, self.poll_timeout_s)
                except BackendUnavailableError as exc:
                    failures += 1
                    log.error("[kafka-source %s] poll failed (%s); retrying", spec.name, exc)
                    await self._sleep(min(0.5 * 2**failures, 10.0))
                    continue
                failures = 0
                if records:
                    await self._process(records)
                if time.monotonic() - last_progress >= self.progress_every_s:
                    last_progress = time.monotonic()
                    self.on_progress(f"[kafka-source {spec.name}] {self.stats.line()}")
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()
            await self._session.close()
            self.on_progress(f"[kafka-source {spec.name}] stopped: {self.stats.line()}")

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` unless stopped first; True when stopped."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.05))
        return True

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

    # ------------------------------------------------------------ one polled batch

    async def _process(self, records: Sequence[Record]) -> None:
        partitions: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            partitions.setdefault((record.topic, record.partition), []).append(record)
        keys = list(partitions)
        if self.delivery_mode == "batch":
            lists = await asyncio.gather(*(self._partition_batched(partitions[k]) for k in keys))
        elif self.spec.ordering == "unordered":
            lists = await asyncio.gather(*(self._partition_unordered(partitions[k]) for k in keys))
        else:
            lists = await asyncio.gather(*(self._partition_in_order(partitions[k]) for k in keys))
        done = dict(zip(keys, lists, strict=True))
        to_commit = [batch[-1] for batch in done.values() if batch]
        consumer = self._consumer
        if to_commit and consumer is not None and not self._killed:
            try:
                await asyncio.to_thread(consumer.commit, to_commit)
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
    def _prefix(batch: Sequence[Record], results: Sequence[bool]) -> list[Record]:
        prefix = []
        for record, ok in zip(batch, results, strict=True):
            if not ok:
                break
            prefix.append(record)
        return prefix

    async def _partition_unordered(self, batch: list[Record]) -> list[Record]:
        results = await asyncio.gather(*(self._handle(r) for r in batch))
        return self._prefix(batch, results)

    async def _partition_in_order(self, batch: list[Record]) -> list[Record]:
        done = []
        for record in batch:
            if self._stop.is_set() or not await self._handle(record):
                break
            done.append(record)
        return done

    async def _partition_batched(self, batch: list[Record]) -> list[Record]:
        """Batched mode: chunks of `batch_size` one after the other (partition order kept)."""
        done: list[Record] = []
        for i in range(0, len(batch), self.batch_size):
            chunk = batch[i : i + self.batch_size]
            prefix = self._prefix(chunk, await self._deliver_chunk(chunk))
            done += prefix
            if len(prefix) < len(chunk):
                break
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

    def _request(self, record: Record) -> tuple[dict[str, str], bytes]:
        """Binary-mode request for `record` (fast path for plain binary CloudEvent records)."""
        fast = record_to_http_binary(record, self.spec.ce_overrides)
        return fast if fast is not None else to_http_binary(self.to_event(record))

    def _malformed(self, record: Record, exc: InvalidInputError) -> tuple[CloudEvent, Outcome]:
        event = kafka_source_event(record, namespace=self.spec.namespace, source_name=self.spec.name)
        return event, Outcome(ok=False, code=400, body=str(exc).encode())

    async def _handle(self, record: Record) -> bool:
        """Deliver one record; True when it is done (2xx, dead-lettered or dropped)."""
        if self._stop.is_set():
            return False  # shutting down: leave it uncommitted for the next member
        try:
            headers, body = self._request(record)
        except InvalidInputError as exc:
            return await self._dead_letter(record, *self._malformed(record, exc))
        outcome = await self._post_with_retries(str(self.spec.sink.url), headers, body)
        if outcome.ok:
            with self._lock:
                self.stats.delivered += 1
            return True
        if outcome.aborted or self._killed:
            return False
        return await self._dead_letter(record, self.to_event(record), outcome)

    async def _post_with_retries(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        delivery = self.spec.delivery
        outcome = Outcome(ok=False)
        for attempt in range(delivery.retry + 1):
            if attempt and await self._sleep(delivery.backoff_s(attempt)):
                return Outcome(ok=False, aborted=True)
            outcome = await self._post(url, headers, body, delivery.timeout_s)
            if outcome.ok:
                return outcome
            with self._lock:
                self.stats.failed_attempts += 1
            if not is_retryable(outcome.code):
                break
        return outcome

    async def _post(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> Outcome:
        assert self._session is not None and self._slots is not None
        try:
            async with self._slots:
                timeout = aiohttp.ClientTimeout(total=timeout_s)
                async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
                    content = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome(ok=False, code=0, body=f"dispatch error: {exc!r}".encode())
        return Outcome(ok=200 <= response.status < 300, code=response.status, body=content)

    # ------------------------------------------------------------ batched mode

    async def _deliver_chunk(self, chunk: list[Record]) -> list[bool]:
        """Send `chunk` as batched requests: retry only the events whose result is retryable,
        dead-letter the refused and the exhausted ones. One flag per record: done or not."""
        if self._stop.is_set():
            return [False] * len(chunk)
        done = [False] * len(chunk)
        entries: dict[int, dict[str, Any]] = {}
        for i, record in enumerate(chunk):
            try:
                fast = record_to_http_binary(record) is not None
                entry = batch_entry(record) if fast else batch_entry(record, self.to_event(record))
            except InvalidInputError as exc:
                done[i] = await self._dead_letter(record, *self._malformed(record, exc))
                continue
            entry.update(self.spec.ce_overrides)
            entries[i] = entry
        delivery, url = self.spec.delivery, str(self.spec.sink.url)
        todo, last, refused = list(entries), {i: Outcome(ok=False) for i in entries}, []
        for attempt in range(delivery.retry + 1):
            if not todo:
                break
            if attempt and await self._sleep(delivery.backoff_s(attempt)):
                return done  # stopped while waiting: the rest stays uncommitted
            headers, body = to_http_batch([entries[i] for i in todo])
            outcome = await self._post(url, headers, body, delivery.timeout_s)
            results = self._batch_results(outcome, len(todo))
            retry = []
            for i, (code, answer) in zip(todo, results, strict=True):
                if 200 <= code < 300:
                    done[i] = True
                    continue
                last[i] = Outcome(ok=False, code=code, body=answer)
                (retry if is_retryable(code) else refused).append(i)
            ok_now = sum(1 for i in todo if done[i])
            with self._lock:
                self.stats.delivered += ok_now
                self.stats.failed_attempts += len(todo) - ok_now
            todo = retry
        if self._killed:
            return done
        for i in [*refused, *todo]:
            done[i] = await self._dead_letter(chunk[i], self.to_event(chunk[i]), last[i])
        return done

    @staticmethod
    def _batch_results(outcome: Outcome, n: int) -> list[tuple[int, bytes]]:
        """Per-event (status, body) of a batched answer; the request's own status for each when the
        answer has no per-event results (network error, 5xx, a sink that does not do batches)."""
        if outcome.ok:
            try:
                results = orjson.loads(outcome.body)["results"]
                if isinstance(results, list) and len(results) == n:
                    return [(int(r["status"]), orjson.dumps(r)) for r in results]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
            return [(502, b"batch answer without per-event results")] * n
        if outcome.body.startswith(b"{"):
            try:
                results = orjson.loads(outcome.body).get("results")
                if isinstance(results, list) and len(results) == n:
                    return [(int(r["status"]), orjson.dumps(r)) for r in results]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                pass
        return [(outcome.code, outcome.body)] * n

    # ------------------------------------------------------------ dead letters

    async def _dead_letter(self, record: Record, event: CloudEvent, outcome: Outcome) -> bool:
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
                await self._send_dead_letter(target, letter, record)
                with self._lock:
                    self.stats.dead_lettered += 1
                return True
            except (ZeroRecError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                attempt += 1
                log.error("[kafka-source %s] dead-letter send failed (%s), retrying", self.spec.name, exc)
                if await self._sleep(self.spec.delivery.backoff_s(min(attempt, 8))):
                    return False
        return False

    async def _send_dead_letter(self, target: Sink, letter: CloudEvent, record: Record) -> None:
        if target.topic is not None:
            await asyncio.to_thread(self.bus.publish, target.topic, [to_kafka_record(letter, key=record.key)])
            return
        headers, body = to_http_binary(letter)
        outcome = await self._post(str(target.url), headers, body, self.spec.delivery.timeout_s)
        if not outcome.ok:
            raise InvalidInputError(f"dead-letter sink answered HTTP {outcome.code or 'nothing'}")


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


def _ensure_topics(bus: EventBus, topics: list[str], stop: threading.Event) -> bool:
    """Create the topics, retrying with backoff while the bus is unreachable; False if stopped."""
    failures = 0
    while not stop.is_set():
        try:
            bus.ensure_topics(topics)
            return True
        except BackendUnavailableError as exc:
            failures += 1
            delay = min(0.5 * 2**failures, 10.0)
            log.error("event bus unreachable (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", action="append", help="file or folder (default: knative/)")
    parser.add_argument("--source", action="append", default=[], help="only this KafkaSource (repeatable)")
    parser.add_argument("--sink", action="append", default=[], help="NAME=URL: where Service NAME listens")
    parser.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument(
        "--delivery",
        choices=("single", "batch"),
        help="single: one binary event per request, as the real KafkaSource (default, or the "
        "zerorec.dev/local-delivery annotation); batch: local throughput mode, "
        "application/cloudevents-batch+json requests",
    )
    parser.add_argument("--batch-size", type=int, help="events per batched request (default 100)")
    parser.add_argument("--max-parallel", type=int, default=8, help="requests in flight at most")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from zerorec.settings import get_settings
    from zerorec.storage import event_bus

    stopping = threading.Event()
    dispatchers: list[KafkaSourceDispatcher] = []

    def _stop(signum: int, frame: object) -> None:
        log.info("signal %s: stopping", signum)
        stopping.set()
        for dispatcher in dispatchers:
            dispatcher.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        bus = event_bus(get_settings())
        dispatchers += build_dispatchers(
            bus,
            manifests=args.manifests or [str(DEFAULT_MANIFESTS)],
            names=args.source,
            sink_overrides=_parse_sinks(args.sink),
            progress_every_s=args.progress_every,
            delivery_mode=args.delivery,
            batch_size=args.batch_size,
            max_parallel=args.max_parallel,
        )
        topics = {t for d in dispatchers for t in d.spec.topics}
        topics |= {d.spec.delivery.dead_letter.topic for d in dispatchers if d.spec.delivery.dead_letter}
        if not _ensure_topics(bus, sorted(t for t in topics if t), stopping):
            bus.close()
            return 0
    except ZeroRecError as exc:  # a bad manifest or setting: retrying cannot help
        log.error("error: %s", exc)
        return 2

    threads = [threading.Thread(target=d.run, name=d.spec.name) for d in dispatchers]
    for thread, dispatcher in zip(threads, dispatchers, strict=True):
        log.info(
            "[kafka-source %s] %s -> %s (%s delivery)",
            dispatcher.spec.name,
            ",".join(dispatcher.spec.topics),
            dispatcher.spec.sink,
            dispatcher.delivery_mode,
        )
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
