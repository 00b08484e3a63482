"""flink-realtime: the PyFlink job: behavior events from Kafka -> real-time window counts in Redis.

Source: the behavior topic through the Flink Kafka SQL connector (flink-sql-connector-kafka
5.0.0-2.2, `local/infra.sh jars flink-kafka`). Records are CloudEvents in Kafka binary mode: the value
is the event's data JSON, the type is the `ce_type` header; only `dev.zerorec.behavior.v1` records with
a user and an item count (other or malformed records are skipped: `json.ignore-parse-errors`).
Windows: processing-time tumbling windows of `--window-s` seconds (default 60): per item, events in
the window; per user, events in the window. Sink: a Python map function with a Redis client,
`sink.RedisBatchWriter` (pipelined batches). Offsets are committed to the consumer group on each
checkpoint (every `--checkpoint-s`); delivery into Redis is at least once.

Run (in the Flink interpreter, .local-infra/flink-venv):
  python -m jobs.flink_realtime.job --bootstrap 127.0.0.1:19092 --redis-url redis://127.0.0.1:16379/0 \
      --jar "$(local/infra.sh jars flink-kafka)"/flink-sql-connector-kafka-5.0.0-2.2.jar
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobs.flink_realtime.sink import DEFAULT_ITEM_KEY, DEFAULT_TTL_S, DEFAULT_USER_KEY, RedisBatchWriter

BEHAVIOR_TYPE = "dev.zerorec.behavior.v1"
log = logging.getLogger("zerorec.flink_realtime")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's options."""
    p = argparse.ArgumentParser(description="ZeroRec real-time features (PyFlink)")
    p.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    p.add_argument("--topic", default="zerorec.behavior")
    p.add_argument("--group", default="zerorec-flink-realtime", help="Kafka consumer group")
    p.add_argument("--startup", default="group-offsets", choices=["group-offsets", "earliest", "latest"])
    p.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    p.add_argument("--jar", action="append", default=[], help="connector jar (repeatable)")
    p.add_argument("--window-s", type=int, default=60, help="tumbling window length")
    p.add_argument("--checkpoint-s", type=int, default=10)
    p.add_argument("--item-key", default=DEFAULT_ITEM_KEY, help="item hash key template")
    p.add_argument("--user-key", default=DEFAULT_USER_KEY, help="user hash key template")
    p.add_argument("--ttl-s", type=int, default=DEFAULT_TTL_S)
    p.add_argument("--batch", type=int, default=500, help="rows per Redis pipeline")
    p.add_argument("--parallelism", type=int, default=1)
    return p.parse_args(argv)


def source_ddl(a: argparse.Namespace) -> str:
    """The Kafka source table: data JSON fields, the ce_type header, a processing-time attribute."""
    startup = {"earliest": "earliest-offset", "latest": "latest-offset"}.get(a.startup, "group-offsets")
    return f"""
CREATE TABLE behavior (
  user_id STRING,
  item_id STRING,
  kind STRING,
  headers MAP<STRING, BYTES> METADATA FROM 'headers' VIRTUAL,
  pt AS PROCTIME()
) WITH (
  'connector' = 'kafka',
  'topic' = '{a.topic}',
  'properties.bootstrap.servers' = '{a.bootstrap}',
  'properties.group.id' = '{a.group}',
  'properties.auto.offset.reset' = 'latest',
  'scan.startup.mode' = '{startup}',
  'format' = 'json',
  'json.fail-on-missing-field' = 'false',
  'json.ignore-parse-errors' = 'true'
)"""


def counts_sql(window_s: int) -> str:
    """Per item and per user event counts in tumbling processing-time windows, as one stream."""
    window = f"TABLE(TUMBLE(TABLE valid, DESCRIPTOR(pt), INTERVAL '{int(window_s)}' SECOND))"
    start_ms = "UNIX_TIMESTAMP(CAST(window_start AS STRING)) * 1000"
    return f"""
WITH valid AS (
  SELECT user_id, item_id, pt FROM behavior
  WHERE user_id IS NOT NULL AND item_id IS NOT NULL AND kind IS NOT NULL
    AND CAST(headers['ce_type'] AS STRING) = '{BEHAVIOR_TYPE}'
)
SELECT 'item' AS kind, item_id AS id, {start_ms} AS ws, COUNT(*) AS cnt
FROM {window} GROUP BY window_start, window_end, item_id
UNION ALL
SELECT 'user' AS kind, user_id AS id, {start_ms} AS ws, COUNT(*) AS cnt
FROM {window} GROUP BY window_start, window_end, user_id
"""


def build(a: argparse.Namespace) -> Any:
    """The stream environment with the job defined (not yet executed)."""
    from pyflink.common import Configuration, Types
    from pyflink.datastream import MapFunction, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    conf.set_string("python.executable", sys.executable)
    conf.set_string("table.local-time-zone", "UTC")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(a.parallelism)
    env.enable_checkpointing(a.checkpoint_s * 1000)
    jars = [Path(j).resolve().as_uri() for j in a.jar]
    if jars:
        env.add_jars(*jars)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(source_ddl(a))
    counts = t_env.sql_query(counts_sql(a.window_s))
    rows = t_env.to_data_stream(counts)

    writer_args = (a.redis_url, a.item_key, a.user_key, a.ttl_s, a.batch)

    class ToRedis(MapFunction):
        """Hand each row to a RedisBatchWriter (one per parallel instance)."""

        def open(self, runtime_context: Any) -> None:
            self.writer = RedisBatchWriter(*writer_args)
            self.writer.start()

        def map(self, row: Any) -> int:
            self.writer.add((str(row[0]), str(row[1]), int(row[2]), int(row[3])))
            return 1

        def close(self) -> None:
            self.writer.close()

    rows.map(ToRedis(), output_type=Types.INT()).filter(lambda _: False).print()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Define and run the job until it is cancelled (SIGTERM from the control function)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    a = parse_args(argv)
    log.info(
        "flink-realtime: topic %s at %s -> %s, window %ss", a.topic, a.bootstrap, a.redis_url, a.window_s
    )
    build(a).execute("zerorec-flink-realtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
