"""Where runs are recorded: the tracking-URI rules every command shares."""
from __future__ import annotations

from nasplat.tracking.uri import local_artifact_root, resolve_tracking_uri


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


def test_parent_and_trial_runs_are_found_again_on_resume(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nasplat.tracking.runs import open_parent_run, open_trial_run
    from nasplat.tracking.schema import PARENT_TAG

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_1"}}')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = open_parent_run(uri, "exp", "run-a", "search", {"epochs": 3}, tags={"nasplat.space": "darts"})
    assert open_parent_run(uri, "exp", "run-a", "search", {"epochs": 3}) == parent  # resume: same run
    assert open_parent_run(uri, "exp", "run-a", "retrain", {"epochs": 3}) != parent  # another kind, another run
    trial = open_trial_run(uri, parent, "t_0", "run-a-t_0", "search-trial", {"seed": 1})
    assert open_trial_run(uri, parent, "t_0", "run-a-t_0", "search-trial", {"seed": 1}) == trial
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_run(parent).data.tags
    assert tags["nasplat.kind"] == "search" and tags["nasplat.space"] == "darts"
    assert tags["nasplat.ray_job_id"] == "raysubmit_1" and tags["nasplat.run_name"] == "run-a"
    trial_run = client.get_run(trial)
    assert trial_run.data.tags[PARENT_TAG] == parent and trial_run.data.params["seed"] == "1"


def test_credentials_in_uris_are_masked_in_params_and_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    from nasplat.tracking.runs import open_parent_run
    from nasplat.tracking.uri import mask_credentials

    assert mask_credentials("s3://AKIA:secret@bucket/x and http://u:p@h:5000") == "s3://***@bucket/x and http://***@h:5000"
    assert mask_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = open_parent_run(uri, "exp", "masked", "search", {"storage": "s3://key:secret@bucket/runs"},
                             argv=["nasplat", "search", "--storage", "s3://key:secret@bucket/runs"])
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.params["storage"] == "s3://***@bucket/runs"
    assert "secret" not in run.data.tags["nasplat.command"]
