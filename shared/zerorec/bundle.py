"""Versioned model bundles in the object store; safe formats only, every byte verified on load.

Layout: `models/<name>/<version>/<file>`, `models/<name>/<version>/manifest.json` and
`models/<name>/LATEST` (the current version, as text). `publish_bundle` writes the files, then the
manifest, then LATEST, so a reader that follows LATEST never sees half a bundle. Pickle and other
executable formats are refused at publish and at load: only the extensions in `ALLOWED_EXTENSIONS`.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from zerorec.errors import IntegrityError, InvalidInputError, NotFoundError
from zerorec.storage.objects import ObjectStore

if TYPE_CHECKING:  # numpy loads lazily: a function's cold start fetches bundles before importing it
    import numpy as np

ALLOWED_EXTENSIONS = frozenset({".onnx", ".npy", ".npz", ".json", ".faiss", ".txt"})
MANIFEST = "manifest.json"
LATEST = "LATEST"
FORMAT_VERSION = 1
FETCH_THREADS = 8  # parallel GETs while loading a bundle
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(kind: str, value: str) -> str:
    if (
        not isinstance(value, str)
        or not _NAME_RE.match(value)
        or value in (LATEST, MANIFEST)
        or ".." in value
    ):
        raise InvalidInputError(f"bad {kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


def _file_problem(path: Any) -> str | None:
    """Why `path` is not an acceptable bundle file path, or None if it is."""
    if not isinstance(path, str) or not path:
        return f"file path {path!r} is not a non-empty string"
    if path.startswith("/") or "\\" in path or "\x00" in path:
        return f"file path {path!r} is absolute or has a backslash/NUL"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"file path {path!r} escapes the bundle (empty, '.' or '..' segment)"
    if path == MANIFEST:
        return f"file path {path!r} is reserved for the manifest"
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in ALLOWED_EXTENSIONS:
        allowed = ", ".join(sorted(ALLOWED_EXTENSIONS))
        return f"file {path!r} has a refused extension {suffix or '(none)'!r} (allowed: {allowed})"
    return None


def npy_view(data: bytes) -> np.ndarray:
    """A `.npy` file's array as a read-only view of `data` (no copy: a model's largest matrix is
    not duplicated at load). ValueError for object arrays (they would need pickle) or bad bytes."""
    import numpy as np
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    version = npy.read_magic(stream)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they need pickle)")
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _prefix(name: str, version: str) -> str:
    return f"models/{name}/{version}/"


def _json_default(obj: Any) -> Any:
    np_ = sys.modules.get("numpy")  # no numpy objects exist unless numpy is loaded
    if np_ is not None and isinstance(obj, np_.generic):
        return obj.item()
    if np_ is not None and isinstance(obj, np_.ndarray):
        return obj.tolist()
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _to_json(value: Any, what: str) -> Any:
    """Round-trip `value` through JSON so the manifest holds plain data (numpy scalars allowed)."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be JSON serialisable: {exc}") from exc


def publish_bundle(
    store: ObjectStore,
    name: str,
    files: Mapping[str, bytes],
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    data_window: Mapping[str, Any] | None = None,
    version: str | None = None,
    set_latest: bool = True,
) -> str:
    """Publish `files` as a new version of model `name`; returns the version.

    The default version is `<UTC timestamp>-<8 hex of the content hash>`, which sorts by time.
    Publishing onto an existing version is refused (bundles are immutable).
    """
    _check_name("model name", name)
    if not files:
        raise InvalidInputError("a bundle needs at least one file")
    entries: dict[str, dict[str, Any]] = {}
    content = hashlib.sha256()
    for path in sorted(files):
        problem = _file_problem(path)
        if problem:
            raise InvalidInputError(problem)
        data = files[path]
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"file {path!r} must be bytes, got {type(data).__name__}")
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        entries[path] = {"sha256": digest, "size": len(data)}
        content.update(f"{path}\0{digest}\0".encode())
    now = datetime.now(UTC)
    if version is None:
        version = f"{now:%Y%m%dT%H%M%S.%f}Z-{content.hexdigest()[:8]}"
    _check_name("version", version)
    prefix = _prefix(name, version)
    if store.exists(prefix + MANIFEST):
        raise InvalidInputError(f"model {name!r} version {version!r} is already published")
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created_at": now.isoformat().replace("+00:00", "Z"),
        "files": entries,
        "params": _to_json(dict(params or {}), "params"),
        "metrics": _to_json(dict(metrics or {}), "metrics"),
        "data_window": _to_json(dict(data_window) if data_window is not None else None, "data_window"),
    }
    for path in sorted(files):
        store.put(prefix + path, bytes(files[path]))
    store.put(prefix + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    if set_latest:
        store.put(f"models/{name}/{LATEST}", version.encode())
    return version


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle: `files` maps each manifest path to its bytes."""

    name: str
    version: str
    manifest: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.manifest.get("params") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    def bytes(self, name: str) -> builtins.bytes:
        """Raw bytes of file `name`; NotFoundError if the bundle has no such file."""
        try:
            return self.files[name]
        except KeyError:
            raise NotFoundError(
                f"bundle {self.name}/{self.version} has no file {name!r} (has {sorted(self.files)})"
            ) from None

    def npy(self, name: str) -> np.ndarray:
        """Load a `.npy` file (pickled object arrays are refused)."""
        import numpy as np

        try:
            return np.load(io.BytesIO(self.bytes(name)), allow_pickle=False)
        except ValueError as exc:
            raise IntegrityError(
                f"{name!r} in {self.name}/{self.version} is not a plain .npy: {exc}"
            ) from exc

    def npz(self, name: str) -> dict[str, np.ndarray]:
        """Load every array of a `.npz` file into a dict (pickled object arrays are refused)."""
        import numpy as np

        try:
            with np.load(io.BytesIO(self.bytes(name)), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except ValueError as exc:
            raise IntegrityError(
                f"{name!r} in {self.name}/{self.version} is not a plain .npz: {exc}"
            ) from exc

    def json(self, name: str) -> Any:
        """Parse a `.json` file."""
        try:
            return json.loads(self.bytes(name))
        except ValueError as exc:
            raise IntegrityError(f"{name!r} in {self.name}/{self.version} is not valid JSON: {exc}") from exc


def latest_version(store: ObjectStore, name: str) -> str:
    """The version LATEST points at; NotFoundError when the model has never been published."""
    _check_name("model name", name)
    try:
        raw = store.get(f"models/{name}/{LATEST}")
    except NotFoundError:
        raise NotFoundError(f"model {name!r} has no LATEST pointer (never published?)") from None
    version = raw.decode("utf-8", errors="replace").strip()
    try:
        return _check_name("version", version)
    except InvalidInputError as exc:
        raise IntegrityError(f"model {name!r} LATEST holds a bad version: {exc}") from exc


def list_versions(store: ObjectStore, name: str) -> list[str]:
    """Published versions of `name` (those with a manifest), oldest first for default versions."""
    _check_name("model name", name)
    root = f"models/{name}/"
    versions = []
    for key in store.list(root):
        rest = key[len(root) :]
        version, _, tail = rest.partition("/")
        if tail == MANIFEST:
            versions.append(version)
    return sorted(versions)


def _parse_manifest(raw: bytes, name: str, version: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"manifest of {name}/{version} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise IntegrityError(f"manifest of {name}/{version} has no 'files' table")
    if manifest.get("name") != name or manifest.get("version") != version:
        raise IntegrityError(
            f"manifest of {name}/{version} describes {manifest.get('name')!r}/{manifest.get('version')!r}"
        )
    for path, entry in manifest["files"].items():
        problem = _file_problem(path)
        if problem:
            raise IntegrityError(f"bundle {name}/{version} refused: {problem}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            raise IntegrityError(f"manifest of {name}/{version}: entry for {path!r} lacks sha256/size")
    return manifest


def _verify(data: bytes, entry: Mapping[str, Any]) -> str | None:
    if len(data) != entry["size"]:
        return f"size {len(data)} != {entry['size']}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        return f"sha256 {digest[:12]}... != {str(entry['sha256'])[:12]}..."
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_bundle(
    store: ObjectStore,
    name: str,
    version: str = "latest",
    cache_dir: Path | None = None,
    select: Callable[[str], bool] | None = None,
) -> LoadedBundle:
    """Fetch and verify a bundle (every file's size and sha256 against the manifest).

    NotFoundError: no such model or version. IntegrityError: bad manifest, refused file type or
    path, missing file, checksum mismatch. `select(path)` limits the files fetched to those a caller
    uses (the manifest is always read and checked whole). With `cache_dir`, verified files are kept
    on disk under `<cache_dir>/<name>/<version>/` and reused when they still match the manifest.
    Files are fetched and hashed in parallel threads (I/O and hashlib run without the GIL): a cold
    start waits for the largest file, not for the sum of them.
    """
    _check_name("model name", name)
    if version == "latest":
        version = latest_version(store, name)
    _check_name("version", version)
    prefix = _prefix(name, version)
    try:
        raw = store.get(prefix + MANIFEST)
    except NotFoundError:
        raise NotFoundError(f"model {name!r} has no version {version!r}") from None
    manifest = _parse_manifest(raw, name, version)
    cache_root = Path(cache_dir) / name / version if cache_dir is not None else None

    def fetch(path: str) -> bytes:
        entry = manifest["files"][path]
        if cache_root is not None:
            cached = cache_root / path
            if cached.is_file():
                data = cached.read_bytes()
                if _verify(data, entry) is None:
                    return data
        try:
            data = store.get(prefix + path)
        except NotFoundError:
            raise IntegrityError(
                f"bundle {name}/{version} is incomplete: file {path!r} is listed in the manifest "
                "but missing from the store"
            ) from None
        problem = _verify(data, entry)
        if problem:
            raise IntegrityError(f"bundle {name}/{version}: file {path!r} failed verification ({problem})")
        if cache_root is not None:
            _write_atomic(cache_root / path, data)
        return data

    # Largest first, so the longest download starts at once.
    paths = sorted(
        (p for p in manifest["files"] if select is None or select(p)),
        key=lambda p: (-manifest["files"][p]["size"], p),
    )
    with ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="bundle-fetch") as pool:
        files = dict(zip(paths, pool.map(fetch, paths), strict=True))
    return LoadedBundle(name=name, version=version, manifest=manifest, files=dict(sorted(files.items())))
