"""ArtifactStore behaviour, the same suite against a local directory and a real S3 server."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from egt.storage.store import ArtifactStore, FileStore, S3Store, open_store
from tests.fixtures.s3 import S3Server


def test_bytes_text_json_round_trip(artifact_store: ArtifactStore) -> None:
    artifact_store.write_bytes("a/b.bin", b"\x00\x01")
    artifact_store.write_text("a/t.txt", "héllo")
    artifact_store.write_json("a/c.json", {"x": [1, 2.5, None], "y": "z"})
    assert artifact_store.read_bytes("a/b.bin") == b"\x00\x01"
    assert artifact_store.read_text("a/t.txt") == "héllo"
    assert artifact_store.read_json("a/c.json") == {"x": [1, 2.5, None], "y": "z"}
    artifact_store.write_bytes("a/b.bin", b"new")
    assert artifact_store.read_bytes("a/b.bin") == b"new"


def test_exists_and_list(artifact_store: ArtifactStore) -> None:
    for key in ["ab/x", "a/z", "a/b/c/d", "a/y"]:
        artifact_store.write_bytes(key, b"1")
    assert artifact_store.exists("a/z")
    assert not artifact_store.exists("a/nope")
    assert not artifact_store.exists("a")  # a prefix is not an object
    assert artifact_store.list("a") == ["a/b/c/d", "a/y", "a/z"]  # not "ab/x": prefixes are directories
    assert artifact_store.list("a/") == artifact_store.list("a")
    assert artifact_store.list() == ["a/b/c/d", "a/y", "a/z", "ab/x"]
    assert artifact_store.list("missing") == []


def test_delete_prefix(artifact_store: ArtifactStore) -> None:
    for key in ["run/sft/x", "run/sft/sub/y", "run/sftx/z"]:
        artifact_store.write_bytes(key, b"1")
    artifact_store.delete_prefix("run/sft")
    assert artifact_store.list() == ["run/sftx/z"]
    artifact_store.delete_prefix("nothing/here")  # not an error


def test_delete_one_key(artifact_store: ArtifactStore) -> None:
    artifact_store.write_bytes("run/a", b"1")
    artifact_store.write_bytes("run/ab", b"2")
    artifact_store.delete("run/a")
    assert artifact_store.list("run") == ["run/ab"]
    artifact_store.delete("run/a")  # already gone: not an error


def test_upload_and_download_dir(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    big = os.urandom(9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
    (src / "sub" / "weights.bin").write_bytes(big)
    artifact_store.upload_dir(src, "model")
    assert artifact_store.list("model") == ["model/config.json", "model/sub/weights.bin"]
    out = artifact_store.download_dir("model", tmp_path / "out")
    assert out == tmp_path / "out"
    assert (out / "config.json").read_text() == "{}"
    assert (out / "sub" / "weights.bin").read_bytes() == big
    with pytest.raises(FileNotFoundError, match=re.escape(artifact_store.uri_for("empty"))):
        artifact_store.download_dir("empty", tmp_path / "out2")


def test_local_path_sees_remote_changes(artifact_store: ArtifactStore) -> None:
    artifact_store.write_text("ckpt/a.txt", "v1")
    artifact_store.write_text("ckpt/old/b.txt", "gone soon")
    first = artifact_store.local_path("ckpt")
    assert (first / "a.txt").read_text() == "v1"
    assert (first / "old" / "b.txt").is_file()

    artifact_store.write_text("ckpt/a.txt", "v2")
    artifact_store.write_text("ckpt/new.txt", "n")
    artifact_store.delete_prefix("ckpt/old")
    second = artifact_store.local_path("ckpt")
    assert second == first
    assert (second / "a.txt").read_text() == "v2"
    assert (second / "new.txt").read_text() == "n"
    assert not (second / "old" / "b.txt").exists()
    with pytest.raises(FileNotFoundError, match=re.escape(artifact_store.uri_for("nope"))):
        artifact_store.local_path("nope")


def test_missing_key_error_names_uri(artifact_store: ArtifactStore) -> None:
    uri = artifact_store.uri_for("run/sft/manifest.json")
    assert uri.startswith(("file:///", "s3://")) and uri.endswith("/run/sft/manifest.json")
    with pytest.raises(FileNotFoundError, match=re.escape(uri)):
        artifact_store.read_bytes("run/sft/manifest.json")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../b", "a//b", "./a"])
def test_bad_keys_rejected(artifact_store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        artifact_store.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid key"):
        artifact_store.read_bytes(key)
    if key:  # "" is the root prefix, valid for list
        with pytest.raises(ValueError, match="invalid key"):
            artifact_store.list(key)


def test_file_store_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    store.write_bytes("x.json", b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("x.json", b"new")
    assert store.read_bytes("x.json") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temp file left behind


def test_file_store_local_path_is_the_real_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.write_text("m/a.txt", "1")
    assert store.local_path("m") == tmp_path.resolve() / "m"
    store.upload_dir(store.local_path("m"), "m")  # onto itself: a no-op, not a truncation
    assert store.read_text("m/a.txt") == "1"


def test_open_store_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path.as_uri())
    assert isinstance(store, FileStore) and store.root == tmp_path.resolve()
    assert store.uri == tmp_path.resolve().as_uri()
    monkeypatch.chdir(tmp_path)
    relative = open_store("runs")
    assert isinstance(relative, FileStore) and relative.root == tmp_path.resolve() / "runs"
    with pytest.raises(ValueError, match="names host"):
        open_store("file://server/share")


def test_open_store_s3_uri(s3_server: S3Server) -> None:
    store = open_store("s3://egt-test/some/prefix/", endpoint_url=s3_server.endpoint_url)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == ("egt-test", "some/prefix", "s3://egt-test/some/prefix")
    # The fixture exports AWS_ENDPOINT_URL_S3, which boto3 honours: no endpoint argument needed.
    unaided = open_store(f"{s3_server.uri}/open-store")
    unaided.write_text("k", "v")
    assert unaided.read_text("k") == "v"
    unaided.delete_prefix("")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "hdfs://nn/path"])
def test_open_store_rejects_unknown_schemes(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(uri)
    assert uri in str(info.value) and "file://" in str(info.value) and "s3://" in str(info.value)


def test_open_store_refuses_credentials_in_uri() -> None:
    with pytest.raises(ValueError) as info:
        open_store("s3://AKIAEXAMPLE:topsecret@bucket/x")
    assert "topsecret" not in str(info.value)
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///x")


@pytest.mark.parametrize(
    ("variable", "code"),
    [("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"), ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId")],
)
def test_wrong_credentials_fail_fast_and_clearly(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, variable: str, code: str
) -> None:
    monkeypatch.setenv(variable, "wrong")
    store = S3Store(s3_server.bucket, "creds", endpoint_url=s3_server.endpoint_url)
    start = time.monotonic()
    with pytest.raises(PermissionError) as info:
        store.write_bytes("x", b"1")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert code in message and "s3://egt-test/creds/x" in message and "AWS_ACCESS_KEY_ID" in message
    assert "wrong" not in message  # the (bad) secret is never echoed


def test_missing_bucket_is_not_found(s3_server: S3Server) -> None:
    store = S3Store("no-such-bucket", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/k"):
        store.read_bytes("k")


def test_create_writes_only_where_nothing_is(artifact_store: ArtifactStore) -> None:
    """The primitive a stage's lease rests on: of two creators of one key, one wins."""
    assert artifact_store.create("run/sft/lease.json", b"first")
    assert not artifact_store.create("run/sft/lease.json", b"second")
    assert artifact_store.read_bytes("run/sft/lease.json") == b"first"
    artifact_store.delete("run/sft/lease.json")
    assert artifact_store.create("run/sft/lease.json", b"third")
