"""Object store port: versioned model bundles, catalogue imports and event-log exports live here.

Backends: `LocalObjectStore` (a directory, the embedded default) and `S3ObjectStore`
(any S3-compatible server: MinIO in production, S3Proxy locally).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import PurePosixPath

from zerorec.errors import InvalidInputError


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidInputError.

    Refused: empty keys, absolute paths, `..` or `.` segments, empty segments, backslashes, NUL.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInputError("object key must be a non-empty string")
    if "\x00" in key or "\\" in key:
        raise InvalidInputError(f"object key {key!r} contains a NUL or backslash")
    if key.startswith("/"):
        raise InvalidInputError(f"object key {key!r} is absolute; keys are relative")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidInputError(f"object key {key!r} has an empty, '.' or '..' segment")
    return str(PurePosixPath(key))


def listable_prefix(prefix: str) -> bool:
    """True if a valid key could start with `prefix`: its complete segments form a valid key.

    Backends list nothing for other prefixes (`../`, `/abs`, `a//`), so a prefix can never reach
    outside the store's root.
    """
    if "\x00" in prefix or "\\" in prefix:
        return False
    if "/" not in prefix:
        return True
    try:
        validate_key(prefix.rsplit("/", 1)[0])
    except InvalidInputError:
        return False
    return True


class ObjectStore(ABC):
    """A flat namespace of immutable-ish blobs addressed by '/'-separated keys."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous object."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise NotFoundError if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys that start with `prefix`, in lexicographic order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
