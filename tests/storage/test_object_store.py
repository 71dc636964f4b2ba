import hashlib
import os
from pathlib import Path

import pytest

from storage.object_store import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    StoredObject,
    artifact_key,
    subject_prefix,
    upload_prefix,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_satisfies_protocol(store: LocalObjectStore) -> None:
    obj: ObjectStore = store
    assert obj.exists("a/b.txt") is False


def test_put_get_stat_roundtrip(store: LocalObjectStore) -> None:
    data = b"\x89PNG fake image bytes"
    digest = hashlib.sha256(data).hexdigest()

    put = store.put_bytes("subjects/s1/u1/photo/x.png", data, content_type="image/png")

    path = store.root / "subjects/s1/u1/photo/x.png"
    assert put == StoredObject(
        key="subjects/s1/u1/photo/x.png",
        uri=path.as_uri(),
        sha256=digest,
        bytes=len(data),
        path=str(path),
    )
    assert put.uri.startswith("file:///")
    assert Path(put.path).is_absolute() and Path(put.path).read_bytes() == data
    assert store.get_bytes(put.key) == data
    assert store.exists(put.key)
    assert store.stat(put.key) == put
    assert store.local_path(put.key) == put.path
    assert store.key_for_uri(put.uri) == put.key
    assert store.uri_for(put.key) == put.uri


def test_overwrite_replaces_content(store: LocalObjectStore) -> None:
    store.put_bytes("a/b.bin", b"one")
    second = store.put_bytes("a/b.bin", b"second")
    assert store.get_bytes("a/b.bin") == b"second"
    assert store.stat("a/b.bin").sha256 == second.sha256 == hashlib.sha256(b"second").hexdigest()


def test_empty_object(store: LocalObjectStore) -> None:
    put = store.put_bytes("empty.bin", b"")
    assert put.bytes == 0
    assert store.get_bytes("empty.bin") == b""


def test_missing_objects(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/x.bin")
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        store.stat("nope/x.bin")
    assert store.exists("nope/x.bin") is False
    assert store.delete("nope/x.bin") is False
    store.put_bytes("dir/x.bin", b"x")
    with pytest.raises(ObjectNotFound):  # a "directory" is not an object
        store.get_bytes("dir")
    assert store.exists("dir") is False


def test_failed_write_leaves_nothing_behind(store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_bytes("subjects/s1/keep.bin", b"keep")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put_bytes("subjects/s1/new.bin", b"half written?")
    monkeypatch.undo()

    assert not store.exists("subjects/s1/new.bin")
    assert list(store.list_keys()) == ["subjects/s1/keep.bin"]
    assert _all_files(store.root) == ["subjects/s1/keep.bin"]  # temp file was removed too


def test_failed_overwrite_keeps_old_content(store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_bytes("a/obj.bin", b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("crash")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put_bytes("a/obj.bin", b"new")
    monkeypatch.undo()
    assert store.get_bytes("a/obj.bin") == b"old"


def test_temp_files_are_not_listed(store: LocalObjectStore) -> None:
    store.put_bytes("a/real.bin", b"x")
    # What a crash between mkstemp and os.replace would leave behind.
    (store.root / "a" / ".real2.bin.abc123.tmp").write_bytes(b"partial")
    assert list(store.list_keys()) == ["a/real.bin"]
    assert list(store.list_keys("a/")) == ["a/real.bin"]


def test_list_keys_sorted_and_prefix_filtered(store: LocalObjectStore) -> None:
    keys = ["b/2.bin", "a/z.bin", "a/b/c.bin", "a1/x.bin", "top.bin"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert list(store.list_keys()) == sorted(keys)
    assert list(store.list_keys("a/")) == ["a/b/c.bin", "a/z.bin"]
    assert list(store.list_keys("a")) == [
        "a/b/c.bin",
        "a/z.bin",
        "a1/x.bin",
    ]  # plain string prefix, as on S3
    assert list(store.list_keys("a/b/c")) == ["a/b/c.bin"]
    assert list(store.list_keys("missing/")) == []


def test_delete(store: LocalObjectStore) -> None:
    store.put_bytes("x/y/z.bin", b"1")
    store.put_bytes("x/keep.bin", b"2")
    assert store.delete("x/y/z.bin") is True
    assert store.delete("x/y/z.bin") is False
    assert not (store.root / "x" / "y").exists()  # emptied directory pruned
    assert list(store.list_keys()) == ["x/keep.bin"]


def test_delete_prefix_removes_objects_and_empty_dirs(store: LocalObjectStore) -> None:
    store.put_bytes(artifact_key("s1", "u1", "photo", "a" * 64, "png"), b"p")
    store.put_bytes(artifact_key("s1", "u1", "mesh", "b" * 64, "glb"), b"m")
    store.put_bytes(artifact_key("s1", "u2", "photo", "c" * 64, "png"), b"q")
    store.put_bytes(artifact_key("s10", "u9", "photo", "d" * 64, "png"), b"other subject")

    assert store.delete_prefix(upload_prefix("s1", "u1")) == 2
    assert not (store.root / "subjects" / "s1" / "u1").exists()
    assert store.delete_prefix(subject_prefix("s1")) == 1
    assert not (store.root / "subjects" / "s1").exists()
    assert list(store.list_keys()) == [artifact_key("s10", "u9", "photo", "d" * 64, "png")]
    assert store.delete_prefix(subject_prefix("s1")) == 0
    assert store.root.is_dir()


def test_delete_prefix_refuses_empty_prefix(store: LocalObjectStore) -> None:
    store.put_bytes("a.bin", b"x")
    with pytest.raises(ValueError):
        store.delete_prefix("")
    assert store.exists("a.bin")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/path.bin",
        "a/../b.bin",
        "..",
        "a\\b.bin",
        "a//b.bin",
        "a/b/",
        "./a.bin",
        "a/.hidden",
        "a\x00b",
    ],
)
def test_invalid_keys_rejected(store: LocalObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.get_bytes(key)
    with pytest.raises(ValueError):
        store.exists(key)
    assert _all_files(store.root) == []


@pytest.mark.parametrize("prefix", ["/abs", "../", "a/../", "a\\b", "a//b"])
def test_invalid_prefixes_rejected(store: LocalObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        list(store.list_keys(prefix))
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)


def test_key_for_uri_rejects_foreign_uris(store: LocalObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        store.key_for_uri("s3://bucket/key")
    with pytest.raises(ValueError):
        store.key_for_uri((tmp_path / "elsewhere" / "x.bin").as_uri())


def test_uri_roundtrip_with_special_characters(store: LocalObjectStore) -> None:
    put = store.put_bytes("a b/c%d#e.bin", b"x")
    assert store.key_for_uri(put.uri) == "a b/c%d#e.bin"


def test_artifact_key_format() -> None:
    sha = hashlib.sha256(b"content").hexdigest()
    assert (
        artifact_key("s_ab12", "u_cd34", "photo", sha, "png")
        == f"subjects/s_ab12/u_cd34/photo/{sha[:16]}.png"
    )
    assert artifact_key("s", "u", "mesh", sha, ".glb") == f"subjects/s/u/mesh/{sha[:16]}.glb"
    assert subject_prefix("s_ab12") == "subjects/s_ab12/"
    assert upload_prefix("s_ab12", "u_cd34") == "subjects/s_ab12/u_cd34/"
    assert artifact_key("s", "u", "a", sha, "png").startswith(upload_prefix("s", "u"))


@pytest.mark.parametrize(
    "args",
    [
        ("s/1", "u", "a", "a" * 64, "png"),
        ("s", "..", "a", "a" * 64, "png"),
        ("s", "u", "", "a" * 64, "png"),
        ("s", "u", "a", "not-hex" * 10, "png"),
        ("s", "u", "a", "abc", "png"),
        ("s", "u", "a", "a" * 64, ""),
    ],
)
def test_artifact_key_validation(args: tuple[str, str, str, str, str]) -> None:
    with pytest.raises(ValueError):
        artifact_key(*args)


def test_reopen_sees_objects(tmp_path: Path) -> None:
    LocalObjectStore(tmp_path / "o").put_bytes("k/v.bin", b"persist")
    assert LocalObjectStore(tmp_path / "o").get_bytes("k/v.bin") == b"persist"
