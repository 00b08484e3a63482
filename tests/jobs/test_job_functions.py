"""The three job functions as functions-framework processes (embedded backends): routing and errors.

The feature job's success path costs a Spark start and is covered in test_feature_engineering;
here the handler's refusals (wrong type, missing export) never start the JVM.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zerorec.bundle import latest_version
from zerorec.cloudevents_io import from_kafka_record, new_event, to_http_binary, validate
from zerorec.settings import Settings
from zerorec.storage import event_bus, object_store
from zerorec.tasks import EXPORT_SCHEMA

from local.functions import ff, function_env, spawn, terminate, wait_ready

NAMES = ("feature-engineering", "vector-generation", "flink-realtime")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    data = tmp_path_factory.mktemp("jobs-fn")
    env = function_env(False, data, {"ZEROREC_FLINK_PYTHON": str(data / "no-such-python")})
    services = {n: ff(n, _free_port(), n.replace("-", "_")) for n in NAMES}
    procs = {svc: spawn(svc, env, data / f"{n}.log") for n, svc in services.items()}
    try:
        wait_ready(procs, 120, {n: data / f"{n}.log" for n in NAMES})
        yield {n: svc.url() for n, svc in services.items()}, data
    finally:
        with ThreadPoolExecutor(len(procs)) as pool:  # functions-framework takes ~10 s to exit
            list(pool.map(terminate, [proc.pid for proc in procs.values()]))


def _post(url: str, event_type: str, data: dict) -> httpx.Response:
    headers, body = to_http_binary(new_event(event_type, data, source="/test"))
    return httpx.post(url + "/", headers=headers, content=body, timeout=120)


def test_health(stack: tuple[dict[str, str], Path]) -> None:
    urls, _ = stack
    for url in urls.values():
        assert httpx.get(url + "/health").status_code == 200


def test_feature_engineering_refusals(stack: tuple[dict[str, str], Path]) -> None:
    url = stack[0]["feature-engineering"]
    wrong = _post(url, "dev.zerorec.task.vector-generation.v1", {})
    assert wrong.status_code == 400 and "takes dev.zerorec.task.feature-engineering.v1" in wrong.text
    missing = _post(url, "dev.zerorec.task.feature-engineering.v1", {"events_prefix": "nothing"})
    assert missing.status_code == 422 and "no exported Parquet" in missing.text
    bad = _post(url, "dev.zerorec.task.feature-engineering.v1", {"as_of": "yesterday"})
    assert bad.status_code == 400


def test_vector_generation_publishes_and_announces(stack: tuple[dict[str, str], Path]) -> None:
    urls, data = stack
    settings = Settings(data_dir=data, object_store="local", kv_store="sqlite", event_bus="sqlite")
    objects = object_store(settings)
    now = datetime(2024, 6, 1, tzinfo=UTC)
    rows = [
        {"event_id": f"e{n}", "source": "/t", "user_id": f"u{n % 9}", "item_id": f"i{(n * 7) % 13}",
         "kind": "click", "timestamp": now - timedelta(minutes=n), "value": None, "context": None,
         "topic": "t", "partition": 0, "offset": n}
        for n in range(300)
    ]  # fmt: skip
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), sink)
    objects.put("exports/events/2024-06-01/part-0.parquet", sink.getvalue())
    consumer = event_bus(settings).consumer(["zerorec.models"], "test", from_beginning=True)
    ok = _post(
        urls["vector-generation"], "dev.zerorec.task.vector-generation.v1", {"source": "events", "factors": 4}
    )
    assert ok.status_code == 200, ok.text
    report = ok.json()
    assert report["items"] == 13 and latest_version(objects, "vectors") == report["version"]
    records: list = []
    deadline = time.monotonic() + 15
    while not records and time.monotonic() < deadline:  # bounded: a loaded machine is slow
        records = consumer.poll(10, 1.0)
    assert [from_kafka_record(r)["id"] for r in records] == [report["event_id"]]
    validate(from_kafka_record(records[0]))
    missing = _post(urls["vector-generation"], "dev.zerorec.task.vector-generation.v1", {"model": "nope"})
    assert missing.status_code == 422


@pytest.mark.parametrize("name", ["recommender", "other"])
def test_vector_generation_cannot_publish_under_another_name(
    stack: tuple[dict[str, str], Path], name: str
) -> None:
    """A task naming another bundle (the recommender's LATEST above all) is refused before any
    work, and that model gets no version."""
    urls, data = stack
    objects = object_store(Settings(data_dir=data, object_store="local"))
    task = {"source": "events", "factors": 4, "name": name}
    r = _post(urls["vector-generation"], "dev.zerorec.task.vector-generation.v1", task)
    assert r.status_code == 400 and "publishes only its own bundle 'vectors'" in r.json()["error"], r.text
    assert not list(objects.list(f"models/{name}/"))


def test_flink_realtime_control(stack: tuple[dict[str, str], Path]) -> None:
    url = stack[0]["flink-realtime"]
    status = httpx.get(url + "/status").json()
    assert status["running"] is False and status["pid"] is None
    assert httpx.post(url + "/start", content=b'{"window_s": 0}').status_code == 400
    assert httpx.post(url + "/start", content=b"[1]").status_code == 400
    no_flink = httpx.post(url + "/start", content=b'{"window_s": 5}')
    assert no_flink.status_code == 422 and "no Flink interpreter" in no_flink.text
    assert httpx.post(url + "/stop").json()["stopped"] is False
    assert httpx.get(url + "/nope").status_code == 404


def test_vector_generation_follows_the_recommenders_model_published(
    stack: tuple[dict[str, str], Path],
) -> None:
    """model-training's model.published (one of its ZEROREC_PUBLISHED_SINKS) triggers a run from
    that model version; its own announcements (bundle "vectors") never trigger it: no loop."""
    url = stack[0]["vector-generation"]
    published = "dev.zerorec.model.published.v1"
    r = _post(url, published, {"name": "recommender", "version": "v-that-does-not-exist"})
    assert r.status_code == 422 and "v-that-does-not-exist" in r.text, r.text
    r = _post(url, published, {"name": "vectors", "version": "v1"})
    assert r.status_code == 400 and "follows model 'recommender'" in r.json()["error"], r.text
