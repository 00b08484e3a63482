"""Worker tasks (the Celery worker's jobs), each triggered by one task CloudEvent.

- `dev.zerorec.task.catalogue-import.v1`: a CSV/Parquet catalogue object -> item.upserted events on
  the items topic (`zerorec.catalog`), never straight into the KV: the item stream stays the single
  source of truth and the consumer applies it like any other change.
- `dev.zerorec.task.rebuild-hot.v1`: refresh the hot lists (global and per category) from the hour
  buckets the consumer keeps as events arrive (`realtime.hot_count_writes`): the top `n` of the
  last `window_hours`, replaced atomically. This also bounds the live hot zsets (the consumer only
  ever adds members). It reads no log: its cost does not grow with the topic.
- `dev.zerorec.task.export-events.v1`: the behavior log -> Parquet under `<prefix>/<date>/...` for
  training (default prefix `exports/events`, where every reader looks). Default: since the last
  export (consumer group `settings.export_group`, committed after each object is written: a crash
  re-exports, never skips; rows carry `event_id` to dedup). One run exports what was in the log
  when it started (records stamped later wait for the next run: under a steady stream the log is
  never "caught up") and stops after EXPORT_BUDGET_S, inside the PingSource's delivery timeout,
  reporting `complete: false`; the next tick goes on from the commit. Rows are written in chunks
  of EXPORT_CHUNK, so the worker's memory does not grow with the backlog.
  With `since`/`until`: a backfill that reads the whole log and commits nothing.

PingSources send the same tasks as `dev.knative.sources.ping` with the `zerorectype` extension;
`run_task` takes the effective type, so both paths are one.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from zerorec import catalog
from zerorec.cloudevents_io import from_kafka_record, validate
from zerorec.errors import InvalidInputError
from zerorec.event_schemas import catalogue, parse_timestamp
from zerorec.realtime import (
    DELETED_KEY,
    DELETED_MAX,
    HOT_BUCKET_DEPTH,
    HOT_CATEGORIES_KEY,
    HOT_WINDOW_MAX_S,
    hot_bucket_key,
    hot_key,
    hot_window_buckets,
)
from zerorec.settings import Settings
from zerorec.storage.bus import EventBus, Record
from zerorec.storage.kv import Delete, KVStore, SetAdd, SetMembers, WriteOp, ZIncr, ZTop
from zerorec.storage.objects import ObjectStore

CATALOGUE_IMPORT = "dev.zerorec.task.catalogue-import.v1"
REBUILD_HOT = "dev.zerorec.task.rebuild-hot.v1"
EXPORT_EVENTS = "dev.zerorec.task.export-events.v1"
BEHAVIOR_TYPE = "dev.zerorec.behavior.v1"
EXPORT_CHUNK = 20_000  # rows per Parquet object: ~10 MB of row dicts in the worker at most
EXPORT_BUDGET_S = 20.0  # one export run, well inside the PingSource's delivery timeout (30 s locally)
# Where the export writes and every reader (training, feature engineering, vectors) looks by default.
EXPORT_PREFIX = "exports/events"
MAX_RECORDS = 2_000_000
IDLE_S = 1.5  # caught up: this long without a record once records came
FIRST_WAIT_S = 5.0  # an empty log: this long without any record (a Kafka group join takes ~0.5 s)

EXPORT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("kind", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("value", pa.float64()),
        ("context", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)


@dataclass
class Stores:
    """What the tasks work on."""

    settings: Settings
    bus: EventBus
    kv: KVStore
    objects: ObjectStore


def run_task(task_type: str, data: Any, stores: Stores) -> dict[str, Any]:
    """Run the task `task_type` with its (validated) data; returns a JSON-able report."""
    data = data or {}
    s = stores.settings
    if task_type == CATALOGUE_IMPORT:
        return catalogue_import(stores.objects, stores.bus, s.topic_items, data["key"], data["format"])
    if task_type == REBUILD_HOT:
        return rebuild_hot(
            stores.kv,
            # JSON Schema's "integer" admits 5.0: the slices and windows below need ints
            window_hours=int(data.get("window_hours", 24)),
            n=int(data.get("n", 200)),
        )
    if task_type == EXPORT_EVENTS:
        return export_events(
            stores.bus,
            stores.objects,
            s.topic_behavior,
            group=s.export_group,
            prefix=data.get("prefix", EXPORT_PREFIX),
            since=data.get("since"),
            until=data.get("until"),
        )
    raise InvalidInputError(f"the worker has no task {task_type!r}")


# ---------------------------------------------------------------- catalogue import


def _rows(blob: bytes, fmt: str) -> Iterator[dict[str, Any]]:
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(io.BytesIO(blob))
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInputError(f"not a readable Parquet file: {exc}") from None
        for batch in parquet.iter_batches(batch_size=catalog.CHUNK):
            yield from batch.to_pylist()
        return
    import pandas as pd

    try:
        chunks = pd.read_csv(io.BytesIO(blob), dtype=str, keep_default_na=False, chunksize=catalog.CHUNK)
        for frame in chunks:
            yield from frame.to_dict("records")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"not a readable CSV file: {exc}") from None


def catalogue_import(objects: ObjectStore, bus: EventBus, topic: str, key: str, fmt: str) -> dict[str, Any]:
    """Publish every row of the catalogue object `key` as an item.upserted event."""
    blob = objects.get(key)  # NotFoundError if missing
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    report = catalog.publish_rows(bus, topic, _rows(blob, fmt), default_created_at=now)
    return {"task": CATALOGUE_IMPORT, "key": key, **report.to_json()}


# ---------------------------------------------------------------- reading the log


class LogReader:
    """Read a topic until caught up; offsets move only through `commit` (a context manager)."""

    def __init__(
        self,
        bus: EventBus,
        topic: str,
        group: str,
        *,
        from_beginning: bool = True,
        max_records: int = MAX_RECORDS,
        idle_s: float | None = None,
        first_wait_s: float | None = None,
        until_ms: int | None = None,
        budget_s: float | None = None,
    ) -> None:
        """`until_ms`: records stamped at or after it are not read (nor any later record of their
        partition, so a commit never skips one); `budget_s`: stop reading after that long
        (`exhausted` tells)."""
        self._consumer = bus.consumer([topic], group, from_beginning=from_beginning)
        self.max_records = max_records
        self.idle_s = IDLE_S if idle_s is None else idle_s
        self.first_wait_s = FIRST_WAIT_S if first_wait_s is None else first_wait_s
        self.until_ms = until_ms
        self.budget_s = budget_s
        self.exhausted = False
        self._closed: set[tuple[str, int]] = set()  # partitions that reached until_ms
        self._last: dict[tuple[str, int], Record] = {}

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()

    def batches(self) -> Iterator[list[Record]]:
        """Batches until `idle_s` without records once data came (or `first_wait_s` with none)."""
        started = last = time.monotonic()
        seen = 0
        while seen < self.max_records:
            if self.budget_s is not None and time.monotonic() - started > self.budget_s:
                self.exhausted = True
                return
            records = self._before_until(self._consumer.poll(min(1000, self.max_records - seen), 0.5))
            now = time.monotonic()
            if not records:
                if (seen and now - last > self.idle_s) or (not seen and now - started > self.first_wait_s):
                    return
                continue
            last, seen = now, seen + len(records)
            for r in records:
                self._last[(r.topic, r.partition)] = r
            yield records

    def _before_until(self, records: list[Record]) -> list[Record]:
        """The records stamped before until_ms, up to the first later one of each partition (a
        record without a timestamp, 0, counts as before)."""
        if self.until_ms is None:
            return records
        out = []
        for r in records:
            key = (r.topic, r.partition)
            if key in self._closed:
                continue
            if r.timestamp_ms >= self.until_ms:
                self._closed.add(key)
                continue
            out.append(r)
        return out

    def commit(self) -> None:
        """Commit everything yielded so far."""
        if self._last:
            self._consumer.commit(list(self._last.values()))
            self._last.clear()


def _behavior(record: Record) -> dict[str, Any] | None:
    """The record's validated behavior event as a row, or None if it is not a valid one."""
    try:
        event = from_kafka_record(record)
        validate(event, catalogue())
    except InvalidInputError:
        return None
    if event["type"] != BEHAVIOR_TYPE:
        return None
    data = event.get_data()
    return {
        "event_id": str(event["id"]),
        "source": str(event["source"]),
        "user_id": data["user_id"],
        "item_id": data["item_id"],
        "kind": data["kind"],
        "timestamp": parse_timestamp(data["timestamp"]).astimezone(UTC),
        "value": data.get("value"),
        "context": json.dumps(data["context"], sort_keys=True) if "context" in data else None,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
    }


# ---------------------------------------------------------------- hot lists


def rebuild_hot(
    kv: KVStore,
    *,
    window_hours: int = 24,
    n: int = 200,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Replace hot:all and hot:cat:* with the top `n` of the consumer's hour buckets in the last
    `window_hours` (realtime.hot_count_writes): two pipelined reads and one atomic write, whatever
    the size of the behavior log; it reads no topic and joins no consumer group. Categories that
    had counts but have none in the window lose their list (and their place in the set)."""
    window_s = window_hours * 3600
    if window_s > HOT_WINDOW_MAX_S:
        raise InvalidInputError(
            f"window_hours must be at most {HOT_WINDOW_MAX_S // 3600}: the hour buckets expire after that"
        )
    buckets = hot_window_buckets((now or datetime.now(UTC)).timestamp(), window_s)
    categories, deleted = kv.read([SetMembers(HOT_CATEGORIES_KEY), ZTop(DELETED_KEY, DELETED_MAX)])
    gone = {item for item, _ in deleted}  # deleted items leave the lists; their buckets keep them
    order: list[str | None] = [None, *sorted(categories)]
    results = kv.read([ZTop(hot_bucket_key(b, c), HOT_BUCKET_DEPTH) for c in order for b in buckets])
    ops: list[WriteOp] = []
    kept: list[str] = []
    summed_all: dict[str, float] = {}
    for k, category in enumerate(order):
        scores: dict[str, float] = {}
        for top in results[k * len(buckets) : (k + 1) * len(buckets)]:
            for member, score in top:
                if member not in gone:
                    scores[member] = scores.get(member, 0.0) + score
        if category is None:
            summed_all = scores
        elif scores:
            kept.append(category)
        ops += _replace_zset(hot_key(category), scores, n)
    ops.append(Delete(HOT_CATEGORIES_KEY))
    if kept:
        ops.append(SetAdd(HOT_CATEGORIES_KEY, tuple(kept)))
    kv.write(ops)  # atomic: readers see the old lists or the new ones
    return {
        "task": REBUILD_HOT,
        "buckets": len(buckets),
        "items": len(summed_all),
        "categories": len(kept),
        "window_hours": window_hours,
        "n": n,
    }


def _replace_zset(key: str, scores: dict[str, float], n: int) -> list[WriteOp]:
    top = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [Delete(key), *(ZIncr(key, member, score) for member, score in top)]


# ---------------------------------------------------------------- export


def warm_up() -> None:
    """Build one tiny Arrow array now: pyarrow imports pandas on its first array (~50 MB and
    seconds of imports), which would otherwise land in the first export's delivery and show as
    growth of the worker's memory after its start. Called by the worker at cold start."""
    pa.array([0], pa.int64())


def _write_parquet(objects: ObjectStore, prefix: str, rows: Sequence[dict[str, Any]], run: str) -> list[str]:
    by_date: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_date.setdefault(row["timestamp"].date().isoformat(), []).append(row)
    keys = []
    for date, part in sorted(by_date.items()):
        table = pa.Table.from_pylist(part, schema=EXPORT_SCHEMA)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        first = min(r["offset"] for r in part)
        key = f"{prefix.rstrip('/')}/{date}/part-{run}-{first:012d}.parquet"
        objects.put(key, sink.getvalue())
        keys.append(key)
    return keys


def export_events(
    bus: EventBus,
    objects: ObjectStore,
    topic: str,
    *,
    group: str,
    prefix: str = EXPORT_PREFIX,
    since: str | None = None,
    until: str | None = None,
    chunk: int = EXPORT_CHUNK,
    budget_s: float | None = EXPORT_BUDGET_S,
) -> dict[str, Any]:
    """Export valid behavior events to Parquet, one object per event date and chunk; what was in
    the log at the start, for at most `budget_s` (not for a backfill, which cannot resume)."""
    backfill = since is not None or until is not None
    lo = parse_timestamp(since) if since else None
    hi = parse_timestamp(until) if until else None
    started = datetime.now(UTC)
    run = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    if backfill:
        group = f"zerorec-export-backfill-{uuid.uuid4().hex[:12]}"
    exported = skipped = 0
    keys: list[str] = []
    rows: list[dict[str, Any]] = []
    until_ms = int(started.timestamp() * 1000)
    with LogReader(bus, topic, group, until_ms=until_ms, budget_s=None if backfill else budget_s) as reader:
        for batch in reader.batches():
            for record in batch:
                row = _behavior(record)
                if row is None:
                    skipped += 1
                elif (lo is None or row["timestamp"] >= lo) and (hi is None or row["timestamp"] < hi):
                    rows.append(row)
            if len(rows) >= chunk:
                keys += _write_parquet(objects, prefix, rows, run)
                exported, rows = exported + len(rows), []
                if not backfill:
                    reader.commit()  # only after the objects are written
        if rows:
            keys += _write_parquet(objects, prefix, rows, run)
            exported += len(rows)
        if not backfill:
            reader.commit()
    return {
        "task": EXPORT_EVENTS,
        "exported": exported,
        "skipped": skipped,
        "objects": keys,
        "backfill": backfill,
        "complete": not reader.exhausted,  # false: the budget ran out; the next run goes on
    }
