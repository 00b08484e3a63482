"""A cluster that comes up from nothing: the bucket, then a first model (`zerorec init-cluster`).

A fresh cluster has no bucket and no model, so the serving functions have nothing to load (their
/health says so, 503, and they retry). `init_cluster` is the one-shot that fixes that, run as a
Kubernetes Job from the jobs image (or by hand):

1. the bucket: created when missing (S3 CreateBucket through the `minio` client: obstore has no
   bucket calls; minio lives in the `train` extra of the jobs image, never on the serving path);
2. the model: when `models/<name>/LATEST` does not exist, a first model is trained and published,
   exactly as `zerorec train` does (`train_and_publish`), from a dataset that is a local path, an
   `s3://bucket/prefix` of the CSV layouts `zerorec.data.load_dataset` reads (downloaded to a
   temporary folder), or the built-in synthetic set when none is given.

Idempotent: a second run finds both and changes nothing (`InitReport.changed` is False). The serving
functions find the new LATEST on their next retry (ZEROREC_MODEL_RETRY_S); nothing needs a restart.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from zerorec.bundle import latest_version, publish_bundle
from zerorec.errors import BackendUnavailableError, InvalidInputError, NotFoundError
from zerorec.settings import Settings
from zerorec.storage import ObjectStore, object_store

if TYPE_CHECKING:
    import pandas as pd

    from zerorec.pipeline import PipelineConfig

Log = Callable[[str], None]
T = TypeVar("T")
# The files of the dataset layouts load_dataset reads (MovieLens latest-small, ML-100K, generic CSV):
# only these are fetched from an s3:// dataset, so a prefix can never make the job download a bucket.
DATASET_FILES = ("ratings.csv", "movies.csv", "tags.csv", "u.data", "u.item", "interactions.csv", "items.csv")


@dataclass
class InitReport:
    """What `init_cluster` found and did."""

    bucket: str  # "created", "exists" or "local" (the embedded object store: a folder)
    model: str
    version: str
    trained: bool
    dataset: str | None = None
    train_seconds: float | None = None

    @property
    def changed(self) -> bool:
        return self.bucket == "created" or self.trained

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


# ------------------------------------------------------------------------------------ the bucket


def _s3_client(settings: Settings) -> Any:
    """A minio S3 client on the configured endpoint (path style, as MinIO and S3Proxy serve), with
    bounded waits: a dead server is an error in seconds, not a hang."""
    try:
        import urllib3
        from minio import Minio
    except ImportError as exc:  # the serving image has no minio: this is the jobs image's work
        raise InvalidInputError(
            "init-cluster needs the minio client (pip install 'zerorec[train]': the jobs image has it)"
        ) from exc
    url = urlsplit(settings.s3_endpoint)
    if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/"):
        raise InvalidInputError(f"ZEROREC_S3_ENDPOINT {settings.s3_endpoint!r}: want http(s)://host[:port]")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=settings.request_timeout_s),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        url.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=url.scheme == "https",
        region=settings.s3_region,
        http_client=http,
    )


def _s3_call(settings: Settings, what: str, call: Callable[[], T]) -> T:
    """Run one minio call: a missing bucket or key is NotFoundError, anything else that goes wrong
    (unreachable, wrong credentials, a server error) BackendUnavailableError, with what was done."""
    import urllib3
    from minio.error import MinioException, S3Error

    try:
        return call()
    except S3Error as exc:
        if exc.code in ("NoSuchBucket", "NoSuchKey", "NotFound"):
            raise NotFoundError(f"{what}: {exc.code}") from exc
        raise BackendUnavailableError(
            f"S3 at {settings.s3_endpoint} refused {what}: {exc.code} {exc.message}"
        ) from exc
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise BackendUnavailableError(
            f"S3 at {settings.s3_endpoint} unreachable during {what}: {exc}"
        ) from exc


def ensure_bucket(settings: Settings) -> str:
    """Create the configured bucket if it is missing: 'created', 'exists', or 'local' when the
    object store is the embedded folder (made if missing). BackendUnavailableError when S3 is
    unreachable or refuses (wrong credentials: the message says so)."""
    if settings.object_store != "s3":
        settings.objects_dir.mkdir(parents=True, exist_ok=True)
        return "local"
    from minio.error import S3Error

    client = _s3_client(settings)
    bucket = settings.s3_bucket
    if _s3_call(settings, f"HEAD bucket {bucket!r}", lambda: client.bucket_exists(bucket)):
        return "exists"
    try:
        _s3_call(settings, f"CreateBucket {bucket!r}", lambda: client.make_bucket(bucket, settings.s3_region))
    except BackendUnavailableError as exc:
        cause = exc.__cause__
        if isinstance(cause, S3Error) and cause.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return "exists"  # another init job won the race
        raise
    return "created"


# ------------------------------------------------------------------------------------ the dataset


def fetch_dataset(uri: str, workdir: Path, settings: Settings) -> Path:
    """A dataset location as a local path load_dataset reads. A local path is checked and returned;
    `s3://bucket/key.csv` is downloaded as that one file; `s3://bucket/prefix` downloads the dataset
    files (DATASET_FILES) directly under the prefix into `workdir`, streamed to disk. The endpoint
    and credentials are the configured S3's. InvalidInputError / NotFoundError with the reason."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.exists():
            raise NotFoundError(f"dataset {uri!r} does not exist")
        return path
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise InvalidInputError(f"dataset {uri!r}: write s3://BUCKET/PREFIX")
    client = _s3_client(settings)
    key = key.strip("/")
    if key.endswith(".csv"):  # one interactions file
        target = workdir / PurePosixPath(key).name
        _s3_call(settings, f"GET {uri}", lambda: client.fget_object(bucket, key, str(target)))
        return target
    prefix = f"{key}/" if key else ""
    listed = _s3_call(settings, f"LIST {uri}", lambda: list(client.list_objects(bucket, prefix=prefix)))
    names = {o.object_name[len(prefix) :] for o in listed if not o.is_dir}
    wanted = [n for n in DATASET_FILES if n in names]
    if not wanted:
        found = sorted(names)[:10] or "nothing"
        raise NotFoundError(f"dataset {uri!r}: none of {', '.join(DATASET_FILES)} under it (found {found})")
    for name in wanted:
        _s3_call(
            settings,
            f"GET {uri}/{name}",
            lambda name=name: client.fget_object(bucket, prefix + name, str(workdir / name)),
        )
    return workdir


def load_training_data(
    dataset: str | None, settings: Settings, workdir: Path
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(interactions, items) of `dataset` (a path or s3:// URI), or the synthetic set when None."""
    from zerorec.data import generate, load_dataset

    if dataset is None:
        return generate()
    return load_dataset(fetch_dataset(dataset, workdir, settings))


# ------------------------------------------------------------------------------------ the model


def train_and_publish(
    store: ObjectStore,
    name: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    *,
    config: PipelineConfig | None = None,
    threads: int = 2,
    log: Log | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train every channel and the DeepFM ranker, publish the bundle (LATEST moves): what
    `zerorec train` and `zerorec init-cluster` run. Returns (version, training info)."""
    from threadpoolctl import threadpool_limits

    from zerorec.pipeline import train_recommender

    with threadpool_limits(threads):
        rec, info = train_recommender(interactions, items, config, progress=log is not None, log=log)
    return publish_trained(store, name, rec, info), info


def publish_trained(store: ObjectStore, name: str, rec: Any, info: dict[str, Any]) -> str:
    """Publish a trained recommender (either engine's) with its config, metrics and data window as
    the manifest records them; LATEST moves. Returns the version."""
    return publish_bundle(
        store,
        name,
        rec.to_files(),
        params=info["config"],
        metrics={
            k: info[k] for k in ("validation_candidate_recall", "ranker_rows", "train_seconds") if k in info
        },
        data_window=info["data_window"],
    )


def init_cluster(
    settings: Settings,
    *,
    dataset: str | None = None,
    model_name: str | None = None,
    config: PipelineConfig | None = None,
    log: Log = lambda msg: None,
) -> InitReport:
    """Bring a cluster's storage up from nothing (see the module doc); idempotent. Raises
    BackendUnavailableError (S3 unreachable or refusing), InvalidInputError / NotFoundError (a bad
    dataset or name) with the reason; nothing is published unless training succeeded."""
    name = model_name or settings.model_name
    dataset = dataset if dataset is not None else settings.init_dataset
    bucket = ensure_bucket(settings)
    where = f"bucket {settings.s3_bucket!r} at {settings.s3_endpoint}" if bucket != "local" else str(
        settings.objects_dir
    )  # fmt: skip
    log(f"bucket: {where} {'created' if bucket == 'created' else 'ready'}")
    store = object_store(settings)
    report = InitReport(bucket=bucket, model=name, version="", trained=False, dataset=dataset)
    try:
        report.version = latest_version(store, name)
        log(f"model: {name!r} already published (LATEST = {report.version}): nothing to train")
        return report
    except NotFoundError:
        pass
    log(f"model: {name!r} has no LATEST: training a first model on {dataset or 'the synthetic data set'}")
    with tempfile.TemporaryDirectory(prefix="zerorec-init-") as tmp:
        interactions, items = load_training_data(dataset, settings, Path(tmp))
    log(f"data: {len(interactions)} interactions, {interactions['user_id'].nunique()} users")
    report.version, info = train_and_publish(store, name, interactions, items, config=config, log=log)
    report.trained = True
    report.train_seconds = round(float(info.get("train_seconds", 0.0)), 1)
    log(f"model: published {name}/{report.version}; LATEST points at it")
    return report
