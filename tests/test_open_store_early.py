"""open_store_early: a new local store's tables are made in a background thread, before the store is used."""
from __future__ import annotations

import threading

from mlflow.tracking import MlflowClient

from nasplat.tracking.runs import open_store_early


def test_a_new_sqlite_store_is_ready_once_the_thread_ends(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    thread = open_store_early(uri)
    assert thread is not None
    thread.join(120)
    assert not thread.is_alive() and (tmp_path / "mlflow.db").stat().st_size > 0
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]


def test_a_server_is_never_asked_and_a_store_that_cannot_open_raises_nothing_in_the_thread(tmp_path, monkeypatch):
    assert open_store_early("http://127.0.0.1:9") is None
    raised = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    (tmp_path / "file").write_text("not a folder")
    thread = open_store_early(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    thread.join(120)
    assert not thread.is_alive() and raised == []
