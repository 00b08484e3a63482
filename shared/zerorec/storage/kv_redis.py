"""Key-value store backend on Redis (redis-py): pipelined reads, atomic scripted writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.storage.kv import (
    Delete,
    Get,
    HGetAll,
    HIncr,
    HMGet,
    HSet,
    KVStore,
    ListPush,
    ListRange,
    ReadOp,
    Set,
    SetAdd,
    SetMembers,
    WriteOp,
    ZIncr,
    ZRem,
    ZTop,
)
from zerorec.storage.kv_memory import check_write

if TYPE_CHECKING:
    from zerorec.settings import Settings

# One script serves `write`, `apply_once` and `apply_many`. ARGV[1] = token TTL, ARGV[2] = JSON list
# of [token index into KEYS (0: no token), ops], each op [cmd, index into KEYS, args...]. Phase 1
# skips entries whose token is set (or seen earlier in the batch) and type-checks every remaining op,
# tracking key types across entries; phase 2 writes, and sets each token only after its ops. Redis
# scripts do not roll back, so an error in phase 1 returning before any write is what keeps a batch
# all or nothing and a token never set for unapplied ops. Returns one 0/1 per entry.
_APPLY_LUA = r"""
local ttl = ARGV[1]
local batch = cjson.decode(ARGV[2])
local want = {HSET='hash', HINCR='hash', ZINCR='zset', ZREM='zset', LPUSH='list', SADD='set'}
local types, seen, result = {}, {}, {}
for i, entry in ipairs(batch) do
  local token = entry[1] > 0 and KEYS[entry[1]] or nil
  if token and (seen[token] or redis.call('EXISTS', token) == 1) then
    result[i] = 0
  else
    if token then seen[token] = true end
    result[i] = 1
    for _, op in ipairs(entry[2]) do
      local c, k = op[1], KEYS[op[2]]
      local t = types[k] or redis.call('TYPE', k)['ok']
      if c == 'SET' then t = 'string'
      elseif c == 'DEL' then t = 'none'
      else
        local w = want[c]
        if w == nil then return redis.error_reply('ERR unknown op ' .. tostring(c)) end
        if t ~= 'none' and t ~= w then
          return redis.error_reply('WRONGTYPE key ' .. k .. ' holds a ' .. t .. ', not a ' .. w)
        end
        if c == 'HINCR' and t == 'hash' then
          local v = redis.call('HGET', k, op[3])
          if v and not tonumber(v) then
            return redis.error_reply('ERR hash field ' .. k .. '/' .. op[3] .. ' is not a number')
          end
        end
        if c ~= 'ZREM' then t = w end
      end
      types[k] = t
    end
  end
end
local function chunked(cmd, k, items, step)
  for i = 1, #items, step do
    redis.call(cmd, k, unpack(items, i, math.min(i + step - 1, #items)))
  end
end
for i, entry in ipairs(batch) do
  if result[i] == 1 then
    for _, op in ipairs(entry[2]) do
      local c, k = op[1], KEYS[op[2]]
      if c == 'SET' then
        if op[4] ~= '' then redis.call('SET', k, op[3], 'EX', op[4]) else redis.call('SET', k, op[3]) end
      elseif c == 'DEL' then redis.call('DEL', k)
      elseif c == 'HSET' then chunked('HSET', k, op[3], 1000)
      elseif c == 'HINCR' then redis.call('HINCRBYFLOAT', k, op[3], op[4])
      elseif c == 'ZINCR' then redis.call('ZINCRBY', k, op[4], op[3])
      elseif c == 'ZREM' then redis.call('ZREM', k, op[3])
      elseif c == 'LPUSH' then
        chunked('LPUSH', k, op[3], 1000)
        redis.call('LTRIM', k, 0, op[4] - 1)
      elseif c == 'SADD' then chunked('SADD', k, op[3], 1000)
      end
    end
    if entry[1] > 0 then redis.call('SET', KEYS[entry[1]], '1', 'EX', ttl) end
  end
end
return result
"""


def _key_index(key: str, keys: list[str], index: dict[str, int], first_index: int) -> int:
    found = index.get(key)
    if found is None:
        found = index[key] = first_index + len(keys)
        keys.append(key)
    return found


def _encode_ops(
    ops: Sequence[WriteOp], keys: list[str], index: dict[str, int], first_index: int = 1
) -> list[list[Any]]:
    """Ops as script entries [cmd, index into KEYS, args...]; new keys are appended to `keys`."""
    encoded: list[list[Any]] = []

    def ki(key: str) -> int:
        return _key_index(key, keys, index, first_index)

    for op in ops:
        check_write(op)
        if isinstance(op, Set):
            encoded.append(["SET", ki(op.key), op.value, "" if op.ttl_s is None else str(op.ttl_s)])
        elif isinstance(op, Delete):
            encoded.append(["DEL", ki(op.key)])
        elif isinstance(op, HSet):
            flat = [x for kv in op.mapping.items() for x in kv]
            encoded.append(["HSET", ki(op.key), flat])
        elif isinstance(op, HIncr):
            encoded.append(["HINCR", ki(op.key), op.field, repr(float(op.amount))])
        elif isinstance(op, ZIncr):
            encoded.append(["ZINCR", ki(op.key), op.member, repr(float(op.amount))])
        elif isinstance(op, ZRem):
            encoded.append(["ZREM", ki(op.key), op.member])
        elif isinstance(op, ListPush):
            encoded.append(["LPUSH", ki(op.key), list(op.values), int(op.maxlen)])
        elif isinstance(op, SetAdd):
            encoded.append(["SADD", ki(op.key), list(op.members)])
    return encoded


class RedisKVStore(KVStore):
    """Reads go out as one pipeline; writes run as one Lua script (atomic, all or nothing)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0, request_timeout_s: float = 5.0) -> None:
        self.url = url
        # No client-side retries: a write whose reply was lost must not be re-sent blindly (it
        # could double count); callers retry, and apply_once makes that safe.
        self._r = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=request_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._apply = self._r.register_script(_APPLY_LUA)  # EVALSHA, loaded on first use

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisKVStore:
        """Build the store from ZEROREC_REDIS_URL and the timeouts."""
        return cls(
            settings.redis_url,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )

    def _fail(self, what: str, exc: redis.RedisError) -> Exception:
        msg = str(exc)
        if isinstance(exc, redis.ResponseError) and ("WRONGTYPE" in msg or "not a number" in msg):
            return InvalidInputError(f"redis {what}: {msg}")
        return BackendUnavailableError(
            f"redis at {self.url} failed during {what}: {type(exc).__name__}: {msg}"
        )

    def read(self, ops: Sequence[ReadOp]) -> list:
        pipe = self._r.pipeline(transaction=False)
        post: list[Any] = []  # per op: a constant result, or a function of the next reply
        for op in ops:
            if isinstance(op, Get):
                pipe.get(op.key)
                post.append(lambda v: v)
            elif isinstance(op, HGetAll):
                pipe.hgetall(op.key)
                post.append(lambda v: dict(v or {}))
            elif isinstance(op, HMGet):
                if not op.fields:
                    post.append(((),))
                    continue
                pipe.hmget(op.key, list(op.fields))
                post.append(list)
            elif isinstance(op, ListRange):
                pipe.lrange(op.key, op.start, op.stop)
                post.append(list)
            elif isinstance(op, ZTop):
                if op.n <= 0:
                    post.append(((),))
                    continue
                pipe.zrevrange(op.key, 0, op.n - 1, withscores=True)
                post.append(lambda v: [(m, float(s)) for m, s in v])
            elif isinstance(op, SetMembers):
                pipe.smembers(op.key)
                post.append(lambda v: set(v or ()))
            else:
                raise InvalidInputError(f"not a read op: {op!r}")
        try:
            replies = iter(pipe.execute()) if len(pipe) else iter(())
        except redis.RedisError as exc:
            raise self._fail("read", exc) from exc
        out: list = []
        for p in post:
            if isinstance(p, tuple):  # answered without a round trip
                out.append(list(p[0]))
            else:
                out.append(p(next(replies)))
        return out

    def _run(
        self, what: str, batch: Sequence[tuple[str | None, Sequence[WriteOp]]], ttl_s: int
    ) -> list[bool]:
        """Every entry in ONE script call (type checks first, then writes: all or nothing)."""
        keys: list[str] = []
        index: dict[str, int] = {}
        entries = [
            [0 if token is None else _key_index(token, keys, index, 1), _encode_ops(ops, keys, index)]
            for token, ops in batch
        ]
        if not keys:  # no token and no op: nothing to do
            return [True] * len(batch)
        try:
            replies = self._apply(keys=keys, args=[str(ttl_s), orjson.dumps(entries).decode()])
        except redis.RedisError as exc:
            raise self._fail(what, exc) from exc
        return [bool(r) for r in replies]

    def write(self, ops: Sequence[WriteOp]) -> None:
        self._run("write", [(None, ops)], 0)

    def apply_once(self, token: str, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        if ttl_s <= 0:
            raise InvalidInputError(f"apply_once ttl_s must be positive, got {ttl_s}")
        return self._run(f"apply_once {token!r}", [(token, ops)], ttl_s)[0]

    def apply_many(
        self, batch: Sequence[tuple[str, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
    ) -> list[bool]:
        if ttl_s <= 0:
            raise InvalidInputError(f"apply_many ttl_s must be positive, got {ttl_s}")
        return self._run(f"apply_many ({len(batch)} entries)", batch, ttl_s) if batch else []

    def close(self) -> None:
        """Close the connection pool."""
        self._r.close()
