"""State benchmark: Redis bytes per user of the consumer's real-time state, dedupe state included.

Writes `--users` synthetic users' behavior events (`--events-per-user` each, clicks and views on a
Zipf-popular catalogue) through the consumer's batch path (`EventApplier.apply_batch`: schema
validation, category lookup, exactly-once application) into a Redis it starts itself on a free port
(or `--redis-url`), then reports:

- bytes per user: Redis `used_memory` after the users minus before them, divided by the number of
  users. Every item is in the hot lists before the users come (as after a day of traffic), so the
  users' events do not grow catalogue-sized structures meanwhile; what the hot lists and catalogue
  markers changed by (MEMORY USAGE; a few bytes per user either way) is reported on its own;
- the projection in GiB per 1M users, against the target of 0.2 GiB;
- a per-key-kind breakdown: key names with the user / item / event ids replaced by `*`, from
  `MEMORY USAGE` of a random sample of keys (RANDOMKEY), scaled to the key count. MEMORY USAGE
  does not count the keyspace's hash-table buckets and the expiry table, so the kinds add up to a
  little less than the used_memory delta; the rest is reported as `keyspace_overhead`.

Synthetic data: items with 1-3 of 20 categories; clustered users (80% of a user's events on
Zipf-popular items of one favourite category, the rest on the whole catalogue); kinds view, click,
like, add_to_cart, purchase. Ids: users `u` + 7 digits, items `i` + 6 digits, events uuid4 strings
(36 characters, as the behavior function's uuid5 ids). Every event lies within the last hour, so
every user's dedupe window holds all of its events: the worst case for the dedupe state.

Run: `zerorec bench state --users 200000 [--events-per-user 5] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from tqdm import tqdm

from zerorec.cloudevents_io import new_event
from zerorec.consumer import BEHAVIOR_TYPE, EventApplier
from zerorec.realtime import ItemRecord, hot_key, item_upsert_writes
from zerorec.storage.kv import ZIncr
from zerorec.storage.kv_redis import RedisKVStore

TARGET_GIB_PER_MILLION = 0.2
CATEGORIES = [f"genre{n:02d}" for n in range(20)]
KINDS = ("view", "view", "view", "click", "click", "like", "add_to_cart", "purchase")
_IDS = (
    (re.compile(r"u\d{7}"), "<user>"),
    (re.compile(r"i\d{6}"), "<item>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<event>"),
)
CATALOGUE_PATTERNS = ("hot:*", "items:*")


def key_kind(key: str) -> str:
    """The key's name with the generated ids replaced (`user:<user>:recent`, `u:{<user>}`)."""
    for pattern, name in _IDS:
        key = pattern.sub(name, key)
    return key


def _catalogue_bytes(client: redis.Redis) -> int:
    """MEMORY USAGE (every element counted) of the hot lists and the fresh / deleted markers."""
    total = 0
    for pattern in CATALOGUE_PATTERNS:
        for key in client.scan_iter(match=pattern, count=1000):
            total += int(client.memory_usage(key, samples=0) or 0)
    return total


def _settled_memory(client: redis.Redis) -> int:
    """used_memory once the keyspace's incremental rehashing is done (it holds two tables)."""
    time.sleep(1.0)
    return int(client.info("memory")["used_memory"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def own_redis(server: str = "redis-server") -> Iterator[str]:
    """A throw-away redis-server on a free loopback port (no persistence); yields its URL."""
    if shutil.which(server) is None:
        raise SystemExit(f"bench state: {server} not found (install redis-server, or pass --redis-url)")
    workdir = tempfile.mkdtemp(prefix="zerorec-bench-state-")
    port = _free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench state: {server} did not start on port {port}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _zipf_cdf(n: int, s: float = 1.1) -> list[float]:
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    total, acc, cum = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        cum.append(acc)
    return cum


def _pick(items: Sequence[str], cdf: Sequence[float], rng: random.Random) -> str:
    return items[min(bisect.bisect_left(cdf, rng.random() * cdf[-1]), len(items) - 1)]


def _load_catalogue(kv: RedisKVStore, items: int, rng: random.Random) -> dict[str, list[str]]:
    """Items with 1-3 of 20 categories, written as the item events would, and already in the hot
    lists (as after a day of traffic), so that the users' events do not grow catalogue-sized
    structures while they are measured; -> items per category."""
    ids = [f"i{n:06d}" for n in range(items)]
    by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    for start in range(0, items, 500):
        ops: list[Any] = []
        for item_id in ids[start : start + 500]:
            cats = tuple(rng.sample(CATEGORIES, rng.randint(1, 3)))
            for c in cats:
                by_category[c].append(item_id)
                ops.append(ZIncr(hot_key(c), item_id, 1.0))
            ops += item_upsert_writes(ItemRecord(item_id, title=item_id, categories=cats, created_at_s=1.7e9))
            ops.append(ZIncr(hot_key(), item_id, 1.0))
        kv.write(ops)
    by_category[""] = ids
    return by_category


def _events(
    users: int, per_user: int, by_category: dict[str, list[str]], rng: random.Random
) -> Iterator[Any]:
    """Clustered users: 80% of a user's events on Zipf-popular items of the user's favourite
    category, the rest on the whole catalogue."""
    cdfs = {c: _zipf_cdf(len(ids)) for c, ids in by_category.items() if ids}
    now = datetime.now(UTC)
    for u in range(users):
        user_id = f"u{u:07d}"
        home = rng.choice(CATEGORIES)
        for _ in range(per_user):
            pool = home if rng.random() < 0.8 and by_category[home] else ""
            stamp = (now - timedelta(seconds=rng.uniform(60, 3600))).isoformat(timespec="seconds")
            data = {
                "kind": rng.choice(KINDS),
                "user_id": user_id,
                "item_id": _pick(by_category[pool], cdfs[pool], rng),
                "timestamp": stamp.replace("+00:00", "Z"),
            }
            event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            yield new_event(BEHAVIOR_TYPE, data, source="/bench/state", event_id=event_id)


def _breakdown(client: redis.Redis, users: int, samples: int, rng_seed: int) -> dict[str, dict[str, float]]:
    """Per key kind: estimated key count, mean MEMORY USAGE, bytes per user (sampled)."""
    total_keys = int(client.dbsize())
    seen: Counter[str] = Counter()
    usage: dict[str, int] = {}
    for _ in range(samples):
        key = client.randomkey()
        if key is None:
            break
        kind = key_kind(key.decode())
        if "<user>" not in kind and "<event>" not in kind:
            continue  # catalogue keys
        seen[kind] += 1
        usage[kind] = usage.get(kind, 0) + int(client.memory_usage(key, samples=0) or 0)
    drawn = samples
    out = {}
    for kind, n in seen.most_common():
        keys = total_keys * n / drawn
        per_key = usage[kind] / n
        out[kind] = {
            "keys": round(keys),
            "bytes_per_key": round(per_key, 1),
            "bytes_per_user": round(keys * per_key / users, 1),
        }
    return out


def _record_sections(client: redis.Redis, samples: int) -> dict[str, float]:
    """Mean bytes of each section of the users' records (history, categories, dedupe window, and
    the record's separators), from a random sample; empty for a layout without records."""
    sizes: Counter[str] = Counter()
    found = 0
    names = {"lh": "history", "mc": "categories", "d": "dedupe window"}
    for _ in range(samples):
        key = client.randomkey()
        if key is None or key_kind(key.decode()) != "u:{<user>}":
            continue
        raw = client.get(key)
        if not raw:
            continue
        found += 1
        for section in raw.decode().split("\x1e"):
            head = section[: section.find("\x1d")] if "\x1d" in section else section[:1]
            sizes[names.get(head, "other sections")] += len(section.encode()) + 1  # + separator
    return {name: round(total / found, 1) for name, total in sizes.most_common()} if found else {}


def run_state_benchmark(
    users: int,
    events_per_user: int = 5,
    *,
    items: int = 20_000,
    redis_url: str | None = None,
    batch: int = 1000,
    samples: int = 4000,
    seed: int = 7,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the users' events through the consumer's batch path; measure Redis bytes per user."""
    if users <= 0 or events_per_user <= 0 or items <= 0 or batch <= 0:
        raise SystemExit("bench state: --users, --events-per-user, --items and --batch must be positive")
    if redis_url is not None and not redis_url.startswith("redis://"):
        raise SystemExit(f"bench state: --redis-url must be one server's redis://..., got {redis_url!r}")
    with own_redis() if redis_url is None else _given(redis_url) as url:
        client = redis.Redis.from_url(url)
        if redis_url is not None and client.dbsize():
            raise SystemExit(
                f"bench state: {url} is not empty; give an empty database (bytes per user is a delta)"
            )
        kv = RedisKVStore(url, request_timeout_s=60)
        rng = random.Random(seed)
        by_category = _load_catalogue(kv, items, rng)
        kv.close()  # its connection's buffers would count in used_memory
        kv = RedisKVStore(url, request_timeout_s=60)
        before, catalogue_before = _settled_memory(client), _catalogue_bytes(client)
        applier = EventApplier(kv, category_cache_s=3600)
        total = users * events_per_user
        started = time.monotonic()
        bar = tqdm(total=total, unit="ev", disable=not progress, desc="events")
        pending: list[Any] = []
        refused = 0
        for event in _events(users, events_per_user, by_category, rng):
            pending.append(event)
            if len(pending) >= batch:
                refused += sum(r["status"] != 200 for r in applier.apply_batch(pending))
                bar.update(len(pending))
                pending = []
        if pending:
            refused += sum(r["status"] != 200 for r in applier.apply_batch(pending))
            bar.update(len(pending))
        bar.close()
        wall = time.monotonic() - started
        if refused:
            raise SystemExit(f"bench state: {refused} events were not applied")
        kv.close()
        after, catalogue_after = _settled_memory(client), _catalogue_bytes(client)
        per_kind = _breakdown(client, users, samples, seed)
        sections = _record_sections(client, min(samples, 1000))
        catalogue_growth = catalogue_after - catalogue_before
        bytes_per_user = (after - before) / users
        info = client.info("server")
        client.close()
    attributed = sum(v["bytes_per_user"] for v in per_kind.values())
    return {
        "users": users,
        "events_per_user": events_per_user,
        "events": total,
        "items": items,
        "redis_version": info.get("redis_version"),
        "used_memory_before": before,
        "used_memory_after": after,
        "catalogue_growth_bytes_per_user": round(catalogue_growth / users, 1),
        "bytes_per_user": round(bytes_per_user, 1),
        "gib_per_million_users": round(bytes_per_user * 1e6 / 2**30, 4),
        "target_gib_per_million_users": TARGET_GIB_PER_MILLION,
        "meets_target": bytes_per_user * 1e6 / 2**30 <= TARGET_GIB_PER_MILLION,
        "per_kind": per_kind,
        "record_section_bytes": sections,
        "keyspace_overhead_bytes_per_user": round(bytes_per_user - attributed, 1),
        "wall_s": round(wall, 1),
        "events_per_s": round(total / wall, 1) if wall else None,
    }


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['users']:,} users x {report['events_per_user']} events ({report['events']:,} events, "
        f"{report['events_per_s']:,.0f}/s, Redis {report['redis_version']})"
    )
    print(
        f"Redis bytes per user: {report['bytes_per_user']:.1f}  ->  "
        f"{report['gib_per_million_users']:.3f} GiB "
        f"per 1M users (target <= {TARGET_GIB_PER_MILLION}: {'met' if report['meets_target'] else 'NOT met'})"
    )
    print(f"{'key kind':<28}{'keys':>12}{'B/key':>9}{'B/user':>9}")
    for kind, row in report["per_kind"].items():
        print(f"{kind:<28}{row['keys']:>12,}{row['bytes_per_key']:>9.1f}{row['bytes_per_user']:>9.1f}")
    for name, size in report["record_section_bytes"].items():
        print(f"  {'in the record: ' + name:<36}{size:>17.1f}")
    print(f"{'keyspace tables (rest)':<28}{'':>12}{'':>9}{report['keyspace_overhead_bytes_per_user']:>9.1f}")
    print(
        f"(of which the hot lists and catalogue markers: {report['catalogue_growth_bytes_per_user']:+.1f} "
        "B per user)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zerorec bench state", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--events-per-user", type=int, default=5)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--redis-url", default=None, help="an empty Redis database (default: start one)")
    parser.add_argument("--batch", type=int, default=1000, help="events per consumer batch")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)
    report = run_state_benchmark(
        a.users,
        a.events_per_user,
        items=a.items,
        redis_url=a.redis_url,
        batch=a.batch,
        progress=not a.no_progress,
    )
    _print(report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
