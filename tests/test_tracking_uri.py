"""Where runs are recorded: the tracking-URI rules every command shares."""
from __future__ import annotations

from nasplat.tracking import local_artifact_root, resolve_tracking_uri


def test_default_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert local_artifact_root(resolve_tracking_uri(None)) == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_environment_variable_is_used_when_no_uri_is_given(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("http://10.0.0.1:5000") == "http://10.0.0.1:5000"  # an explicit URI wins


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///runs/x.db", base_dir=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'runs/x.db'}"
    assert resolve_tracking_uri("store", base_dir=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'store/mlflow.db'}"
    assert (tmp_path / "store").is_dir()


def test_folder_is_not_made_when_create_is_false(tmp_path):
    uri = resolve_tracking_uri("absent", base_dir=tmp_path, create=False)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'absent/mlflow.db'}" and not (tmp_path / "absent").exists()
