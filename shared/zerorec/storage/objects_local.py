"""Object store backend on a local directory: the embedded default, no server needed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.storage.objects import ObjectStore, listable_prefix, validate_key

_TMP_PREFIX = ".zr-tmp-"


class LocalObjectStore(ObjectStore):
    """Objects are files under `root`; writes are atomic (temp file + os.replace)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        key = validate_key(key)
        if any(part.startswith(_TMP_PREFIX) for part in key.split("/")):
            raise InvalidInputError(f"object key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
        path = self.root / key
        # validate_key already refuses '..'; this also guards against symlinks pointing out of root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidInputError(f"object key {key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        """Write `data` to a temp file beside the target, fsync it, then rename it into place."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidInputError(f"object key {key!r} nests under an existing object") from exc
        if path.is_dir():
            raise InvalidInputError(f"object key {key!r} is a prefix of existing objects")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(data))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError(f"object {key!r} not found") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with `prefix` in lexicographic order (walks only the prefix's folder)."""
        if not listable_prefix(prefix):
            return
        start = self.root
        if "/" in prefix:
            try:
                start = self._path(prefix.rsplit("/", 1)[0])
            except InvalidInputError:
                return
        if not start.is_dir():
            return
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the file and any folders it leaves empty; a missing key is not an error."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
