"""The packed record: capped lists, capped counter maps and a dedupe window in one string value.

Why: a Redis key costs ~100 bytes before its value (dict entry, key string, object header, expiry
entry, table slots). One record per user (a string key) instead of a list + a hash + a key per
event is what brings the real-time state of a user to ~200 bytes.

Format (text; the separators are ASCII control characters, which no id, category or section name
may contain: check_record_op refuses them):

    record  := section ( RS section )*                 RS = \\x1e
    section := "l" name GS values                      list, distinct values newest first, US-joined
             | "m" name GS member FS number ( US ...)  counter map, numbers with 6 significant digits
             | "d" GS t0 US bucket0 US bucket1         dedupe window (at most one)
    GS = \\x1d, US = \\x1f, FS = \\x1c

The dedupe window holds fixed-width 10-character fingerprints (60 bits of blake2b of the token id,
base64url) in two buckets: bucket0 since t0 (base-36 epoch seconds), bucket1 the window before.
A write at `now >= t0 + window` rotates (bucket1 := bucket0, bucket0 := "", t0 := now): an id
leaves only at the second rotation after it was added, so it stays at least `window` and until the
record has had writes in two windows since. The Lua script of kv_redis implements the same format
and rules; the contract tests hold both to them.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field

from zerorec.errors import InvalidInputError
from zerorec.storage.kv import Record, RecordIncr, RecordPush, RecordToken

RS, GS, US, FS = "\x1e", "\x1d", "\x1f", "\x1c"
SEPARATORS = (RS, GS, US, FS)
FINGERPRINT_CHARS = 10


def fingerprint(token_id: str) -> str:
    """60 bits of blake2b(token_id), 10 base64url characters (no separator can occur)."""
    digest = hashlib.blake2b(token_id.encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).decode()[:FINGERPRINT_CHARS]


def format_counter(x: float) -> str:
    """6 significant digits, as Lua's string.format('%.6g') writes them."""
    return format(x, ".6g")


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n <= 0:
        return "0"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out


@dataclass
class PackedRecord:
    """A decoded record; `sections` keeps the order of first creation (lists and maps by tag)."""

    lists: dict[str, list[str]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # "l<name>" / "m<name>"
    dedupe: tuple[int, str, str] | None = None

    @classmethod
    def decode(cls, raw: str | None) -> PackedRecord:
        """InvalidInputError if `raw` is a string that is not a record."""
        rec = cls()
        if not raw:
            return rec
        for section in raw.split(RS):
            kind, sep, body = section[:1], section.find(GS), ""
            if sep < 0:
                raise InvalidInputError(f"not a record: section {section[:40]!r} has no name separator")
            name, body = section[1:sep], section[sep + 1 :]
            if kind == "l":
                rec.lists[name] = body.split(US) if body else []
                rec.order.append("l" + name)
            elif kind == "m":
                entries: dict[str, str] = {}
                for entry in body.split(US) if body else []:
                    member, fs, value = entry.partition(FS)
                    if not fs:
                        raise InvalidInputError(f"not a record: counter {entry[:40]!r} has no value")
                    entries[member] = value
                rec.maps[name] = entries
                rec.order.append("m" + name)
            elif kind == "d":
                parts = body.split(US)
                try:
                    rec.dedupe = (int(parts[0], 36), parts[1], parts[2])
                except (ValueError, IndexError):
                    raise InvalidInputError(f"not a record: bad dedupe section {body[:40]!r}") from None
            else:
                raise InvalidInputError(f"not a record: unknown section kind {kind!r}")
        return rec

    def encode(self) -> str:
        parts = []
        for tag in self.order:
            name = tag[1:]
            if tag[0] == "l":
                parts.append("l" + name + GS + US.join(self.lists[name]))
            else:
                body = US.join(m + FS + v for m, v in self.maps[name].items())
                parts.append("m" + name + GS + body)
        if self.dedupe is not None:
            t0, b0, b1 = self.dedupe
            parts.append("d" + GS + _b36(t0) + US + b0 + US + b1)
        return RS.join(parts)

    def view(self) -> Record:
        return Record(
            lists={k: list(v) for k, v in self.lists.items()},
            counters={k: {m: float(v) for m, v in c.items()} for k, c in self.maps.items()},
        )

    # ---- ops -------------------------------------------------------------------------------------

    def push(self, op: RecordPush) -> None:
        if op.section not in self.lists:
            self.lists[op.section] = []
            self.order.append("l" + op.section)
        old = self.lists[op.section]
        self.lists[op.section] = [op.value, *(v for v in old if v != op.value)][: op.maxlen]

    def incr(self, op: RecordIncr) -> None:
        if op.section not in self.maps:
            self.maps[op.section] = {}
            self.order.append("m" + op.section)
        counters = self.maps[op.section]
        current = float(counters[op.member]) if op.member in counters else 0.0
        counters[op.member] = format_counter(current + float(op.amount))
        if len(counters) > op.maxlen:
            smallest = min(counters, key=lambda m: float(counters[m]))  # first of the ties: the oldest
            del counters[smallest]

    def has_token(self, fp: str, now: int, window_s: int) -> bool:
        if self.dedupe is None:
            return False
        t0, b0, b1 = self.dedupe
        buckets = (b0,) if now >= t0 + window_s else (b0, b1)  # a rotation would drop b1
        return any(_holds(b, fp) for b in buckets)

    def remembers(self, fp: str) -> bool:
        return self.dedupe is not None and any(_holds(b, fp) for b in self.dedupe[1:])

    def add_token(self, fp: str, now: int, window_s: int) -> None:
        t0, b0, b1 = self.dedupe or (now, "", "")
        if now >= t0 + window_s:
            t0, b0, b1 = now, "", b0
        self.dedupe = (t0, b0 + fp, b1)


def _holds(bucket: str, fp: str) -> bool:
    start = bucket.find(fp)
    while start >= 0:
        if start % FINGERPRINT_CHARS == 0:
            return True
        start = bucket.find(fp, start + 1)
    return False


def _check_text(what: str, value: str, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    if any(s in value for s in SEPARATORS):
        raise InvalidInputError(f"{what} {value[:40]!r} contains a record separator (\\x1c-\\x1f)")


def check_record_op(op: RecordPush | RecordIncr | RecordToken) -> None:
    """Refuse record ops that the format cannot hold."""
    if isinstance(op, RecordToken):
        _check_text("RecordToken.id", op.id)
        return
    _check_text("record section name", op.section)
    if op.maxlen < 1:
        raise InvalidInputError(f"{type(op).__name__}.maxlen must be >= 1, got {op.maxlen}")
    if isinstance(op, RecordPush):
        _check_text("RecordPush.value", op.value)
    else:
        _check_text("RecordIncr.member", op.member)
        if not math.isfinite(float(op.amount)):
            raise InvalidInputError(f"RecordIncr.amount must be finite, got {op.amount}")
