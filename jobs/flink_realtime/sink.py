"""The Redis side of the PyFlink job: window counts -> KV hashes, in pipelined batches.

Pure Python (redis only), so it runs in Flink's Python worker and is testable without Flink.
Rows are (kind, id, window_start_ms, count) with kind "item" or "user":
- item: HSET <item_key> <window_start_s> <count>, HINCRBY <item_key> total <count>
- user: HSET <user_key> window_start <s> events <count>, HINCRBY <user_key> total <count>
(window starts are epoch seconds; every key gets EXPIRE ttl_s). Keys are templates with one `{}`,
passed from `zerorec.realtime` by the control function.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_ITEM_KEY = "rt:item:{}:cnt"  # zerorec.realtime.rt_item_counts_key
DEFAULT_USER_KEY = "rt:user:{}"  # zerorec.realtime.rt_user_key
DEFAULT_TTL_S = 2 * 24 * 3600  # zerorec.realtime.FEATURE_TTL_S


Row = tuple[str, str, int, int]


def apply_rows(pipe: Any, rows: Sequence[Row], item_key: str, user_key: str, ttl_s: int) -> None:
    """Queue the Redis commands for `rows` on a pipeline (no I/O)."""
    for kind, ident, window_start_ms, count in rows:
        start_s = str(int(window_start_ms) // 1000)
        if kind == "item":
            key = item_key.format(ident)
            pipe.hset(key, start_s, int(count))
        else:
            key = user_key.format(ident)
            pipe.hset(key, mapping={"window_start": start_s, "events": int(count)})
        pipe.hincrby(key, "total", int(count))
        pipe.expire(key, ttl_s)


class RedisBatchWriter:
    """Buffer rows; flush a Redis pipeline every `batch` rows or `flush_s` seconds (a timer thread)."""

    def __init__(
        self,
        redis_url: str,
        item_key: str = DEFAULT_ITEM_KEY,
        user_key: str = DEFAULT_USER_KEY,
        ttl_s: int = DEFAULT_TTL_S,
        batch: int = 500,
        flush_s: float = 0.5,
    ) -> None:
        self.redis_url, self.item_key, self.user_key = redis_url, item_key, user_key
        self.ttl_s, self.batch, self.flush_s = ttl_s, batch, flush_s
        self._rows: list[Row] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self.written = 0

    def start(self) -> None:
        """Connect and start the periodic flush."""
        import redis

        self._client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self._thread = threading.Thread(target=self._loop, name="redis-flush", daemon=True)
        self._thread.start()

    def add(self, row: Row) -> None:
        """Buffer one row; flush now when the batch is full."""
        with self._lock:
            self._rows.append(row)
            full = len(self._rows) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows in one pipelined round trip (MULTI/EXEC)."""
        with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return
            pipe = self._client.pipeline(transaction=True)
            apply_rows(pipe, rows, self.item_key, self.user_key, self.ttl_s)
            pipe.execute()
            self.written += len(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # the next tick retries; rows stay lost only if Redis stays down
                time.sleep(self.flush_s)

    def close(self) -> None:
        """Stop the timer, flush what is left, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self.flush()
            self._client.close()
