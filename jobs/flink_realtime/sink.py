"""The Redis side of the PyFlink job: absolute window counts -> rt:* hashes, acknowledged before a
checkpoint completes.

Pure Python (redis only), so it runs in Flink's Python worker and is testable without Flink.
A row is (kind, id, window_start_s, count): kind "item" or "user", `count` the ABSOLUTE number of
events of that id in that window so far (the job's aggregate, not an increment). Each row is one
`MAX_SCRIPT` call: HSET <key> <window_start_s> <count> unless the field already holds more, drop
fields older than `retention_s`, EXPIRE the key. So a row written twice (a replay after a crash,
an update that arrives after a newer one) leaves the same value: writes are idempotent.

`RedisWindowWriter` buffers rows and writes them in one pipelined batch; rows leave the buffer only
after Redis acknowledged the batch (an error keeps them, and raises). `AckingBatcher` is what the
Flink AsyncFunction awaits per row: it returns once that row's batch was acknowledged. Flink's
Python async operator waits for every in-flight row before a checkpoint completes, so the offsets a
checkpoint commits are never ahead of what Redis holds (at least once), and an error fails the task:
it restarts from its last checkpoint and replays into the same absolute values.
Key templates hold one `%s` (the id): `rt:user:{%s}` from `zerorec.realtime`, passed by the control.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

DEFAULT_ITEM_KEY = "rt:item:{%s}"  # zerorec.realtime.rt_item_counts_key("%s")
DEFAULT_USER_KEY = "rt:user:{%s}"  # zerorec.realtime.rt_user_key("%s")
DEFAULT_TTL_S = 2 * 3600  # zerorec.realtime.RT_TTL_S
DEFAULT_RETENTION_S = 3600  # zerorec.realtime.RT_RETENTION_S

# KEYS[1] the hash; ARGV: window start (s), absolute count, key TTL (s), oldest start to keep (s),
# fields above which to trim. Returns 1 when the count was raised, 0 when the field held as much.
MAX_SCRIPT = """
local new = tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local raised = 0
if new > old then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  raised = 1
end
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then
  local oldest = tonumber(ARGV[4])
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    local start = tonumber(f)
    if start == nil or start < oldest then redis.call('HDEL', KEYS[1], f) end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return raised
"""

Row = tuple[str, str, int, int]


def key_of(row: Row, item_key: str, user_key: str) -> str:
    """The rt:* hash a row goes to."""
    kind, ident = row[0], row[1]
    return (item_key if kind == "item" else user_key) % ident


def script_args(row: Row, ttl_s: int, retention_s: int, window_s: int) -> list[int]:
    """MAX_SCRIPT's ARGV for a row."""
    start = int(row[2])
    return [start, int(row[3]), ttl_s, start - retention_s, retention_s // window_s + 2]


class RedisWindowWriter:
    """Buffered, pipelined, acknowledged writes of window rows (thread-safe `add`)."""

    def __init__(
        self,
        redis_url: str,
        item_key: str = DEFAULT_ITEM_KEY,
        user_key: str = DEFAULT_USER_KEY,
        ttl_s: int = DEFAULT_TTL_S,
        retention_s: int = DEFAULT_RETENTION_S,
        window_s: int = 60,
        batch: int = 500,
        client: Any = None,
    ) -> None:
        self.redis_url, self.item_key, self.user_key = redis_url, item_key, user_key
        self.ttl_s, self.retention_s, self.window_s, self.batch = ttl_s, retention_s, window_s, batch
        self._client = client
        self._sha: str | None = None
        self._rows: list[tuple[int, Row]] = []  # (sequence number, row), in arrival order
        self._seq = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one batch in flight: rows reach Redis in order
        self.written = 0

    def connect(self) -> None:
        """A redis-py client: `redis-cluster://h:p[,h:p]` a Redis Cluster, else one server."""
        if self._client is not None:
            return
        if self.redis_url.startswith("redis-cluster://"):
            from redis.cluster import ClusterNode, RedisCluster

            nodes = [h.rsplit(":", 1) for h in self.redis_url.removeprefix("redis-cluster://").split(",")]
            self._client = RedisCluster(
                startup_nodes=[ClusterNode(h, int(p)) for h, p in nodes], socket_timeout=5
            )
        else:
            import redis

            self._client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=3)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> int:
        """Buffer one row; its sequence number (see `flush`)."""
        with self._lock:
            self._seq += 1
            self._rows.append((self._seq, row))
            return self._seq

    def flush(self) -> int:
        """Write the buffered rows in pipelined batches; they leave the buffer only once Redis has
        answered for them (an error raises and keeps them). Returns the highest sequence number
        acknowledged so far (every row up to it is in Redis)."""
        with self._write_lock:
            while True:
                with self._lock:
                    rows = self._rows[: self.batch]
                if not rows:
                    return self._seq_acked()
                self.connect()
                if self._sha is None:
                    self._sha = self._client.script_load(MAX_SCRIPT)
                self._write([r for _, r in rows])
                with self._lock:
                    del self._rows[: len(rows)]
                    self.written += len(rows)

    def _seq_acked(self) -> int:
        with self._lock:
            return self._rows[0][0] - 1 if self._rows else self._seq

    def _write(self, rows: Sequence[Row]) -> None:
        """One pipeline of EVALSHA calls (`execute_command`: a cluster pipeline blocks the evalsha
        method, not the command; each call goes to its key's node). A node that lacks the script (a
        restart, a failover, a node script_load did not reach) runs it by EVAL, which loads it
        there. Any other error raises: the batch stays buffered."""
        from redis.exceptions import NoScriptError

        calls = [
            (
                key_of(row, self.item_key, self.user_key),
                script_args(row, self.ttl_s, self.retention_s, self.window_s),
            )
            for row in rows
        ]
        pipe = self._client.pipeline(transaction=False)
        for key, args in calls:
            pipe.execute_command("EVALSHA", self._sha, 1, key, *args)
        for (key, args), reply in zip(calls, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, NoScriptError):
                self._client.execute_command("EVAL", MAX_SCRIPT, 1, key, *args)
            elif isinstance(reply, Exception):
                raise reply

    def close(self) -> None:
        """Flush what is left (raises if Redis does not take it) and disconnect."""
        try:
            self.flush()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None


class AckingBatcher:
    """`await put(row)` returns once the row is in Redis. Rows that arrive within `linger_s` of each
    other share one pipelined batch; a full batch goes at once. Runs on one asyncio loop; the
    blocking Redis round trip runs in a worker thread."""

    def __init__(self, writer: RedisWindowWriter, linger_s: float = 0.05) -> None:
        self.writer = writer
        self.linger_s = linger_s
        self.acked = 0
        self._flushing: asyncio.Lock | None = None

    async def put(self, row: Row) -> None:
        """Buffer `row` and return once Redis acknowledged it; raise (the task fails) if not."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        mine = self.writer.add(row)
        if len(self.writer) < self.writer.batch:
            await asyncio.sleep(self.linger_s)  # let the rows of this bundle join the batch
        async with self._flushing:
            if self.acked >= mine:
                return
            self.acked = max(self.acked, await asyncio.to_thread(self.writer.flush))
        if self.acked < mine:  # cannot happen: flush empties the buffer or raises
            raise RuntimeError(f"row {mine} not acknowledged (acked up to {self.acked})")
