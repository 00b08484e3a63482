"""One typed settings object, read from ZEROREC_* environment variables.

Every backend is chosen here: the embedded defaults need nothing installed; the real ones
point at Kafka, Redis and an S3-compatible server (MinIO in production).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("zerorec.settings")


class Settings(BaseSettings):
    """ZeroRec configuration. Field `foo_bar` is read from `ZEROREC_FOO_BAR`."""

    model_config = SettingsConfigDict(env_prefix="ZEROREC_", extra="ignore")

    # Where embedded backends and local runs keep their files.
    data_dir: Path = Field(default=Path(".zerorec"), description="working folder for embedded backends")

    # Backend selection: embedded default | real service.
    object_store: Literal["local", "s3"] = "local"
    # sqlite: a file under data_dir that separate processes share; memory: one process only.
    kv_store: Literal["sqlite", "memory", "redis"] = "sqlite"
    event_bus: Literal["sqlite", "memory", "kafka"] = "sqlite"
    sqlite_kv_path: Path | None = Field(default=None, description="KV file; default data_dir/kv.sqlite3")
    sqlite_bus_path: Path | None = Field(default=None, description="bus file; default data_dir/bus.sqlite3")

    # S3-compatible object store (MinIO role).
    s3_endpoint: str = "http://127.0.0.1:19000"
    s3_bucket: str = "zerorec"
    s3_access_key: str = "zerorec"
    s3_secret_key: str = "zerorec-secret"
    s3_region: str = "us-east-1"

    # Redis key-value / feature store.
    redis_url: str = "redis://127.0.0.1:16379/0"

    # Kafka event bus.
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic_behavior: str = "zerorec.behavior"
    topic_items: str = "zerorec.items"
    topic_dead_letter: str = "zerorec.dead-letter"

    # Bounded waits so a stopped server gives an error instead of a hang.
    connect_timeout_s: float = Field(default=3.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)

    # Retention of the embedded (SQLite) bus, per partition, like Kafka's retention.ms / .bytes.
    bus_retention_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="embedded bus: records older than this are deleted"
    )
    bus_retention_records: int = Field(
        default=1_000_000, ge=1, description="embedded bus: records kept per partition at most"
    )

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def kv_sqlite_file(self) -> Path:
        return self.sqlite_kv_path or self.data_dir / "kv.sqlite3"

    @property
    def bus_sqlite_file(self) -> Path:
        return self.sqlite_bus_path or self.data_dir / "bus.sqlite3"

    # --- BFF (recommender): downstream functions, deadlines and budget -------------------------
    recall_url: str = "http://127.0.0.1:8081"
    ranking_url: str = "http://127.0.0.1:8082"
    reranking_url: str = "http://127.0.0.1:8083"
    user_url: str = "http://127.0.0.1:8084"
    item_url: str = "http://127.0.0.1:8085"
    pipeline_url: str = Field(
        default="",
        description="compact topology: the pipeline function (recall + ranking + reranking in one "
        "process) the BFF calls instead of the three; empty: one function per stage",
    )
    deadline_ms: int = Field(default=300, gt=0, description="deadline of each downstream call")
    total_budget_ms: int = Field(default=1000, gt=0, description="budget of one whole recommendation")
    recall_candidates: int = Field(default=500, ge=1, le=2000, description="candidates asked of recall")
    grpc_port: int = Field(default=10072, gt=0, lt=65536, description="recommender gRPC port")
    # --- impressions, CTR and experiments (zerorec.ctr, zerorec.experiments) --------------------
    variant: str = Field(
        default="default", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$",
        description="this revision's variant name, in every answer (a Knative revision sets its own)",
    )
    experiment: str = Field(default="", description="in-revision experiment (JSON, zerorec.experiments)")
    recommendation_ttl_s: int = Field(
        default=1800, ge=0, description="how long the BFF keeps what it served, for CTR attribution (0: off)"
    )
    recommender_url: str = Field(default="http://127.0.0.1:10071", description="the BFF (for the dashboard)")
    evaluation_dir: Path = Field(
        default=Path("docs/evaluation"), description="`zerorec evaluate`'s report.json and .png"
    )

    # --- serving functions (recall, ranking, reranking, user, item) ---------------------------
    model_name: str = Field(default="recommender", description="bundle the serving functions load")
    model_cache_dir: Path | None = Field(default=None, description="verified bundle files kept here")
    model_retry_s: float = Field(default=5.0, gt=0, description="retry period while no model is loaded")
    model_poll_s: float = Field(default=60.0, ge=0, description="how often LATEST is checked (0: never)")
    vectors_model: str = Field(
        default="vectors",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="vector-generation's bundle, recall's vector channel ('': the model's own vectors)",
    )
    rerank_diversity: float | None = Field(
        default=None, ge=0, le=1, description="MMR trade-off; None keeps the bundle's value"
    )
    admin_api_key: str = Field(default="", description="X-API-Key for the item and user admin endpoints")

    # --- event pipeline: behavior ingestion, consumer, worker -----------------------------------
    behavior_api_key: str = Field(default="", description="X-API-Key for POST /events")
    allow_unauthenticated: bool = Field(
        default=False,
        description="behavior and item admin run without an API key on real backends (on purpose only)",
    )
    behavior_max_batch: int = Field(default=1000, ge=1, le=10000, description="events per request")
    behavior_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="request body limit")
    consumer_category_cache_s: float = Field(default=10.0, ge=0, description="item-category cache TTL")
    dedupe_window_s: int = Field(
        default=3600, gt=0, description="how long the consumer remembers an applied event id (at least)"
    )
    export_group: str = Field(default="zerorec-export-events", description="export task consumer group")
    feedback_weights: str = Field(
        default="",
        description="weight per behaviour kind over the defaults, e.g. 'view=0.5,purchase=6'",
    )
    negative_neighbours: int = Field(
        default=20, ge=0, le=200, description="item-CF neighbours of each disliked/hidden item recall demotes"
    )
    negative_demotion: float = Field(
        default=0.5, gt=0, le=1, description="score factor of those neighbours (1: no demotion)"
    )
    consumer_max_batch_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="body limit of one batched delivery to the consumer"
    )

    # --- observability (zerorec.observability, applied to every function by zerorec.runner) -----
    metrics_enabled: bool = Field(default=True, description="GET /metrics and request counting")
    log_format: Literal["json", "text"] = Field(default="json", description="log lines: JSON objects or text")
    access_log: bool = Field(default=False, description="one log line per request (route, status, ms)")
    tracing: Literal["off", "otlp", "console"] = Field(
        default="off", description="OpenTelemetry spans: off, OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT), stdout"
    )

    # --- cluster bring-up (`zerorec init-cluster`) ---------------------------------------------
    init_dataset: str | None = Field(
        default=None, description="dataset of the first model: a path or s3://bucket/prefix (None: synthetic)"
    )

    # --- model training: engine, Spark, memory guard ----------------------------------------------
    train_engine: Literal["local", "spark"] = Field(
        default="local", description="local: one process (small data); spark: Spark MLlib + torch"
    )
    spark_master: str = Field(default="local[*]", description="Spark master of the spark training engine")
    spark_driver_memory: str = Field(default="2g", description="spark.driver.memory of the training engine")
    train_device: str = Field(default="cpu", description="torch device of the ranker: cpu, cuda or cuda:N")
    train_memory_fraction: float = Field(
        default=0.8, gt=0, le=1, description="share of the available memory a local training may plan to use"
    )

    @field_validator("feedback_weights")
    @classmethod
    def _weights_parse(cls, value: str) -> str:
        """Refuse a malformed ZEROREC_FEEDBACK_WEIGHTS at start-up, with the reason."""
        from zerorec.feedback import parse_weights
        from zerorec.realtime import EVENT_WEIGHTS

        try:
            parse_weights(value, EVENT_WEIGHTS)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("model_cache_dir", "sqlite_kv_path", "sqlite_bus_path", "init_dataset", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`ZEROREC_MODEL_CACHE_DIR=` (set but empty) means "not set", not `Path("")`, the current
        directory (a read-only root in a container, or files dropped wherever the process started)."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def real_backends(self) -> list[str]:
        """The real (networked, shared) backends configured: the ones an open endpoint would expose."""
        chosen = {"object_store": self.object_store, "kv_store": self.kv_store, "event_bus": self.event_bus}
        return [f"{k}={v}" for k, v in chosen.items() if v in ("s3", "redis", "kafka")]


API_KEYS_SECRET = "zerorec-api-keys"  # the Kubernetes Secret the manifests take the keys from
OPEN_SETTING = "ZEROREC_ALLOW_UNAUTHENTICATED"


class RefusedToStart(SystemExit):
    """Raised while a function imports, when its configuration would expose a writing endpoint:
    the process exits with status 1 and the reason on stderr, so the pod never becomes Ready."""


def require_api_key(settings: Settings, key: str, setting: str, endpoint: str) -> None:
    """Refuse to start `endpoint` (RefusedToStart) without an API key when a real backend is
    configured: there the endpoint writes to shared Kafka/Redis/S3 that other clients trust. The
    embedded backends (one developer's machine) stay open; `ZEROREC_ALLOW_UNAUTHENTICATED=1` opens
    it on real backends too, on purpose and with a warning."""
    real = settings.real_backends
    if key or not real:
        return
    if settings.allow_unauthenticated:
        log.warning(
            "%s runs WITHOUT authentication on real backends (%s) because %s=1; set %s to protect it",
            endpoint, ", ".join(real), OPEN_SETTING, setting,
        )  # fmt: skip
        return
    raise RefusedToStart(
        f"zerorec: refusing to start {endpoint}: {setting} is empty while real backends are configured "
        f"({', '.join(real)}). Set {setting} (in a cluster from the Secret {API_KEYS_SECRET!r}), or set "
        f"{OPEN_SETTING}=1 to run it without authentication on purpose."
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()
