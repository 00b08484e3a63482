"""End to end: the five serving functions, the consumer and the BFF (HTTP and gRPC) as separate
processes on real Redis and S3. Needs local/infra.sh start (ZEROREC_INTEGRATION=1: a failure, not a skip)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from fn_bundles import publish
from fn_stack import REPO, SERVING, Stack, Tiny, free_port, start_stack, stop_stack
from zerorec.cloudevents_io import new_event, to_http_binary
from zerorec.settings import Settings
from zerorec.storage import object_store

from local.functions import Service, ff, function_env

sys.path.insert(0, str(REPO / "functions" / "recommender" / "proto"))
import recommender_pb2 as pb
import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real(
    tiny: Tiny,
    real_settings: Settings,
    redis_server: str,
    s3_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Everything on free ports; the model (its own name) in S3, the KV in Redis."""
    model = "t" + uuid.uuid4().hex[:12]  # a model of its own in the shared bucket
    version = publish(object_store(real_settings), model, tiny.files)
    ports = {name: free_port() for name in [*SERVING, "consumer", "recommender", "grpc"]}
    urls = {f"ZEROREC_{n.upper()}_URL": f"http://127.0.0.1:{ports[n]}" for n in SERVING}
    env = function_env(
        True,
        tmp_path_factory.mktemp("e2e"),
        {
            "ZEROREC_OBJECT_STORE": "s3",
            "ZEROREC_KV_STORE": "redis",
            "ZEROREC_MODEL_NAME": model,
            "ZEROREC_ADMIN_API_KEY": uuid.uuid4().hex,  # item on real backends: as in a cluster
            "ZEROREC_ALLOW_UNAUTHENTICATED": "0",
            "ZEROREC_S3_ENDPOINT": real_settings.s3_endpoint,
            "ZEROREC_REDIS_URL": real_settings.redis_url,
            "ZEROREC_DEADLINE_MS": "3000",
            "ZEROREC_TOTAL_BUDGET_MS": "8000",
            **urls,
        },
    )
    services = [ff(n, ports[n]) for n in [*SERVING, "consumer", "recommender"]]
    services.append(
        Service(
            "grpc",
            ports["grpc"],
            (
                sys.executable,
                "functions/recommender/grpc_server.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["grpc"]),
            ),
            health=None,
        )
    )
    logs = tmp_path_factory.mktemp("e2e-logs")
    stack = start_stack(services, env, logs)
    stack.env.update(MODEL=model, VERSION=version)
    yield stack
    stop_stack(stack)


def recommend(stack: Stack, body: dict, **kw: object) -> httpx.Response:
    return httpx.post(stack.urls["recommender"] + "/recommend", json=body, timeout=15, **kw)


def test_recommend_returns_n_items_with_metadata(real: Stack) -> None:
    r = recommend(real, {"user_id": "u1", "n": 10, "context": {"device": "web"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "personalized" and body["degraded"] == [], body
    assert len(body["items"]) == 10 and len({i["item_id"] for i in body["items"]}) == 10
    assert all(i["metadata"] and i["metadata"]["categories"] for i in body["items"])
    assert body["model_versions"] == {"recall": real.env["VERSION"], "ranking": real.env["VERSION"]}


def test_grpc_path(real: Stack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{real.services['grpc'].port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        resp = stub.Recommend(pb.RecommendRequest(user_id="u2", n=5), timeout=15)
        assert len(resp.items) == 5 and resp.source == "personalized" and not resp.degraded
        assert all(it.HasField("metadata") for it in resp.items)
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(user_id="u2", n=0), timeout=15)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"user_id": "u1", "n": 10, "unknown": 1}, 422),
        ({"user_id": "u1", "n": 1000}, 422),
        ({"user_id": 7, "n": 10}, 422),
        ({"user_id": "u1", "n": "10"}, 422),
        ({"user_id": "u1", "exclude": ["x" * 10] * 7000}, 413),
    ],
)
def test_bad_requests_4xx(real: Stack, body: dict, status: int) -> None:
    r = recommend(real, body)
    assert r.status_code == status and r.json()["error"], r.text


def test_a_click_removes_the_item_from_the_next_recommendation(real: Stack) -> None:
    user = f"{real.env['MODEL']}-clicker"
    first = recommend(real, {"user_id": user, "n": 10}).json()
    clicked = first["items"][0]["item_id"]
    event = new_event(
        "dev.zerorec.behavior.v1",
        {
            "kind": "click",
            "user_id": user,
            "item_id": clicked,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        source="/zerorec/behavior",
        subject=user,
    )
    headers, data = to_http_binary(event)  # as the KafkaSource delivers it to the consumer
    r = httpx.post(real.urls["consumer"] + "/", content=data, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    profile = httpx.post(real.urls["user"] + "/", json={"user_id": user}, timeout=10).json()
    assert profile["recent_items"][:1] == [clicked] and clicked in profile["seen_items"]
    assert profile["is_new"] is False
    after = recommend(real, {"user_id": user, "n": 10}).json()
    ids = [i["item_id"] for i in after["items"]]
    assert len(ids) == 10 and clicked not in ids, after
    assert {i["channel"] for i in after["items"]} - {"hot", "fresh"}, "the click fed item-CF et al."


def test_hot_reload_from_s3_and_bad_bundle_refused(real: Stack, tiny: Tiny, real_settings: Settings) -> None:
    store = object_store(real_settings)
    model = real.env["MODEL"]
    v2 = publish(store, model, tiny.files, version="v2")
    headers, data = to_http_binary(
        new_event("dev.zerorec.model.published.v1", {"name": model, "version": v2}, source="/t")
    )
    assert (
        httpx.post(real.urls["recall"] + "/events/model-published", content=data, headers=headers).status_code
        == 202
    )
    deadline = time.monotonic() + 30
    while httpx.get(real.urls["recall"] + "/health").json()["model_version"] != v2:
        assert time.monotonic() < deadline, real.log("recall")[-2000:]
        time.sleep(0.1)
    v3 = publish(store, model, tiny.files, version="v3")
    store.put(f"models/{model}/{v3}/meta.json", b"{}")
    headers, data = to_http_binary(
        new_event("dev.zerorec.model.published.v1", {"name": model, "version": v3}, source="/t")
    )
    assert (
        httpx.post(real.urls["recall"] + "/events/model-published", content=data, headers=headers).status_code
        == 202
    )
    deadline = time.monotonic() + 30
    while "last_error" not in (h := httpx.get(real.urls["recall"] + "/health").json()):
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert h["model_version"] == v2 and "IntegrityError" in h["last_error"]
    assert recommend(real, {"user_id": "u1", "n": 5}).json()["model_versions"]["recall"] == v2


def test_killed_ranking_then_recall_still_answer_200_degraded(real: Stack) -> None:
    real.kill("ranking")
    r = recommend(real, {"user_id": "u1", "n": 10})
    assert r.status_code == 200 and "ranking_unavailable" in r.json()["degraded"], r.text
    assert len(r.json()["items"]) == 10
    real.kill("recall")
    r = recommend(real, {"user_id": "u1", "n": 10})
    assert r.status_code == 200 and "recall_unavailable" in r.json()["degraded"], r.text
