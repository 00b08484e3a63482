"""User records (Gorse's user CRUD): a user's labels and a comment, kept in the KV beside the user's
online state, their export, and the GDPR-style erase of everything the KV keys by the user.

Layout (docs/state.md): `u:{<user>}:rec`, a hash (`labels` as a JSON array, `comment`, `updated_at`),
in the user's own hash-tag slot; `users:{users}:all`, a sorted set naming every user with a record
(score 0: listed in id order), which the export reads. Bounded: at most MAX_LABELS labels of at most
MAX_LABEL_CHARS characters and a comment of at most MAX_COMMENT_CHARS per user.

Erasing a user deletes the record and the user's online state (`u:{<user>}`: history, affinities,
dedupe window), real-time counts and offline features, so recommendations no longer use their
history. Not erased here: the behavior topic and its Parquet exports keep the user's events until
their retention ends, and a model trained on them keeps the user until the next training.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from pydantic import Field, StringConstraints

from zerorec.api import UserId, _Request, _Response
from zerorec.realtime import (
    rt_user_key,
    user_category_features_key,
    user_features_key,
    user_key,
)
from zerorec.storage.kv import Delete, HGetAll, HSet, WriteOp, ZIncr, ZRem, ZTop

if TYPE_CHECKING:
    from zerorec.storage.kv import KVStore

USERS_INDEX_KEY = "users:{users}:all"
MAX_LABELS = 64
MAX_LABEL_CHARS = 64
MAX_COMMENT_CHARS = 1024
EXPORT_MAX = 1_000_000  # users one export may return (the index is read in one step, like the catalogue's)
_READ_CHUNK = 1000

Label = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"^[^\x00-\x1f]+$")
]


def user_record_key(user_id: str) -> str:
    """u:{<user>}:rec: the user's record (the user's hash tag: the same slot as their online state)."""
    return f"{user_key(user_id)}:rec"


class UserUpsertRequest(_Request):
    """user `/admin/users`: create or update a record; a field left out keeps its stored value."""

    user_id: UserId
    labels: list[Label] | None = Field(
        default=None, max_length=MAX_LABELS, description="replaces the stored labels (null: keep them)"
    )
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS, description="null: keep it")


class UserIdRequest(_Request):
    """user `/admin/users/get` and `/admin/users/delete`."""

    user_id: UserId


class UsersExportRequest(_Request):
    """user `/admin/users/export`."""

    limit: int = Field(default=EXPORT_MAX, ge=1, le=EXPORT_MAX)


class UserRecord(_Response):
    user_id: str
    labels: list[str]
    comment: str
    updated_at: str | None = Field(description="RFC 3339, UTC (null: never written)")


class UserErased(_Response):
    user_id: str
    had_record: bool = Field(
        description="whether a user record existed (the online state is erased either way)"
    )


def _record(user_id: str, fields: dict[str, str]) -> UserRecord:
    return UserRecord(
        user_id=user_id,
        labels=orjson.loads(fields["labels"]) if "labels" in fields else [],
        comment=fields.get("comment", ""),
        updated_at=fields.get("updated_at"),
    )


def upsert_user(kv: KVStore, req: UserUpsertRequest) -> UserRecord:
    """Write the given fields of the user's record (and list the user in the index); the record as stored."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    fields = {"updated_at": now}
    if req.labels is not None:
        fields["labels"] = orjson.dumps(list(dict.fromkeys(req.labels))).decode()
    if req.comment is not None:
        fields["comment"] = req.comment
    kv.write([HSet(user_record_key(req.user_id), fields), ZIncr(USERS_INDEX_KEY, req.user_id, 0.0)])
    return get_user(kv, req.user_id)


def get_user(kv: KVStore, user_id: str) -> UserRecord:
    """The user's record; NotFoundError when there is none."""
    from zerorec.errors import NotFoundError

    [fields] = kv.read([HGetAll(user_record_key(user_id))])
    if not fields:
        raise NotFoundError(f"no record of user {user_id!r}")
    return _record(user_id, fields)


def erase_writes(user_id: str) -> list[WriteOp]:
    """Deletes of every KV key of the user: record, online state, real-time counts, features."""
    keys = (
        user_record_key(user_id),
        user_key(user_id),
        rt_user_key(user_id),
        user_features_key(user_id),
        user_category_features_key(user_id),
    )
    return [*(Delete(k) for k in keys), ZRem(USERS_INDEX_KEY, user_id)]


def erase_user(kv: KVStore, user_id: str) -> UserErased:
    """Delete the user's record and everything else the KV keeps under the user's id."""
    [fields] = kv.read([HGetAll(user_record_key(user_id))])
    kv.write(erase_writes(user_id))
    return UserErased(user_id=user_id, had_record=bool(fields))


def all_users(kv: KVStore, limit: int = EXPORT_MAX) -> Iterator[dict[str, Any]]:
    """Every user record (at most `limit`) as JSON-ready rows in the upsert format (user_id, labels,
    comment) plus updated_at. The index is read now (a KV failure raises here, before an answer
    starts); the records as the rows are consumed, _READ_CHUNK at a time."""
    [listed] = kv.read([ZTop(USERS_INDEX_KEY, limit)])
    return _records(kv, [u for u, _ in listed])


def _records(kv: KVStore, ids: list[str]) -> Iterator[dict[str, Any]]:
    for start in range(0, len(ids), _READ_CHUNK):
        chunk = ids[start : start + _READ_CHUNK]
        for user_id, fields in zip(chunk, kv.read([HGetAll(user_record_key(u)) for u in chunk]), strict=True):
            if fields:  # erased between the two reads
                yield _record(user_id, fields).model_dump()
