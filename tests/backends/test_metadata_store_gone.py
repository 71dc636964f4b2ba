"""The embedded metadata store's directory going away (moved, unmounted, deleted) under an open
store and under a new one: a typed STORE_UNAVAILABLE after the retries, a successful retry when
it comes back within them, and never an empty store read as "no such upload" or a fresh empty
repository created in its place. The real montydb repository, really moved (no wrapper).
The same fault during a real `avatarpipe run` is in test_faults_compute.py."""

from __future__ import annotations

import threading

import pytest

from storage.metadata_store import open_metadata_store
from storage.retry import StoreUnavailable

RAW_KEY = "subjects/s1/u1/raw/0123456789abcdef.png"


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_TRIES", "3")
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_BASE_S", "0.001")
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_MAX_S", "0.01")


def test_gone_repository_is_unavailable_not_empty(tmp_path, fast_retries):
    repository, away = tmp_path / "metadata", tmp_path / "metadata.away"
    store = open_metadata_store(None, repository)
    store.create_upload("u1", "s1", RAW_KEY, "1")
    repository.rename(away)
    with pytest.raises(StoreUnavailable, match="RepositoryUnavailable"):
        store.get_upload("u1")  # montydb alone answers None here: "no such upload"
    with pytest.raises(StoreUnavailable):
        store.set_upload_status("u1", "running")
    with pytest.raises(StoreUnavailable):
        open_metadata_store(None, repository)  # a new process must not start an empty store
    assert not repository.exists()
    away.rename(repository)
    assert store.get_upload("u1")["status"] == "pending"  # the open store carries on
    store.set_upload_status("u1", "running")
    store.close()
    with open_metadata_store(None, repository) as again:
        assert again.get_upload("u1")["status"] == "running"


def test_repository_back_within_the_retry_window_is_a_successful_retry(tmp_path, monkeypatch):
    # 50 tries, waits drawn from [0, min(0.1, 0.05 * 2**n)]: seconds in all, far longer than 0.3 s
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_TRIES", "50")
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("AVATARPIPE_STORE_RETRY_MAX_S", "0.1")
    repository, away = tmp_path / "metadata", tmp_path / "metadata.away"
    store = open_metadata_store(None, repository)
    store.create_upload("u1", "s1", RAW_KEY, "1")
    repository.rename(away)
    comeback = threading.Timer(0.3, away.rename, args=(repository,))
    comeback.start()
    try:
        store.set_upload_status("u1", "running")  # waits for the repository, then writes once
    finally:
        comeback.join()
    assert store.get_upload("u1")["status"] == "running"
    store.close()


def test_first_use_still_creates_the_repository(tmp_path, fast_retries):
    with open_metadata_store(None, tmp_path / "fresh" / "metadata") as store:
        store.create_upload("u1", "s1", RAW_KEY, "1")
        assert store.get_upload("u1") is not None
