"""Versioned model bundles: publish, verified load, refusal of bad bundles."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from zerorec.bundle import list_versions, load_bundle, publish_bundle
from zerorec.errors import IntegrityError, InvalidInputError, NotFoundError
from zerorec.storage.objects_local import LocalObjectStore


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


FILES = {
    "ranker.onnx": b"\x08\x07fake-onnx",
    "item_emb.npy": _npy(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "als/factors.npz": _npz(users=np.ones((2, 3), np.float32), items=np.zeros((4, 3), np.float32)),
    "vocab.json": json.dumps({"items": ["a", "b"]}).encode(),
    "index.faiss": b"faiss-bytes",
    "notes.txt": b"hello",
}


def test_round_trip(store: LocalObjectStore) -> None:
    version = publish_bundle(
        store,
        "ranker",
        FILES,
        params={"embed_dim": np.int64(16)},
        metrics={"auc": np.float32(0.75)},
        data_window={"start": "2024-01-01", "end": "2024-02-01"},
    )
    assert store.get("models/ranker/LATEST").decode() == version
    b = load_bundle(store, "ranker")
    assert b.version == version and b.name == "ranker"
    assert b.files == FILES
    assert b.manifest["files"]["notes.txt"]["size"] == 5
    assert b.manifest["data_window"]["end"] == "2024-02-01"
    assert b.params == {"embed_dim": 16} and b.metrics["auc"] == pytest.approx(0.75)
    np.testing.assert_array_equal(b.npy("item_emb.npy"), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert b.npz("als/factors.npz")["items"].shape == (4, 3)
    assert b.json("vocab.json") == {"items": ["a", "b"]}
    assert b.bytes("index.faiss") == b"faiss-bytes"
    with pytest.raises(NotFoundError):
        b.bytes("nope.npy")
    assert load_bundle(store, "ranker", version).files == FILES


def test_versions_latest_and_immutability(store: LocalObjectStore) -> None:
    v1 = publish_bundle(store, "als", {"a.npy": _npy(np.zeros(2))})
    v2 = publish_bundle(store, "als", {"a.npy": _npy(np.ones(2))})
    assert v1 < v2 and list_versions(store, "als") == [v1, v2]
    assert load_bundle(store, "als").version == v2
    assert load_bundle(store, "als", v1).npy("a.npy").sum() == 0
    v3 = publish_bundle(store, "als", {"a.npy": _npy(np.ones(3))}, version="manual-1", set_latest=False)
    assert load_bundle(store, "als").version == v2 and v3 == "manual-1"
    with pytest.raises(InvalidInputError, match="already published"):
        publish_bundle(store, "als", {"a.npy": b"x"}, version="manual-1")
    assert list_versions(store, "nothing") == []


def test_tampered_file_is_refused(store: LocalObjectStore) -> None:
    version = publish_bundle(store, "ranker", FILES)
    store.put(f"models/ranker/{version}/ranker.onnx", b"\x08\x07evil-onnx")  # same size, other bytes
    with pytest.raises(IntegrityError, match=r"ranker\.onnx.*sha256"):
        load_bundle(store, "ranker")
    store.put(f"models/ranker/{version}/ranker.onnx", b"short")
    with pytest.raises(IntegrityError, match="size"):
        load_bundle(store, "ranker")


def test_missing_file_is_an_integrity_error(store: LocalObjectStore) -> None:
    version = publish_bundle(store, "ranker", FILES)
    store.delete(f"models/ranker/{version}/vocab.json")
    with pytest.raises(IntegrityError, match=r"incomplete.*vocab\.json"):
        load_bundle(store, "ranker")


def test_missing_latest_or_version_is_not_found(store: LocalObjectStore) -> None:
    with pytest.raises(NotFoundError, match="LATEST"):
        load_bundle(store, "ranker")
    publish_bundle(store, "ranker", FILES, set_latest=False)
    with pytest.raises(NotFoundError, match="LATEST"):
        load_bundle(store, "ranker")
    with pytest.raises(NotFoundError, match="no version"):
        load_bundle(store, "ranker", "20990101T000000.000000Z-deadbeef")


@pytest.mark.parametrize(
    "path", ["model.pkl", "model.pickle", "weights.pt", "noext", "a/../b.npy", "/abs.npy"]
)
def test_unsafe_files_refused_at_publish(store: LocalObjectStore, path: str) -> None:
    with pytest.raises(InvalidInputError):
        publish_bundle(store, "ranker", {path: b"x", "ok.json": b"{}"})
    assert list(store.list("models/")) == []  # nothing written


def _forge(store: LocalObjectStore, version: str, files: dict[str, bytes], manifest_files: dict) -> None:
    """Write a bundle by hand, as a hostile or buggy publisher might."""
    for path, data in files.items():
        store.put(f"models/evil/{version}/{path}", data)
    manifest = {"name": "evil", "version": version, "files": manifest_files}
    store.put(f"models/evil/{version}/manifest.json", json.dumps(manifest).encode())
    store.put("models/evil/LATEST", version.encode())


def test_pickle_refused_at_load(store: LocalObjectStore) -> None:
    import hashlib

    data = b"\x80\x04fake-pickle."
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    _forge(store, "v1", {"model.pkl": data}, {"model.pkl": entry})
    with pytest.raises(IntegrityError, match="refused extension"):
        load_bundle(store, "evil")


@pytest.mark.parametrize("path", ["../ranker/v1/x.npy", "a/../../x.npy", "/etc/passwd.txt", "a//b.npy"])
def test_path_traversal_refused_at_load(store: LocalObjectStore, path: str) -> None:
    _forge(store, "v1", {}, {path: {"sha256": "0" * 64, "size": 1}})
    with pytest.raises(IntegrityError, match=r"escapes|absolute"):
        load_bundle(store, "evil")


def test_bad_manifest(store: LocalObjectStore) -> None:
    store.put("models/evil/v1/manifest.json", b"{not json")
    store.put("models/evil/LATEST", b"v1")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        load_bundle(store, "evil")
    _forge(store, "v2", {}, {})
    with pytest.raises(IntegrityError, match="no 'files'"):
        load_bundle(store, "evil")


def test_pickled_npy_refused(store: LocalObjectStore) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    publish_bundle(store, "objs", {"obj.npy": buf.getvalue()})
    with pytest.raises(IntegrityError, match=r"plain \.npy"):
        load_bundle(store, "objs").npy("obj.npy")


def test_cache_dir_reuses_and_repairs(store: LocalObjectStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    version = publish_bundle(store, "ranker", FILES)
    assert load_bundle(store, "ranker", cache_dir=cache).files == FILES
    cached = cache / "ranker" / version / "ranker.onnx"
    assert cached.read_bytes() == FILES["ranker.onnx"]
    cached.write_bytes(b"corrupted cache")  # a bad cache entry is refetched, not trusted
    assert load_bundle(store, "ranker", cache_dir=cache).bytes("ranker.onnx") == FILES["ranker.onnx"]
    assert cached.read_bytes() == FILES["ranker.onnx"]


def test_bad_names_and_params(store: LocalObjectStore) -> None:
    for name in ("", "../x", "a/b", "LATEST"):
        with pytest.raises(InvalidInputError):
            publish_bundle(store, name, FILES)
    with pytest.raises(InvalidInputError):
        publish_bundle(store, "ranker", {})
    with pytest.raises(InvalidInputError, match="JSON"):
        publish_bundle(store, "ranker", FILES, params={"f": object()})
    with pytest.raises(InvalidInputError):
        publish_bundle(store, "ranker", {"a.npy": "not bytes"})  # type: ignore[dict-item]


def test_npy_view_reads_without_copying_and_refuses_object_arrays() -> None:
    import io

    import numpy as np
    from zerorec.bundle import npy_view

    for arr in (np.arange(12, dtype=np.float16).reshape(3, 4), np.asfortranarray(np.eye(3)), np.zeros(0)):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        view = npy_view(buf.getvalue())
        np.testing.assert_array_equal(view, arr)
        assert view.dtype == arr.dtype and not view.flags.writeable  # a view of the bytes
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        npy_view(buf.getvalue())
