"""`zerorec init-cluster`: a cluster's storage from nothing (bucket, first model), idempotent.

The S3 tests run against the real S3Proxy of local/infra.sh with fresh bucket names (removed at
the end), and train on a tiny synthetic set with a tiny pipeline (seconds).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner
from zerorec import settings as settings_mod
from zerorec.bundle import latest_version, list_versions, load_bundle
from zerorec.cli import app
from zerorec.cluster_init import _s3_client, ensure_bucket, init_cluster
from zerorec.data.synthetic import SyntheticConfig, generate
from zerorec.errors import NotFoundError
from zerorec.pipeline import PipelineConfig
from zerorec.settings import Settings
from zerorec.storage import object_store
from zerorec.storage.objects_s3 import S3ObjectStore

from local.functions import Service, ff, function_env, spawn, terminate, wait_ready

TINY = PipelineConfig(
    als_factors=4,
    als_iterations=2,
    ranker_epochs=1,
    ranker_threads=1,
    n_candidates=60,
    quotas={"ease": 20, "itemcf": 10, "als": 10, "vector": 8, "hot": 8, "fresh": 4},
)


def tiny_csvs(folder: Path) -> dict[str, bytes]:
    """interactions.csv + items.csv (the generic layout load_dataset reads) of a tiny synthetic set."""
    interactions, items = generate(SyntheticConfig(n_users=60, n_items=120, mean_interactions=12, seed=3))
    items = items.assign(categories=["|".join(c) for c in items["categories"]])
    folder.mkdir(parents=True, exist_ok=True)
    interactions.to_csv(folder / "interactions.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return {name: (folder / name).read_bytes() for name in ("interactions.csv", "items.csv")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lines(log: list[str]) -> str:
    return "\n".join(log)


# --------------------------------------------------------------------------- embedded store


def test_local_store_from_a_dataset_path_then_nothing_to_do(tmp_path: Path) -> None:
    tiny_csvs(tmp_path / "ds")
    s = Settings(data_dir=tmp_path / "data", object_store="local")
    log: list[str] = []
    first = init_cluster(s, dataset=str(tmp_path / "ds"), config=TINY, log=log.append)
    assert first.bucket == "local" and first.trained and first.changed
    assert latest_version(object_store(s), "recommender") == first.version
    assert "training a first model" in lines(log) and "published recommender/" in lines(log)
    log.clear()
    again = init_cluster(s, dataset=str(tmp_path / "ds"), config=TINY, log=log.append)
    assert not again.changed and again.version == first.version
    assert "already published" in lines(log)
    assert list_versions(object_store(s), "recommender") == [first.version], "no second training"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for key in ("ZEROREC_OBJECT_STORE", "ZEROREC_INIT_DATASET", "ZEROREC_MODEL_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ZEROREC_DATA_DIR", str(tmp_path / "data"))
    settings_mod.get_settings.cache_clear()
    yield tmp_path
    settings_mod.get_settings.cache_clear()


def test_cli_exit_codes(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["init-cluster", "--dataset", str(cli_env / "no-such-folder")])
    assert r.exit_code == 2 and "does not exist" in r.output, r.output
    r = runner.invoke(app, ["init-cluster", "--model-name", "../escape"])
    assert r.exit_code == 2 and "bad model name" in r.output, r.output
    # an unreachable S3: exit 3 with the endpoint named, within the bounded waits
    monkeypatch.setenv("ZEROREC_OBJECT_STORE", "s3")
    monkeypatch.setenv("ZEROREC_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("ZEROREC_CONNECT_TIMEOUT_S", "1")
    settings_mod.get_settings.cache_clear()
    started = time.monotonic()
    r = runner.invoke(app, ["init-cluster"])
    assert r.exit_code == 3 and "127.0.0.1:1" in r.output and "unreachable" in r.output, r.output
    assert time.monotonic() - started < 30


def test_cli_with_a_published_model_does_nothing(cli_env: Path) -> None:
    from zerorec.bundle import publish_bundle

    s = Settings(data_dir=cli_env / "data", object_store="local")
    version = publish_bundle(object_store(s), "recommender", {"meta.json": b"{}"})
    r = CliRunner().invoke(app, ["init-cluster"])
    assert r.exit_code == 0 and "nothing to do" in r.output, r.output
    assert f'"version": "{version}"' in r.output and '"changed": false' in r.output


# --------------------------------------------------------------------------- real S3 (S3Proxy)


@pytest.fixture
def fresh(real_settings: Settings, s3_server: str) -> Iterator[tuple[Settings, Settings]]:
    """(cluster settings on a bucket that does not exist yet, settings of a dataset bucket); both
    buckets and their objects are removed afterwards."""
    run = uuid.uuid4().hex[:10]
    cluster = real_settings.model_copy(update={"s3_bucket": f"init-{run}", "kv_store": "sqlite"})
    data = real_settings.model_copy(update={"s3_bucket": f"initds-{run}"})
    yield cluster, data
    client = _s3_client(real_settings)
    for bucket in (cluster.s3_bucket, data.s3_bucket):
        if client.bucket_exists(bucket):
            for obj in client.list_objects(bucket, recursive=True):
                client.remove_object(bucket, obj.object_name)
            client.remove_bucket(bucket)


def test_from_nothing_on_s3(fresh: tuple[Settings, Settings], tmp_path: Path) -> None:
    """A serving function waits (503, the reason names the bucket), init-cluster creates the bucket
    and publishes a first model from an s3:// dataset, the function loads it by itself; a second
    run changes nothing."""
    cluster, data = fresh
    assert ensure_bucket(data) == "created"
    for name, blob in tiny_csvs(tmp_path / "ds").items():
        S3ObjectStore.from_settings(data, prefix="datasets/tiny").put(name, blob)
    S3ObjectStore.from_settings(data, prefix="datasets/tiny").put("README.txt", b"not a dataset file")

    env = function_env(
        False,
        tmp_path / "fn",
        {
            "ZEROREC_OBJECT_STORE": "s3",
            "ZEROREC_S3_ENDPOINT": cluster.s3_endpoint,
            "ZEROREC_S3_BUCKET": cluster.s3_bucket,
            "ZEROREC_MODEL_RETRY_S": "0.5",
            "ZEROREC_KV_STORE": "memory",
            "ZEROREC_ADMIN_API_KEY": "init-cluster-test",  # user's admin routes refuse to open without one
        },
    )
    port = _free_port()
    svc = Service("user", port, ff("user", port).argv, health=None)  # ready: answering at all
    log_path = tmp_path / "user.log"
    proc = spawn(svc, env, log_path)
    try:
        wait_ready({svc: proc}, 60, {"user": log_path})
        h = httpx.get(svc.url() + "/health", timeout=5)
        assert h.status_code == 503 and f"bucket {cluster.s3_bucket!r}" in h.json()["reason"], h.text

        log: list[str] = []
        report = init_cluster(
            cluster, dataset=f"s3://{data.s3_bucket}/datasets/tiny", config=TINY, log=log.append
        )
        assert report.bucket == "created" and report.trained, lines(log)
        assert "bucket" in lines(log) and "published" in lines(log)
        bundle = load_bundle(object_store(cluster), "recommender")
        assert bundle.version == report.version and "meta.json" in bundle.files

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            h = httpx.get(svc.url() + "/health", timeout=5)
            if h.status_code == 200:
                break
            time.sleep(0.3)
        assert h.status_code == 200 and h.json()["model_version"] == report.version, h.text
    finally:
        terminate(proc.pid, grace_s=5)

    log.clear()
    again = init_cluster(cluster, dataset=f"s3://{data.s3_bucket}/datasets/tiny", config=TINY, log=log.append)
    assert again.bucket == "exists" and not again.trained and not again.changed
    assert again.version == report.version and "already published" in lines(log)
    assert list_versions(object_store(cluster), "recommender") == [report.version]


def test_s3_dataset_errors(fresh: tuple[Settings, Settings], tmp_path: Path) -> None:
    cluster, data = fresh
    assert ensure_bucket(data) == "created"
    S3ObjectStore.from_settings(data).put("empty/notes.txt", b"x")
    with pytest.raises(NotFoundError, match="none of"):
        init_cluster(cluster, dataset=f"s3://{data.s3_bucket}/empty", config=TINY)
    with pytest.raises(NotFoundError, match="NoSuch"):
        init_cluster(cluster, dataset=f"s3://{data.s3_bucket}/missing/ratings.csv", config=TINY)
    with pytest.raises(NotFoundError):
        init_cluster(cluster, dataset=f"s3://{data.s3_bucket}-absent/x", config=TINY)
    # the bucket was made, no model was published
    assert ensure_bucket(cluster) == "exists"
    with pytest.raises(NotFoundError):
        latest_version(object_store(cluster), "recommender")
