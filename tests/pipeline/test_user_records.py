"""functions/user's user records in-process (zerorec.users): upsert and partial update, get, export
as JSON lines, the erase that also removes the user's online state, the admin key, and the limits.
On the embedded KV and, with ZEROREC_INTEGRATION=1, on the real Redis (local/infra.sh)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pipeline_helpers import call
from zerorec.realtime import HISTORY, rt_user_key, user_key, user_state_from, user_state_reads
from zerorec.storage import kv_store
from zerorec.storage.kv import HGetAll, HSet, RecordPush
from zerorec.users import MAX_LABELS, user_record_key

KEY = "admin-key-for-tests"
AUTH = {"x-api-key": KEY}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {"ZEROREC_KV_STORE": "memory"}
    return {"ZEROREC_KV_STORE": "redis", "ZEROREC_REDIS_URL": request.getfixturevalue("redis_server")}


@pytest.fixture
def app(make_app: Any, backend: dict[str, str]) -> Any:
    return make_app("user", ZEROREC_ADMIN_API_KEY=KEY, **backend)


def post(app: Any, path: str, body: object, headers: dict[str, str] = AUTH) -> Any:
    return call(app, "POST", path, json=body, headers=headers)


def test_upsert_get_update_export_and_erase(app: Any, namespace: str) -> None:
    kv = kv_store()
    alice, bob = f"{namespace}-alice", f"{namespace}-bob"
    # the online state the consumer keeps for alice: history and real-time counts
    kv.write([RecordPush(user_key(alice), HISTORY, "i1", 50), HSet(rt_user_key(alice), {"0": "3"})])
    assert user_state_from(alice, kv.read(user_state_reads(alice))).recent_items == ["i1"]

    r = post(app, "/admin/users", {"user_id": alice, "labels": ["sports", "vip", "sports"], "comment": "hi"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["sports", "vip"] and r.json()["comment"] == "hi"
    assert post(app, "/admin/users", {"user_id": bob, "labels": ["news"]}).status_code == 200

    # a partial update keeps what it leaves out (Gorse's PATCH)
    r = post(app, "/admin/users", {"user_id": alice, "comment": "changed"})
    assert r.json()["labels"] == ["sports", "vip"] and r.json()["comment"] == "changed"
    got = post(app, "/admin/users/get", {"user_id": alice}).json()
    assert got["comment"] == "changed" and got["updated_at"].endswith("Z")

    r = post(app, "/admin/users/export", {})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = {row["user_id"]: row for row in map(orjson.loads, r.content.splitlines())}
    assert rows[alice]["labels"] == ["sports", "vip"] and rows[bob]["labels"] == ["news"]

    r = post(app, "/admin/users/delete", {"user_id": alice})
    assert r.status_code == 200 and r.json() == {"user_id": alice, "had_record": True}
    assert post(app, "/admin/users/get", {"user_id": alice}).status_code == 404
    assert user_state_from(alice, kv.read(user_state_reads(alice))).recent_items == []
    assert kv.read([HGetAll(rt_user_key(alice)), HGetAll(user_record_key(alice))]) == [{}, {}]
    exported = [orjson.loads(x)["user_id"] for x in post(app, "/admin/users/export", {}).content.splitlines()]
    assert alice not in exported and bob in exported
    # erasing a user without a record still erases their online state, and says there was no record
    assert post(app, "/admin/users/delete", {"user_id": alice}).json()["had_record"] is False
    post(app, "/admin/users/delete", {"user_id": bob})


def test_admin_key_and_bad_input(app: Any, namespace: str) -> None:
    user = f"{namespace}-u"
    assert post(app, "/admin/users", {"user_id": user}, headers={}).status_code == 401
    assert post(app, "/admin/users/export", {}, headers={"x-api-key": "wrong"}).status_code == 401
    too_many = {"user_id": user, "labels": [f"l{k}" for k in range(MAX_LABELS + 1)]}
    for body in (
        too_many,
        {"user_id": user, "labels": ["x" * 65]},
        {"user_id": user, "labels": ["bad\nlabel"]},
        {"user_id": "has space"},
        {"user_id": "{tag}"},  # would break the user's hash tag
        {"user_id": user, "comment": "c" * 1025},
        {"user_id": user, "unknown": 1},
    ):
        r = post(app, "/admin/users", body)
        assert r.status_code == 422 and r.json()["error"], (body, r.text)
    assert call(app, "POST", "/admin/users", content=b"{", headers=AUTH).status_code == 400
    assert call(app, "GET", "/admin/users/get", headers=AUTH).status_code == 405
    assert post(app, "/admin/users/get", {"user_id": user}).status_code == 404
    assert post(app, "/admin/users/export", {"limit": 0}).status_code == 422


def test_export_stops_at_its_limit(app: Any, namespace: str) -> None:
    users = [f"{namespace}-{k}" for k in range(3)]
    for u in users:
        post(app, "/admin/users", {"user_id": u, "labels": ["a"]})
    r = post(app, "/admin/users/export", {"limit": 2})
    assert len(r.content.splitlines()) == 2
    for u in users:
        post(app, "/admin/users/delete", {"user_id": u})


def test_the_routes_are_in_the_openapi_document(app: Any) -> None:
    paths = call(app, "GET", "/openapi.json").json()["paths"]
    for path in ("/admin/users", "/admin/users/get", "/admin/users/delete", "/admin/users/export"):
        assert "401" in paths[path]["post"]["responses"], path


def test_an_unreachable_kv_is_503_with_a_reason(make_app: Any) -> None:
    app = make_app(
        "user", ZEROREC_KV_STORE="redis", ZEROREC_REDIS_URL="redis://127.0.0.1:1/0", ZEROREC_ADMIN_API_KEY=KEY
    )
    calls = [
        ("/admin/users", {"user_id": "u", "labels": ["a"]}),
        ("/admin/users/get", {"user_id": "u"}),
        ("/admin/users/delete", {"user_id": "u"}),
        ("/admin/users/export", {}),
    ]
    for path, body in calls:
        r = post(app, path, body)
        assert r.status_code == 503 and "unavailable" in r.json()["error"], (path, r.text)
