"""flink-realtime: the PyFlink job: behavior events from Kafka -> real-time window counts in Redis.

Source: the behavior topic through the Flink Kafka SQL connector (flink-sql-connector-kafka
5.0.0-2.2, `local/infra.sh jars flink-kafka`). Records are CloudEvents in Kafka binary mode: the value
is the event's data JSON, the type is the `ce_type` header; only `dev.zerorec.behavior.v1` records with
a user and an item count (other or malformed records are skipped: `json.ignore-parse-errors`).

Counts: per item and per user, the events in each `--window-s` window of the record's Kafka timestamp
(set when the behavior function produced it, stored in the log: a replay puts every event in the
same window again). A continuous GROUP BY (kind, id, window start) emits the ABSOLUTE count of a
window each time it changes (mini-batched, `--emit-ms`), never an increment; events older than
`--max-age-s` are skipped and a window's state is dropped after `--max-age-s` + 1 h of quiet.

Sink: `sink.AckingBatcher` in a Flink AsyncFunction: a row's call returns only once Redis has
acknowledged its pipelined batch, and Flink waits for every in-flight call before a checkpoint
completes, so the offsets and window state a checkpoint holds are never ahead of Redis (at least
once). Writes are idempotent (`sink.MAX_SCRIPT`: a window's field takes the larger count), so a
restart from the last checkpoint replays into the same values: no loss, no double count.
Checkpoints every `--checkpoint-s` under `--checkpoint-dir`, retained on cancel; `--restore PATH`
starts from one (the control function picks the newest). Offsets are committed on checkpoints.
Without a checkpoint (a new pod) `--startup recent` (the default) reads the log from `--max-age-s`
ago: every live window is recomputed from its events and written again, to the same values.

Run (in the Flink interpreter, .local-infra/flink-venv):
  python -m jobs.flink_realtime.job --bootstrap 127.0.0.1:19092 --redis-url redis://127.0.0.1:16379/0 \
      --jar "$(local/infra.sh jars flink-kafka)"/flink-sql-connector-kafka-5.0.0-2.2.jar
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.flink_realtime.sink import (
    DEFAULT_ITEM_KEY,
    DEFAULT_RETENTION_S,
    DEFAULT_TTL_S,
    DEFAULT_USER_KEY,
    AckingBatcher,
    RedisWindowWriter,
)

BEHAVIOR_TYPE = "dev.zerorec.behavior.v1"
log = logging.getLogger("zerorec.flink_realtime")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's options."""
    p = argparse.ArgumentParser(description="ZeroRec real-time features (PyFlink)")
    p.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    p.add_argument("--topic", default="zerorec.behavior")
    p.add_argument("--group", default="zerorec-flink-realtime", help="Kafka consumer group")
    p.add_argument(
        "--startup",
        default="recent",
        choices=["recent", "group-offsets", "earliest", "latest"],
        help="recent: the records of the last --max-age-s (recomputes every live window exactly)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    p.add_argument("--jar", action="append", default=[], help="connector jar (repeatable)")
    p.add_argument("--window-s", type=int, default=60, help="count window length")
    p.add_argument("--checkpoint-s", type=int, default=10)
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (a path or URI)")
    p.add_argument("--restore", default=None, help="a retained checkpoint (chk-N folder) to start from")
    p.add_argument("--item-key", default=DEFAULT_ITEM_KEY, help="item hash key template (one %%s)")
    p.add_argument("--user-key", default=DEFAULT_USER_KEY, help="user hash key template (one %%s)")
    p.add_argument("--ttl-s", type=int, default=DEFAULT_TTL_S)
    p.add_argument("--max-age-s", type=int, default=DEFAULT_RETENTION_S, help="older events are skipped")
    p.add_argument("--emit-ms", type=int, default=500, help="mini-batch latency of the count updates")
    p.add_argument("--batch", type=int, default=500, help="rows per Redis pipeline")
    p.add_argument("--parallelism", type=int, default=1)
    return p.parse_args(argv)


def source_ddl(a: argparse.Namespace) -> str:
    """The Kafka source table: data JSON fields, the ce_type header, the record's timestamp."""
    startup = {"earliest": "earliest-offset", "latest": "latest-offset", "recent": "timestamp"}.get(
        a.startup, "group-offsets"
    )
    since_ms = int((time.time() - a.max_age_s) * 1000)
    since = f"\n  'scan.startup.timestamp-millis' = '{since_ms}'," if a.startup == "recent" else ""
    return f"""
CREATE TABLE behavior (
  user_id STRING,
  item_id STRING,
  kind STRING,
  headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
  ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
) WITH (
  'connector' = 'kafka',
  'topic' = '{a.topic}',
  'properties.bootstrap.servers' = '{a.bootstrap}',
  'properties.group.id' = '{a.group}',
  'properties.auto.offset.reset' = 'latest',
  'scan.startup.mode' = '{startup}',{since}
  'format' = 'json',
  'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'true'
)"""


def counts_sql(window_s: int, max_age_s: int = DEFAULT_RETENTION_S) -> str:
    """Absolute per item and per user event counts per window of the record timestamp, as one
    updating stream of (kind, id, window start in epoch seconds, count)."""
    w = int(window_s)
    return f"""
WITH valid AS (
  SELECT user_id, item_id, epoch_s / {w} * {w} AS ws FROM (
    SELECT *, UNIX_TIMESTAMP(DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm:ss')) AS epoch_s FROM behavior
  )
  WHERE user_id IS NOT NULL AND item_id IS NOT NULL AND kind IS NOT NULL
    AND CAST(headers['ce_type'] AS STRING) = '{BEHAVIOR_TYPE}'
    AND epoch_s >= UNIX_TIMESTAMP() - {int(max_age_s)}
)
SELECT kind, id, ws, COUNT(*) AS cnt FROM (
  SELECT 'item' AS kind, item_id AS id, ws FROM valid
  UNION ALL
  SELECT 'user' AS kind, user_id AS id, ws FROM valid
) GROUP BY kind, id, ws
"""


def job_config(a: argparse.Namespace) -> dict[str, str]:
    """Flink settings: checkpoints (retained, restorable), restarts, state TTL, mini-batches."""
    conf = {
        "python.executable": sys.executable,
        "table.local-time-zone": "UTC",
        "execution.checkpointing.interval": f"{a.checkpoint_s * 1000} ms",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "2147483647",
        "restart-strategy.fixed-delay.delay": "5 s",
        "table.exec.state.ttl": f"{(a.max_age_s + 3600) * 1000} ms",
        "table.exec.mini-batch.enabled": "true",
        "table.exec.mini-batch.allow-latency": f"{a.emit_ms} ms",
        "table.exec.mini-batch.size": "1000",
    }
    if a.checkpoint_dir:
        conf["execution.checkpointing.dir"] = _uri(a.checkpoint_dir)
    if a.restore:
        conf["execution.state-recovery.path"] = _uri(a.restore)
    return conf


def _uri(path: str) -> str:
    return path if "://" in path else Path(path).resolve().as_uri()


def build(a: argparse.Namespace) -> Any:
    """The stream environment with the job defined (not yet executed)."""
    from pyflink.common import Configuration, RowKind, Time, Types
    from pyflink.datastream import AsyncDataStream, AsyncFunction, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    for key, value in job_config(a).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(a.parallelism)
    jars = [Path(j).resolve().as_uri() for j in a.jar]
    if jars:
        env.add_jars(*jars)
    t_env = StreamTableEnvironment.create(env)
    for key, value in job_config(a).items():
        if key.startswith("table."):
            t_env.get_config().set(key, value)
    t_env.execute_sql(source_ddl(a))
    rows = t_env.to_changelog_stream(t_env.sql_query(counts_sql(a.window_s, a.max_age_s)))

    writer_args = (a.redis_url, a.item_key, a.user_key, a.ttl_s, a.max_age_s, a.window_s, a.batch)
    superseded = (RowKind.UPDATE_BEFORE, RowKind.DELETE)

    class ToRedis(AsyncFunction):
        """Each count row into Redis; the call returns once Redis acknowledged it."""

        def open(self, runtime_context: Any) -> None:
            self.writer = RedisWindowWriter(*writer_args)
            self.batcher = AckingBatcher(self.writer)

        async def async_invoke(self, row: Any) -> list[int]:
            if row.get_row_kind() in superseded:  # the update's new value follows: write that
                return []
            await self.batcher.put((str(row[0]), str(row[1]), int(row[2]), int(row[3])))
            return [1]

        def close(self) -> None:
            self.writer.close()

    written = AsyncDataStream.ordered_wait(
        rows, ToRedis(), Time.seconds(60), capacity=1000, output_type=Types.INT()
    )
    written.filter(lambda _: False).print()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Define and run the job until it is cancelled (SIGTERM from the control function)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    a = parse_args(argv)
    log.info(
        "flink-realtime: topic %s at %s -> %s, window %ss, restore %s",
        a.topic,
        a.bootstrap,
        a.redis_url,
        a.window_s,
        a.restore,
    )
    build(a).execute("zerorec-flink-realtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
