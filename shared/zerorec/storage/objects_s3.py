"""Object store backend on any S3-compatible server (MinIO in production) via boto3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from zerorec.errors import BackendUnavailableError, NotFoundError
from zerorec.storage.objects import ObjectStore, listable_prefix, validate_key

if TYPE_CHECKING:
    from zerorec.settings import Settings

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3ObjectStore(ObjectStore):
    """Objects live in `bucket`, optionally under a fixed `prefix` (a folder that acts as the root)."""

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        prefix: str = "",
        connect_timeout_s: float = 3.0,
        request_timeout_s: float = 5.0,
        page_size: int = 1000,
    ) -> None:
        if prefix:
            validate_key(prefix.rstrip("/"))
            prefix = prefix.rstrip("/") + "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.page_size = page_size
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=request_timeout_s,
            retries={"total_max_attempts": 2, "mode": "standard"},  # one retry, so a dead server fails fast
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        )
        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )

    @classmethod
    def from_settings(cls, settings: Settings, prefix: str = "", page_size: int = 1000) -> S3ObjectStore:
        """Build the store from ZEROREC_S3_* settings."""
        return cls(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
            prefix=prefix,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            page_size=page_size,
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except ClientError as exc:
            raise self._map(what, exc) from exc
        except BotoCoreError as exc:  # connection refused, timeouts, DNS ...
            raise BackendUnavailableError(f"S3 at {self.endpoint} unavailable during {what}: {exc}") from exc

    def _map(self, what: str, exc: ClientError) -> Exception:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or (status == "404" and code not in ("NoSuchBucket",)):
            return NotFoundError(f"{what}: not found")
        return BackendUnavailableError(
            f"S3 at {self.endpoint} refused {what} (bucket {self.bucket!r}): "
            f"{code or status} {err.get('Message', '')}"
        )

    # ---- port ------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (local servers; MinIO buckets are provisioned)."""
        try:
            self._call(f"head bucket {self.bucket!r}", self._s3.head_bucket, Bucket=self.bucket)
        except NotFoundError:
            self._call(f"create bucket {self.bucket!r}", self._s3.create_bucket, Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        self._call(
            f"put {key!r}", self._s3.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=bytes(data)
        )

    def get(self, key: str) -> bytes:
        key = validate_key(key)
        try:
            resp = self._call(f"get {key!r}", self._s3.get_object, Bucket=self.bucket, Key=self.prefix + key)
            return resp["Body"].read()
        except NotFoundError:
            raise NotFoundError(f"object {key!r} not found") from None
        except BotoCoreError as exc:  # the body stream broke mid-read
            raise BackendUnavailableError(
                f"S3 at {self.endpoint} unavailable reading {key!r}: {exc}"
            ) from exc

    def exists(self, key: str) -> bool:
        key = validate_key(key)
        try:
            self._call(f"head {key!r}", self._s3.head_object, Bucket=self.bucket, Key=self.prefix + key)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield keys under `prefix` in lexicographic order, fetched one page at a time."""
        if not listable_prefix(prefix):
            return
        full = self.prefix + prefix
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.page_size}
        )
        cut = len(self.prefix)
        it = iter(pages)
        while True:
            page = self._next_page(it, prefix)
            if page is None:
                return
            for obj in page.get("Contents", ()):
                if obj["Key"].startswith(full):  # never trust a server that normalises '..'
                    yield obj["Key"][cut:]

    def _next_page(self, it: Iterator[dict], prefix: str) -> dict | None:
        try:
            return next(it, None)
        except ClientError as exc:
            raise self._map(f"list {prefix!r}", exc) from exc
        except BotoCoreError as exc:
            raise BackendUnavailableError(f"S3 at {self.endpoint} unavailable during list: {exc}") from exc

    def delete(self, key: str) -> None:
        key = validate_key(key)
        self._call(f"delete {key!r}", self._s3.delete_object, Bucket=self.bucket, Key=self.prefix + key)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._s3.close()
