"""ObjectStore contract: runs unchanged against LocalObjectStore and S3ObjectStore."""

from __future__ import annotations

import pytest
from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.storage.objects import ObjectStore

BAD_KEYS = ["", "..", "../x", "a/../b", "/abs", "/etc/passwd", "a//b", "./a", "a/.", "a/", "a\\b", "a\x00b"]


def test_put_get_round_trip(objects: ObjectStore) -> None:
    objects.put("models/als/1/manifest.json", b'{"v": 1}')
    assert objects.get("models/als/1/manifest.json") == b'{"v": 1}'


def test_binary_and_empty_data(objects: ObjectStore) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    objects.put("bin/blob", blob)
    objects.put("bin/empty", b"")
    assert objects.get("bin/blob") == blob
    assert objects.get("bin/empty") == b""


def test_overwrite_replaces(objects: ObjectStore) -> None:
    objects.put("k", b"first, longer value")
    objects.put("k", b"second")
    assert objects.get("k") == b"second"


def test_exists(objects: ObjectStore) -> None:
    assert not objects.exists("x/y")
    objects.put("x/y", b"1")
    assert objects.exists("x/y")
    assert not objects.exists("x")  # a "folder" is not an object


def test_list_with_prefix_is_sorted(objects: ObjectStore) -> None:
    keys = ["b", "a/2", "a/1", "ab", "a/b/3", "a/b/4", "c/z", "a/0"]
    for k in keys:
        objects.put(k, k.encode())
    assert list(objects.list()) == sorted(keys)
    assert list(objects.list("a/")) == ["a/0", "a/1", "a/2", "a/b/3", "a/b/4"]
    assert list(objects.list("a")) == ["a/0", "a/1", "a/2", "a/b/3", "a/b/4", "ab"]
    assert list(objects.list("a/b")) == ["a/b/3", "a/b/4"]
    assert list(objects.list("zz")) == []
    assert list(objects.list("nope/")) == []


def test_list_many_keys_crosses_pages(objects: ObjectStore) -> None:
    keys = [f"many/{i:03d}" for i in range(25)]
    for k in keys:
        objects.put(k, b"x")
    assert list(objects.list("many/")) == keys


def test_delete(objects: ObjectStore) -> None:
    objects.put("d/1", b"1")
    objects.put("d/2", b"2")
    objects.delete("d/1")
    assert not objects.exists("d/1")
    assert list(objects.list("d/")) == ["d/2"]
    objects.delete("d/1")  # missing: not an error
    objects.delete("never/existed")


def test_missing_key_is_typed_not_found(objects: ObjectStore) -> None:
    with pytest.raises(NotFoundError) as info:
        objects.get("no/such/object")
    assert "no/such/object" in str(info.value)
    assert isinstance(info.value, KeyError)  # callers may catch it as a KeyError too


@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused(objects: ObjectStore, bad: str) -> None:
    with pytest.raises(InvalidInputError):
        objects.put(bad, b"x")
    with pytest.raises(InvalidInputError):
        objects.get(bad)
    with pytest.raises(InvalidInputError):
        objects.exists(bad)
    with pytest.raises(InvalidInputError):
        objects.delete(bad)


def test_unsafe_list_prefix_finds_nothing(objects: ObjectStore) -> None:
    objects.put("safe/1", b"1")
    assert list(objects.list("../")) == []
    assert list(objects.list("/")) == []
