"""The API a recommender platform is expected to have beyond `/recommend` (what Gorse offers):
similar items, similar users, latest and popular items per category, catalogue and feedback bulk
import and export. The functions here are the library; the handlers are thin: recall serves
`/similar-items` and `/latest` (it holds the neighbour lists and the fresh order), user serves
`/similar-users` (it holds the training histories) and the user records' routes (zerorec.users),
item serves `/admin/items/import` and `/admin/items/export`, behavior `/events/import`, and the
BFF (recommender) makes them public with item metadata (`/similar-items`, `/similar-users`,
`/latest`, `/popular`). `openapi_paths(function)` documents each function's share.

Every request's work is bounded: a row of neighbour lists, a k-NN search, at most
`MAX_USERS_PER_ITEM` users per history item, at most `LATEST_SCAN` items of the newest-first order.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field

from zerorec.api import ErrorResponse, Id, ItemMeta, UserId, _Request, _Response
from zerorec.errors import BackendUnavailableError, InvalidInputError, NotFoundError
from zerorec.realtime import (
    DELETED_KEY,
    FRESH_KEY,
    ItemRecord,
    categories_from,
    item_categories_read,
    item_key,
)
from zerorec.storage.kv import HGetAll, ZTop

if TYPE_CHECKING:
    import numpy as np

    from zerorec.online import ServingModel
    from zerorec.storage.kv import KVStore

MAX_N = 100
MAX_USERS_PER_ITEM = 1000  # users read per history item for similar users (a sample of a popular item's)
SIMILAR_USERS_HISTORY = 50  # the user's newest items that define its neighbourhood
LATEST_SCAN = 20_000  # items of the model's newest-first order one latest-per-category request may scan
LATEST_KV_SCAN = 500  # newest catalogue updates (KV) considered per request
EXPORT_MAX = 1_000_000  # items one export may return
DELETED_MAX = 10_000


# ------------------------------------------------------------------------------------ contracts


class SimilarItemsRequest(_Request):
    """recall `/similar-items` and the BFF's `/similar-items`."""

    item_id: Id
    n: int = Field(default=10, ge=1, le=MAX_N)
    category: Id | None = Field(default=None, description="only neighbours of this category (null: any)")
    channel: Literal["auto", "itemcf", "als"] = Field(
        default="auto",
        description="itemcf: co-interaction neighbours; als: embedding neighbours; auto: itemcf, else als",
    )


class ScoredItem(_Response):
    item_id: str
    score: float
    metadata: ItemMeta | None = Field(
        default=None, description="the BFF adds it (null when item is unavailable)"
    )


class SimilarItemsResponse(_Response):
    item_id: str
    channel: str | None = Field(description="the channel that answered (null: no neighbours known)")
    items: list[ScoredItem]
    model_version: str | None = None


class SimilarUsersRequest(_Request):
    """user `/similar-users` and the BFF's `/similar-users`."""

    user_id: UserId
    n: int = Field(default=10, ge=1, le=MAX_N)


class ScoredUser(_Response):
    user_id: str
    score: float = Field(description="cosine similarity of the two users' item sets")
    common_items: int


class SimilarUsersResponse(_Response):
    user_id: str
    users: list[ScoredUser]
    model_version: str | None = None


class CategoryListRequest(_Request):
    """recall `/latest`, the BFF's `/latest` and `/popular`."""

    n: int = Field(default=10, ge=1, le=MAX_N)
    category: Id | None = Field(default=None, description="only items of this category (null: all)")


class CategoryListResponse(_Response):
    category: str | None
    items: list[ScoredItem] = Field(description="latest: score = creation time (epoch s); popular: hot score")


class ExportRequest(_Request):
    """item `/admin/items/export`."""

    format: Literal["jsonl", "parquet"] = "jsonl"
    limit: int = Field(default=EXPORT_MAX, ge=1, le=EXPORT_MAX)


# ------------------------------------------------------------------------------------ similar items


SIMILAR_ALS_WIDEN = 20  # with a category, the ALS search looks this many times deeper


def similar_items(
    model: ServingModel, item_id: str, n: int, channel: str = "auto", category: str | None = None
) -> SimilarItemsResponse:
    """The item's nearest items: its item-CF neighbour list (cosine of co-interactions, trained), or
    the ALS item-embedding k-NN; only items of `category` when given (item-CF filters its list, ALS
    searches SIMILAR_ALS_WIDEN times deeper); NotFoundError for an item the model does not know."""
    import numpy as np

    rec = model.rec
    i = rec.data.item_index.get(item_id)
    if i is None:
        raise NotFoundError(
            f"item {item_id!r} is not in model {model.version} (items newer than it have no neighbours yet)"
        )
    ids = rec.data.item_ids
    for name in ("itemcf", "als") if channel == "auto" else (channel,):
        ch = rec.channels.get(name)
        if ch is None:
            continue
        if name == "itemcf":
            row, weights = ch.lists.neighbours[i], ch.lists.weights[i]
            keep = (row >= 0) & (row != i)
            found, scores = row[keep], weights[keep]
        else:
            index = ch.index
            depth = (n + 1) * (SIMILAR_ALS_WIDEN if category is not None else 1)
            found, scores = index.search(index.rows(np.array([i]))[0], depth)
            keep = found != i
            found, scores = found[keep], scores[keep]
        if category is not None:
            in_category = np.array([category in rec.data.item_categories[j] for j in found], dtype=bool)
            found, scores = found[in_category], scores[in_category]
        found, scores = found[:n], scores[:n]
        if len(found):
            items = [
                ScoredItem(item_id=str(ids[j]), score=float(s)) for j, s in zip(found, scores, strict=True)
            ]
            return SimilarItemsResponse(
                item_id=item_id, channel=name, items=items, model_version=model.version
            )
    return SimilarItemsResponse(item_id=item_id, channel=None, items=[], model_version=model.version)


# ------------------------------------------------------------------------------------ similar users

_columns: dict[int, Any] = {}  # id(data) -> the users of each item (CSC), for the model served
_columns_lock = threading.Lock()


def _item_users(data: Any) -> Any:
    """The training matrix by column (items -> users), built once per model on first use: the same
    bytes as the histories again, so only where similar users are asked for."""
    key = id(data)
    with _columns_lock:
        got = _columns.get(key)
        if got is None:
            _columns.clear()  # one model at a time: the previous one's columns go
            got = _columns[key] = _by_column(data.matrix)
        return got


class _Columns:
    """The users of each item: `indices[indptr[i]:indptr[i + 1]]` (int32), from CSR arrays (numpy)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.indptr = indptr
        self.indices = indices


def _by_column(matrix: Any) -> _Columns:
    import numpy as np

    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), np.diff(matrix.indptr))
    order = np.argsort(matrix.indices, kind="stable")
    counts = np.bincount(matrix.indices, minlength=matrix.shape[1])
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return _Columns(indptr, rows[order])


def similar_users(
    model: ServingModel, user_id: str, n: int, recent_items: Sequence[str] = ()
) -> SimilarUsersResponse:
    """Users whose trained item sets overlap most with this user's newest items (training history
    and real-time `recent_items`): cosine of the two sets, each history item contributing at most
    MAX_USERS_PER_ITEM users. NotFoundError for a user with no known item."""
    import numpy as np

    data = model.rec.data
    if data.n_users == 0:
        raise NotFoundError(f"model {model.version} carries no user histories (more users than a pod serves)")
    u = data.user_index.get(user_id)
    items: list[int] = [data.item_index[i] for i in recent_items if i in data.item_index]
    if u is not None:
        hist, _ = data.history(u)
        items += hist[::-1].tolist()  # newest first
    items = list(dict.fromkeys(items))[:SIMILAR_USERS_HISTORY]
    if not items:
        raise NotFoundError(f"user {user_id!r} has no item the model knows: no neighbours")
    cols = _item_users(data)
    users = np.concatenate(
        [
            cols.indices[cols.indptr[i] : min(cols.indptr[i + 1], cols.indptr[i] + MAX_USERS_PER_ITEM)]
            for i in items
        ]
    )
    if u is not None:
        users = users[users != u]
    if not len(users):
        return SimilarUsersResponse(user_id=user_id, users=[], model_version=model.version)
    found, common = np.unique(users, return_counts=True)
    sizes = np.diff(data.matrix.indptr)[found].astype(np.float64)
    scores = common / np.sqrt(np.maximum(sizes, 1) * len(items))
    top = np.lexsort((found, -scores))[:n]
    return SimilarUsersResponse(
        user_id=user_id,
        users=[
            ScoredUser(
                user_id=str(data.user_ids[found[k]]), score=float(scores[k]), common_items=int(common[k])
            )
            for k in top
        ],
        model_version=model.version,
    )


# ------------------------------------------------------------------------------------ latest


def latest_items(
    model: ServingModel | None, kv: KVStore, n: int, category: str | None = None
) -> CategoryListResponse:
    """The newest items (of a category): catalogue updates from the KV (newest LATEST_KV_SCAN) over
    the model's newest-first order (at most LATEST_SCAN scanned), deleted items left out; score is
    the creation time in epoch seconds."""
    created: dict[str, float] = {}
    try:
        fresh, deleted = kv.read([ZTop(FRESH_KEY, LATEST_KV_SCAN), ZTop(DELETED_KEY, DELETED_MAX)])
        gone = {i for i, _ in deleted}
        if category is not None and fresh:
            cats = kv.read([item_categories_read(i) for i, _ in fresh])
            fresh = [f for f, c in zip(fresh, cats, strict=True) if category in categories_from(c)]
        created.update((i, float(s)) for i, s in fresh)
    except BackendUnavailableError:
        gone = set()  # the model's order alone
    if model is not None:
        rec = model.rec
        order = getattr(rec.channels.get("fresh"), "order", None)
        if order is not None:
            stamps = rec.data.item_created
            picked = 0
            for j in order[:LATEST_SCAN].tolist():
                if category is not None and category not in rec.data.item_categories[j]:
                    continue
                item = str(rec.data.item_ids[j])
                created.setdefault(item, float(stamps[j]))
                picked += 1
                if picked >= n + len(gone):
                    break
    ranked = sorted(((s, i) for i, s in created.items() if i not in gone), key=lambda x: (-x[0], x[1]))
    return CategoryListResponse(
        category=category, items=[ScoredItem(item_id=i, score=s) for s, i in ranked[:n]]
    )


# ------------------------------------------------------------------------------------ import / export

JSONL = "application/x-ndjson"
PARQUET = "application/vnd.apache.parquet"


def read_rows(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Catalogue rows of a JSON-lines or Parquet body (InvalidInputError on a malformed one), in the
    form `zerorec.catalog.rows_to_items` takes: an `attributes` object (or, from Parquet, its JSON
    string: the export format) becomes top-level columns."""
    return [_flat(row) for row in _parse_rows(body, content_type)]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    attributes = row.pop("attributes", None)
    if isinstance(attributes, str):
        try:
            attributes = orjson.loads(attributes)
        except orjson.JSONDecodeError:
            raise InvalidInputError(f"attributes of {row.get('item_id')!r}: not a JSON object") from None
    if attributes is None:
        return row
    if not isinstance(attributes, dict):
        raise InvalidInputError(f"attributes of {row.get('item_id')!r}: not an object")
    return {**{k: v for k, v in attributes.items() if k not in row}, **row}


def _parse_rows(body: bytes, content_type: str) -> list[dict[str, Any]]:
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in (JSONL, "application/jsonl", "application/json-lines"):
        rows = []
        for k, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidInputError(f"line {k}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"line {k}: not a JSON object")
            rows.append(row)
        return rows
    if ctype in (PARQUET, "application/x-parquet", "application/parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(body)).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInputError(f"not a Parquet file: {exc}") from None
    raise InvalidInputError(f"content-type must be {JSONL} or {PARQUET}, got {content_type!r}")


# Columns of the worker's event-log export (zerorec.tasks.EXPORT_SCHEMA) that are not event fields.
_EXPORT_ONLY = ("source", "topic", "partition", "offset")


def read_feedback(body: bytes, content_type: str) -> tuple[list[Any], list[str | None]]:
    """Behaviour events of a JSON-lines or Parquet body as the payloads `POST /events` takes, and
    each row's own `event_id` (None where it has none). The worker's Parquet export imports as is:
    its log columns are dropped, timestamps become RFC 3339, `context` (a JSON string) an object,
    and nulls (an absent field in a Parquet row) are left out."""
    from datetime import UTC, datetime

    payloads: list[Any] = []
    ids: list[str | None] = []
    for row in _parse_rows(body, content_type):
        event_id = row.pop("event_id", None)
        for column in _EXPORT_ONLY:
            row.pop(column, None)
        event = {k: v for k, v in row.items() if v is not None}
        stamp = event.get("timestamp")
        if isinstance(stamp, datetime):
            utc = stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)
            event["timestamp"] = utc.isoformat().replace("+00:00", "Z")
        if isinstance(event.get("context"), str):
            with contextlib.suppress(orjson.JSONDecodeError):  # else left a string: the schema says why
                event["context"] = orjson.loads(event["context"])
        payloads.append(event)
        ids.append(event_id if event_id is None or isinstance(event_id, str) else str(event_id))
    return payloads, ids


def catalogue_items(
    model: ServingModel | None, kv: KVStore, limit: int = EXPORT_MAX
) -> Iterator[dict[str, Any]]:
    """Every live item once: catalogue updates (KV) first, then the model's items they do not
    shadow; at most `limit`. Rows have the import format (item_id, title, categories, created_at,
    attributes), so an export imports back as is."""
    from zerorec.online import _iso

    fresh, deleted = kv.read([ZTop(FRESH_KEY, limit), ZTop(DELETED_KEY, DELETED_MAX)])
    gone = {i for i, _ in deleted}
    seen: set[str] = set()
    count = 0
    ids = [i for i, _ in fresh if i not in gone]
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for item_id, fields in zip(chunk, kv.read([HGetAll(item_key(i)) for i in chunk]), strict=True):
            if not fields:
                continue
            r = ItemRecord.from_hash(item_id, fields)
            seen.add(item_id)
            yield {
                "item_id": item_id,
                "title": r.title,
                "categories": list(r.categories),
                "created_at": _iso(r.created_at_s),
                "attributes": dict(r.attributes),
            }
            count += 1
            if count >= limit:
                return
    if model is None:
        return
    data = model.rec.data
    for j, item_id in enumerate(data.item_ids):
        item_id = str(item_id)
        if item_id in seen or item_id in gone:
            continue
        yield {
            "item_id": item_id,
            "title": "",
            "categories": list(data.item_categories[j]),
            "created_at": _iso(model.rec.items.created[j]),
            "attributes": {},
        }
        count += 1
        if count >= limit:
            return


def jsonl_chunks(rows: Iterable[dict[str, Any]], per_chunk: int = 1000) -> Iterator[bytes]:
    """JSON lines, `per_chunk` rows per bytes chunk (a streamed response)."""
    buf: list[bytes] = []
    for row in rows:
        buf.append(orjson.dumps(row))
        if len(buf) >= per_chunk:
            yield b"\n".join(buf) + b"\n"
            buf = []
    if buf:
        yield b"\n".join(buf) + b"\n"


def parquet_bytes(rows: Iterable[dict[str, Any]], per_group: int = 10_000) -> bytes:
    """A Parquet file of catalogue rows (attributes as a JSON string column), in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("item_id", pa.string()),
            ("title", pa.string()),
            ("categories", pa.list_(pa.string())),
            ("created_at", pa.string()),
            ("attributes", pa.string()),
        ]
    )
    out = io.BytesIO()
    with pq.ParquetWriter(out, schema) as writer:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            cols = {name: [r[name] for r in batch] for name in schema.names}
            cols["attributes"] = [orjson.dumps(a).decode() for a in cols["attributes"]]
            writer.write_table(pa.table(cols, schema=schema))

        for row in rows:
            batch.append(row)
            if len(batch) >= per_group:
                flush()
                batch = []
        if batch:
            flush()
    return out.getvalue()


# ------------------------------------------------------------------------------------ OpenAPI


def _op(
    op_id: str, summary: str, request: type | None, response: type | None, errors: Sequence[int]
) -> dict[str, Any]:
    def ref(model: type) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    err = {"content": {"application/json": {"schema": ref(ErrorResponse)}}}
    why = {400: "not JSON", 401: "missing or wrong X-API-Key", 404: "unknown item or user",
           413: "body too large", 422: "invalid request",
           503: "model not loaded yet / backend unavailable"}  # fmt: skip
    doc: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {}}
    if request is not None:
        doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
    if response is not None:
        doc["responses"]["200"] = {
            "description": "ok",
            "content": {"application/json": {"schema": ref(response)}},
        }
    for status in errors:
        doc["responses"][str(status)] = {"description": why[status], **err}
    return {"post": doc}


_STD = (400, 413, 422, 503)
_BINARY = {JSONL: {"schema": {"type": "string"}}, PARQUET: {"schema": {"type": "string", "format": "binary"}}}
_SIMILAR_ITEMS = (
    "similarItems",
    "Items similar to an item (item-CF, else ALS)",
    SimilarItemsRequest,
    SimilarItemsResponse,
    (*_STD, 404),
)
_SIMILAR_USERS = (
    "similarUsers",
    "Users similar to a user",
    SimilarUsersRequest,
    SimilarUsersResponse,
    (*_STD, 404),
)
_LATEST = (
    "latestItems",
    "The newest items, of a category or all",
    CategoryListRequest,
    CategoryListResponse,
    _STD,
)
_POPULAR = ("popularItems", "The hot list, of a category or all", CategoryListRequest,
            CategoryListResponse, _STD)  # fmt: skip
_PATHS: dict[str, dict[str, tuple[Any, ...]]] = {
    "recall": {"/similar-items": _SIMILAR_ITEMS, "/latest": _LATEST},
    "user": {"/similar-users": _SIMILAR_USERS},
    "recommender": {
        "/similar-items": _SIMILAR_ITEMS,
        "/similar-users": _SIMILAR_USERS,
        "/latest": _LATEST,
        "/popular": _POPULAR,
    },
}


def openapi_paths(function: str) -> tuple[dict[str, Any], list[type]]:
    """(paths, models) this module adds to `function`'s OpenAPI document."""
    if function == "item":
        imp = _op("importItems", "Bulk upserts from JSON lines or Parquet (202: published)", None, None,
                  (400, 401, 413, 422, 503))  # fmt: skip
        imp["post"]["requestBody"] = {"required": True, "content": _BINARY}
        imp["post"]["responses"]["202"] = {"description": "published / rejected counts and reasons"}
        exp = _op("exportItems", "Every live item as JSON lines or Parquet (the import format)",
                  ExportRequest, None, (401, 422, 503))  # fmt: skip
        exp["post"]["responses"]["200"] = {"description": "the catalogue", "content": _BINARY}
        return {"/admin/items/import": imp, "/admin/items/export": exp}, [ExportRequest, ErrorResponse]
    table = _PATHS.get(function, {})
    paths = {path: _op(*spec) for path, spec in table.items()}
    models = {m for spec in table.values() for m in spec[2:4]}
    if models:
        models |= {ScoredItem, ScoredUser, ErrorResponse}
    if function == "user":
        admin_paths, admin_models = _user_admin_paths()
        paths.update(admin_paths)
        models |= admin_models
    return paths, sorted(models, key=lambda m: m.__name__)


def _user_admin_paths() -> tuple[dict[str, Any], set[type]]:
    """user's record routes (zerorec.users)."""
    from zerorec.users import UserErased, UserIdRequest, UserRecord, UsersExportRequest, UserUpsertRequest

    admin = (401, 400, 413, 422, 503)
    paths = {
        "/admin/users": _op("upsertUser", "Create or update a user record (labels, comment)",
                            UserUpsertRequest, UserRecord, admin),
        "/admin/users/get": _op("getUser", "A user record", UserIdRequest, UserRecord, (*admin, 404)),
        "/admin/users/delete": _op("eraseUser", "Erase a user: the record and the user's online state",
                                   UserIdRequest, UserErased, admin),
        "/admin/users/export": _op("exportUsers", "Every user record as JSON lines (the upsert format)",
                                   UsersExportRequest, None, admin),
    }  # fmt: skip
    paths["/admin/users/export"]["post"]["responses"]["200"] = {
        "description": "the user records", "content": {JSONL: _BINARY[JSONL]},
    }  # fmt: skip
    models = {UserErased, UserIdRequest, UserRecord, UsersExportRequest, UserUpsertRequest, ErrorResponse}
    return paths, models


def merge_openapi(document: dict[str, Any], function: str) -> dict[str, Any]:
    """`document` (an OpenAPI 3.1 dict) with this module's paths and schemas for `function` added."""
    from pydantic.json_schema import models_json_schema

    paths, models = openapi_paths(function)
    if not paths:
        return document
    _, defs = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    out = dict(document)
    out["paths"] = {**document.get("paths", {}), **paths}
    components = dict(document.get("components", {}))
    components["schemas"] = {**components.get("schemas", {}), **defs.get("$defs", {})}
    out["components"] = components
    return out


def similar_users_of(model: ServingModel, kv: KVStore, user_id: str, n: int) -> SimilarUsersResponse:
    """`similar_users` with the user's real-time recent items read from the KV (one round trip;
    the training history alone when the KV is unavailable)."""
    from zerorec.realtime import user_state_from, user_state_reads

    try:
        recent = user_state_from(user_id, kv.read(user_state_reads(user_id))).recent_items
    except BackendUnavailableError:
        recent = []
    return similar_users(model, user_id, n, recent)


IMPORT_MAX_BYTES = 32 * 1024 * 1024  # one bulk import body (a 100k-item catalogue is ~20 MB of JSON lines)


def import_items(bus: Any, topic: str, body: bytes, content_type: str) -> dict[str, Any]:
    """Publish a JSON-lines or Parquet catalogue as item upserts (the consumer applies them): the
    published and rejected counts, with the first rejections' reasons."""
    from datetime import UTC, datetime

    from zerorec.catalog import SOURCE_ADMIN, publish_rows

    rows = read_rows(body, content_type)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    report = publish_rows(bus, topic, rows, default_created_at=now, source=SOURCE_ADMIN)
    return {"rows": len(rows), **report.to_json()}


def recall_openapi() -> dict[str, Any]:
    """recall's OpenAPI document: its candidate and hot-list routes and this module's."""
    from zerorec.api import HotRequest, HotResponse, RecallRequest, RecallResponse

    own = {
        "/": ("recall", "Merged candidates of every channel", RecallRequest, RecallResponse, _STD),
        "/hot": ("hot", "The hot list (all, or one category)", HotRequest, HotResponse, _STD),
    }
    base = {
        "openapi": "3.1.0",
        "info": {"title": "ZeroRec recall (cluster-internal)", "version": "0.1.0"},
        "paths": {path: _op(*spec) for path, spec in own.items()},
    }
    from pydantic.json_schema import models_json_schema

    models = [RecallRequest, RecallResponse, HotRequest, HotResponse, ErrorResponse]
    _, defs = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    base["components"] = {"schemas": defs.get("$defs", {})}
    return merge_openapi(base, "recall")
