"""Key-value store backend on Redis (redis-py): pipelined reads, atomic scripted writes.

`redis://...` is one server; `redis-cluster://host:port[,host:port...]` a Redis Cluster (RedisCluster
of redis-py), where every script touches the keys of one slot (see RedisKVStore).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.storage.kv import (
    Delete,
    Expire,
    Get,
    HGetAll,
    HIncr,
    HMGet,
    HSet,
    KVStore,
    ListPush,
    ListRange,
    ReadOp,
    RecordGet,
    RecordIncr,
    RecordPush,
    RecordToken,
    Set,
    SetAdd,
    SetMembers,
    Token,
    TokenSeen,
    WriteOp,
    ZIncr,
    ZRem,
    ZTop,
)
from zerorec.storage.kv_memory import check_token, check_write
from zerorec.storage.kv_record import PackedRecord, fingerprint

if TYPE_CHECKING:
    from zerorec.settings import Settings

CLUSTER_SCHEME = "redis-cluster://"
_ERRORS = (redis.RedisError, RedisClusterException)  # the latter is no RedisError

# One script serves `write`, `apply_once` and `apply_many`. ARGV[1] = token TTL (for record tokens:
# the dedupe window), ARGV[2] = JSON list of [token index into KEYS (0: no token), ops, fingerprint
# ("" for a plain token, else a RecordToken in the record at the token key)], each op [cmd, index
# into KEYS, args...]. Phase 1 skips entries whose token is set (or seen earlier in the batch) and
# type-checks every remaining op, tracking key types across entries; phase 2 writes, and remembers
# each token only after its ops; records are decoded once, written back once (SET KEEPTTL), and
# Expires run last. Redis scripts do not roll back, so an error in phase 1 returning before any
# write is what keeps a batch all or nothing and a token never set for unapplied ops.
# The record format and rules are those of zerorec.storage.kv_record (same contract tests).
_APPLY_LUA = r"""
local ttl = tonumber(ARGV[1])
local batch = cjson.decode(ARGV[2])
local now = tonumber(redis.call('TIME')[1])
local FP = 10
local want = {HSET='hash', HINCR='hash', ZINCR='zset', ZREM='zset', LPUSH='list', SADD='set'}

local function split(s, sep)
  local out, i = {}, 1
  if s == '' then return out end
  while true do
    local j = string.find(s, sep, i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local function decode(raw)  -- nil: not a record
  local r = {order = {}, lists = {}, maps = {}, d = false}
  if not raw or raw == '' then return r end
  for _, sec in ipairs(split(raw, '\30')) do
    local kind, at = string.sub(sec, 1, 1), string.find(sec, '\29', 1, true)
    if not at then return nil end
    local name, body = string.sub(sec, 2, at - 1), string.sub(sec, at + 1)
    if kind == 'l' then
      r.lists[name] = split(body, '\31'); r.order[#r.order + 1] = 'l' .. name
    elseif kind == 'm' then
      local m = {keys = {}, vals = {}}
      for _, e in ipairs(split(body, '\31')) do
        local c = string.find(e, '\28', 1, true)
        if not c then return nil end
        local member = string.sub(e, 1, c - 1)
        m.keys[#m.keys + 1] = member; m.vals[member] = string.sub(e, c + 1)
      end
      r.maps[name] = m; r.order[#r.order + 1] = 'm' .. name
    elseif kind == 'd' then
      local p = split(body, '\31')
      if #p ~= 3 or not tonumber(p[1], 36) then return nil end
      r.d = {tonumber(p[1], 36), p[2], p[3]}
    else return nil end
  end
  return r
end
local function b36(n)
  local digits, s = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  if n <= 0 then return '0' end
  while n > 0 do local k = n % 36; s = string.sub(digits, k + 1, k + 1) .. s; n = math.floor(n / 36) end
  return s
end
local function encode(r)
  local parts = {}
  for _, tag in ipairs(r.order) do
    local name = string.sub(tag, 2)
    if string.sub(tag, 1, 1) == 'l' then
      parts[#parts + 1] = 'l' .. name .. '\29' .. table.concat(r.lists[name], '\31')
    else
      local m, es = r.maps[name], {}
      for _, k in ipairs(m.keys) do es[#es + 1] = k .. '\28' .. m.vals[k] end
      parts[#parts + 1] = 'm' .. name .. '\29' .. table.concat(es, '\31')
    end
  end
  if r.d then parts[#parts + 1] = 'd\29' .. b36(r.d[1]) .. '\31' .. r.d[2] .. '\31' .. r.d[3] end
  return table.concat(parts, '\30')
end
local function holds(bucket, fp)
  local i = 1
  while true do
    local j = string.find(bucket, fp, i, true)
    if not j then return false end
    if (j - 1) % FP == 0 then return true end
    i = j + 1
  end
end
local function has_token(r, fp)
  if not r.d then return false end
  if now >= r.d[1] + ttl then return holds(r.d[2], fp) end  -- a rotation would drop bucket 1
  return holds(r.d[2], fp) or holds(r.d[3], fp)
end
local function add_token(r, fp)
  local d = r.d or {now, '', ''}
  if now >= d[1] + ttl then d = {now, '', d[2]} end
  r.d = {d[1], d[2] .. fp, d[3]}
end
local function push(r, name, value, maxlen)
  local l = r.lists[name]
  if not l then l = {}; r.order[#r.order + 1] = 'l' .. name end
  local out = {value}
  for _, v in ipairs(l) do
    if #out >= maxlen then break end
    if v ~= value then out[#out + 1] = v end
  end
  r.lists[name] = out
end
local function incr(r, name, member, amount, maxlen)
  local m = r.maps[name]
  if not m then m = {keys = {}, vals = {}}; r.maps[name] = m; r.order[#r.order + 1] = 'm' .. name end
  local cur = m.vals[member]
  if not cur then m.keys[#m.keys + 1] = member end
  m.vals[member] = string.format('%.6g', (cur and tonumber(cur) or 0) + amount)
  if #m.keys > maxlen then
    local at, low = 1, nil
    for i, k in ipairs(m.keys) do
      local v = tonumber(m.vals[k])
      if low == nil or v < low then at, low = i, v end
    end
    m.vals[m.keys[at]] = nil
    table.remove(m.keys, at)
  end
end

-- phase 1: duplicates and checks, no writes
local types, seen, result, valid, lastset, p1rec = {}, {}, {}, {}, {}, {}
local function server_rec(k)
  if p1rec[k] == nil then p1rec[k] = decode(redis.call('GET', k)) or false end
  return p1rec[k]
end
local function need_record(k)
  local t = types[k] or redis.call('TYPE', k)['ok']
  if t ~= 'none' and t ~= 'string' then
    return 'WRONGTYPE key ' .. k .. ' holds a ' .. t .. ', not a record'
  end
  local v = valid[k]
  if v == nil then
    if t == 'none' then v = true
    elseif lastset[k] then v = decode(lastset[k]) ~= nil
    else v = server_rec(k) ~= false end
    valid[k] = v
  end
  if not v then return 'WRONGTYPE key ' .. k .. ' holds a string that is not a record' end
  types[k] = 'string'
  return nil
end
for i, entry in ipairs(batch) do
  local token, fp = entry[1] > 0 and KEYS[entry[1]] or nil, entry[3]
  local dup = false
  if token and fp ~= '' then
    local err = need_record(token)
    if err then return redis.error_reply(err) end
    local r = server_rec(token)
    dup = seen[token .. '\0' .. fp] or (r and has_token(r, fp))
    seen[token .. '\0' .. fp] = true
  elseif token then
    dup = seen[token] or redis.call('EXISTS', token) == 1
    seen[token] = true
  end
  if dup then
    result[i] = 0
  else
    result[i] = 1
    for _, op in ipairs(entry[2]) do
      local c, k = op[1], KEYS[op[2]]
      if c == 'SET' then types[k] = 'string'; valid[k] = nil; lastset[k] = op[3]
      elseif c == 'DEL' then types[k] = 'none'; valid[k] = nil; lastset[k] = nil
      elseif c == 'EXPIRE' then
      elseif c == 'RPUSH' or c == 'RINCR' then
        local err = need_record(k)
        if err then return redis.error_reply(err) end
      else
        local t = types[k] or redis.call('TYPE', k)['ok']
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
        types[k] = t
      end
    end
  end
end

-- phase 2: writes
local function chunked(cmd, k, items, step)
  for i = 1, #items, step do
    redis.call(cmd, k, unpack(items, i, math.min(i + step - 1, #items)))
  end
end
local recs, dirty, order, expires = {}, {}, {}, {}
local function rec_of(k)
  if recs[k] == nil then recs[k] = decode(redis.call('GET', k)) end
  if not dirty[k] then dirty[k] = true; order[#order + 1] = k end
  return recs[k]
end
for i, entry in ipairs(batch) do
  if result[i] == 1 then
    for _, op in ipairs(entry[2]) do
      local c, k = op[1], KEYS[op[2]]
      if c == 'SET' or c == 'DEL' then recs[k] = nil; dirty[k] = false end
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
      elseif c == 'EXPIRE' then expires[#expires + 1] = {k, op[3]}
      elseif c == 'RPUSH' then push(rec_of(k), op[3], op[4], op[5])
      elseif c == 'RINCR' then incr(rec_of(k), op[3], op[4], tonumber(op[5]), op[6])
      end
    end
    if entry[1] > 0 then
      if entry[3] ~= '' then add_token(rec_of(KEYS[entry[1]]), entry[3])
      else redis.call('SET', KEYS[entry[1]], '1', 'EX', ttl) end
    end
  end
end
for _, k in ipairs(order) do
  if dirty[k] then redis.call('SET', k, encode(recs[k]), 'KEEPTTL'); dirty[k] = false end
end
for _, e in ipairs(expires) do redis.call('EXPIRE', e[1], e[2]) end
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
        elif isinstance(op, Expire):
            encoded.append(["EXPIRE", ki(op.key), int(op.ttl_s)])
        elif isinstance(op, RecordPush):
            encoded.append(["RPUSH", ki(op.key), op.section, op.value, int(op.maxlen)])
        elif isinstance(op, RecordIncr):
            encoded.append(
                ["RINCR", ki(op.key), op.section, op.member, repr(float(op.amount)), int(op.maxlen)]
            )
    return encoded


def _token_key(token: Token) -> str:
    return token.key if isinstance(token, RecordToken) else token


def _encode_batch(batch: Sequence[tuple[Token | None, Sequence[WriteOp]]]) -> tuple[list[str], list]:
    """(KEYS, entries) of one script call."""
    keys: list[str] = []
    index: dict[str, int] = {}
    entries = []
    for token, ops in batch:
        at = 0 if token is None else _key_index(_token_key(token), keys, index, 1)
        fp = fingerprint(token.id) if isinstance(token, RecordToken) else ""
        entries.append([at, _encode_ops(ops, keys, index), fp])
    return keys, entries


def _slot(key: str) -> int:
    return key_slot(key.encode())


def cluster_nodes(url: str) -> list[ClusterNode]:
    """`redis-cluster://host:port[,host:port...]` -> the startup nodes (any one of them will do)."""
    rest = url[len(CLUSTER_SCHEME) :].split("/", 1)[0]
    nodes = []
    for part in filter(None, rest.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(f"bad Redis Cluster node {part!r} in {url!r} (want host:port)")
        nodes.append(ClusterNode(host, int(port)))
    if not nodes:
        raise InvalidInputError(f"no node in Redis Cluster URL {url!r} (want redis-cluster://host:port,...)")
    return nodes


class RedisKVStore(KVStore):
    """Reads go out as one pipeline; writes run as one Lua script (atomic, all or nothing).

    `redis-cluster://host:port[,host:port...]` selects a Redis Cluster: reads are one cluster
    pipeline (one round trip per node), and a write call runs one script per slot: first, per
    token slot, the token checks with the ops in that slot (exactly once, atomic); then the ops of
    other slots of the applied entries, one script per slot. Keys of one user share a hash tag, so
    a user's state and its dedupe window are one slot; the rest (the hot lists; an item event's
    metadata hash) applies right after: should that second step fail, they miss that event (the
    worker's rebuild repairs hot lists, the item's next upsert its hash) but never count it twice.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0, request_timeout_s: float = 5.0) -> None:
        self.url = url
        self.cluster = url.startswith(CLUSTER_SCHEME)
        # No client-side retries: a write whose reply was lost must not be re-sent blindly (it
        # could double count); callers retry, and apply_once makes that safe.
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": connect_timeout_s,
            "socket_timeout": request_timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        self._r: Any
        if self.cluster:
            # Built lazily: the factories must not connect, and RedisCluster asks a node for the
            # slot map at construction.
            self._nodes = cluster_nodes(url)
            self._options = options
            self._r = None
        else:
            self._r = redis.Redis.from_url(url, **options)
        self._script: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisKVStore:
        """Build the store from ZEROREC_REDIS_URL and the timeouts."""
        return cls(
            settings.redis_url,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
        )

    def _client(self) -> Any:
        if self._r is None:
            with self._lock:
                if self._r is None:
                    try:
                        self._r = RedisCluster(startup_nodes=self._nodes, **self._options)
                    except _ERRORS as exc:
                        raise self._fail("cluster discovery", exc) from exc
        if self._script is None:
            self._script = self._r.register_script(_APPLY_LUA)  # EVALSHA, loaded on first use
        return self._r

    def _fail(self, what: str, exc: Exception) -> Exception:
        msg = str(exc)
        if isinstance(exc, redis.ResponseError) and ("WRONGTYPE" in msg or "not a number" in msg):
            return InvalidInputError(f"redis {what}: {msg}")
        return BackendUnavailableError(
            f"redis at {self.url} failed during {what}: {type(exc).__name__}: {msg}"
        )

    def read(self, ops: Sequence[ReadOp]) -> list:
        try:
            pipe = self._client().pipeline()
        except _ERRORS as exc:
            raise self._fail("read", exc) from exc
        post: list[Any] = []  # per op: a constant result, or a function of the next reply
        queued = 0
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
            elif isinstance(op, RecordGet):
                pipe.get(op.key)
                post.append(lambda v: PackedRecord.decode(v).view())
            elif isinstance(op, TokenSeen) and isinstance(op.token, RecordToken):
                pipe.get(op.token.key)
                fp = fingerprint(op.token.id)
                post.append(lambda v, fp=fp: PackedRecord.decode(v).remembers(fp))
            elif isinstance(op, TokenSeen):
                pipe.exists(op.token)
                post.append(bool)
            else:
                raise InvalidInputError(f"not a read op: {op!r}")
            queued += 1
        try:
            replies = iter(pipe.execute()) if queued else iter(())
        except _ERRORS as exc:
            raise self._fail("read", exc) from exc
        out: list = []
        for p in post:
            if isinstance(p, tuple):  # answered without a round trip
                out.append(list(p[0]))
            else:
                out.append(p(next(replies)))
        return out

    def _scripts(
        self, what: str, calls: Sequence[Sequence[tuple[Token | None, Sequence[WriteOp]]]], ttl_s: int
    ) -> list[list[bool]]:
        """Run each call (a batch of entries on one slot) as one script; one round trip per node."""
        encoded = [_encode_batch(call) for call in calls]
        out: list[list[bool]] = [[True] * len(call) for call in calls]
        todo = [i for i, (keys, _) in enumerate(encoded) if keys]  # no token and no op: nothing to do
        if not todo:
            return out
        client = self._client()
        args = {i: [str(ttl_s), orjson.dumps(encoded[i][1]).decode()] for i in todo}
        try:
            if len(todo) == 1 and not self.cluster:
                (i,) = todo
                replies = [self._script(keys=encoded[i][0], args=args[i])]
            else:
                pipe = client.pipeline()
                for i in todo:
                    # execute_command: ClusterPipeline blocks its evalsha method, not the command
                    keys = encoded[i][0]
                    pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args[i])
                replies = pipe.execute(raise_on_error=False)
                for n, i in enumerate(todo):
                    if isinstance(replies[n], NoScriptError):  # not run: load it and run it now
                        replies[n] = self._script(keys=encoded[i][0], args=args[i])
                errors = [r for r in replies if isinstance(r, Exception)]
                if errors:
                    raise errors[0]
        except _ERRORS as exc:
            raise self._fail(what, exc) from exc
        for n, i in enumerate(todo):
            out[i] = [bool(r) for r in replies[n]]
        return out

    def _run(
        self, what: str, batch: Sequence[tuple[Token | None, Sequence[WriteOp]]], ttl_s: int
    ) -> list[bool]:
        """Standalone: every entry in ONE script call (type checks first, then writes: all or
        nothing). Cluster: per slot, see the class docstring."""
        if not self.cluster:
            return self._scripts(what, [batch], ttl_s)[0]
        own: dict[int, list[int]] = {}  # token slot -> entries
        later: list[dict[int, list[WriteOp]]] = []  # per entry: ops by slot, applied once it applies
        for n, (token, ops) in enumerate(batch):
            by_slot: dict[int, list[WriteOp]] = {}
            for op in ops:
                by_slot.setdefault(_slot(op.key), []).append(op)
            later.append(by_slot)
            if token is not None:
                own.setdefault(_slot(_token_key(token)), []).append(n)
        applied = [True] * len(batch)
        slots = list(own)
        calls = [[(batch[n][0], later[n].pop(slot, [])) for n in own[slot]] for slot in slots]
        for slot, flags in zip(slots, self._scripts(what, calls, ttl_s), strict=True):
            for n, ok in zip(own[slot], flags, strict=True):
                applied[n] = ok
        rest: dict[int, list[tuple[None, list[WriteOp]]]] = {}
        for n, by_slot in enumerate(later):
            if applied[n]:
                for slot, ops in by_slot.items():
                    rest.setdefault(slot, []).append((None, ops))
        if rest:
            self._scripts(what, list(rest.values()), ttl_s)
        return applied

    def write(self, ops: Sequence[WriteOp]) -> None:
        self._run("write", [(None, ops)], 0)

    def apply_once(self, token: Token, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        check_token(token, ttl_s)
        return self._run(f"apply_once {token!r}", [(token, ops)], ttl_s)[0]

    def apply_many(
        self, batch: Sequence[tuple[Token, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
    ) -> list[bool]:
        for token, _ in batch:
            check_token(token, ttl_s)
        return self._run(f"apply_many ({len(batch)} entries)", batch, ttl_s) if batch else []

    def close(self) -> None:
        """Close the connection pool."""
        if self._r is not None:
            self._r.close()
