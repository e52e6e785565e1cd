"""`nasplat submit` / `nasplat jobs` pieces that need no cluster, placement config, URI storage, the job tag."""
from __future__ import annotations

import json
import zipfile

import pytest

from nasplat.training.config import PLACEMENT_STRATEGIES, ConfigError
from nasplat.searching.config import SearchConfig
from nasplat.tracking.runs import RAY_JOB_CONFIG_ENV, ray_job_tags
from nasplat.tracking.schema import RAY_JOB_TAG
from pipelines import jobs, submit
from pipelines.upload import describe_left_out
from pipelines.cli import main

LOCAL = "http://127.0.0.1:8265"
REMOTE = "http://10.1.2.3:8265"


# ----- the job's command line -----------------------------------------------------------------

def test_local_cluster_gets_absolute_tracking_uri_and_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cmd = submit.job_command(["--", "search", "--epochs", "1", "--tracking-uri", "runs.db"], None, LOCAL)
    assert cmd[:4] == ["nasplat", "search", "--epochs", "1"]
    assert cmd[cmd.index("--tracking-uri") + 1] == f"sqlite:///{tmp_path / 'runs.db'}"
    assert cmd[cmd.index("--storage") + 1] == str(tmp_path / "nasplat_runs")
    assert cmd.count("--tracking-uri") == 1


def test_submit_flag_replaces_the_command_uri_in_both_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given in (["--tracking-uri", "x.db"], ["--tracking-uri=x.db"]):
        cmd = submit.job_command(["search", *given, "--storage", "s3://b/p"], "http://mlflow:5000", REMOTE)
        assert cmd == ["nasplat", "search", "--storage", "s3://b/p", "--tracking-uri", "http://mlflow:5000"]


def test_values_in_the_commands_config_file_count_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("tracking_uri: http://mlflow:5000\nstorage: s3://bucket/runs\n")
    cmd = submit.job_command(["search", "--config", "c.yaml"], None, REMOTE)
    assert cmd[cmd.index("--tracking-uri") + 1] == "http://mlflow:5000"
    assert "--storage" not in cmd  # an s3:// URI from the file is left to the file


def test_remote_cluster_warns_about_local_store_and_missing_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    submit.job_command(["search", "--tracking-uri", "sqlite:///m.db"], None, REMOTE)
    err = capsys.readouterr().err
    assert "is a file on this machine" in err and "no --storage given" in err
    cmd = submit.job_command(["search"], None, REMOTE)
    assert "--tracking-uri" not in cmd  # left to the nodes' MLFLOW_TRACKING_URI
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err


def test_commands_without_those_options_pass_through_and_bad_commands_fail():
    assert submit.job_command(["data", "prepare", "synthetic", "--out", "x"], None, LOCAL) == [
        "nasplat", "data", "prepare", "synthetic", "--out", "x"]
    with pytest.raises(ConfigError, match="after '--'"):
        submit.job_command(["--"], None, LOCAL)
    with pytest.raises(ConfigError, match="unknown nasplat command 'serch'"):
        submit.job_command(["serch"], None, LOCAL)


# ----- the runtime environment ----------------------------------------------------------------

def test_runtime_env_upload_leaves_out_environments_stores_and_runs(tmp_path):
    """Package a project folder with Ray's own packaging code and the excludes submit sends."""
    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "project"
    keep = ["pipelines/cli.py", "configs/quick.yaml", "README.md"]
    drop = [".venv/bin/python", ".venv-ci/x", "mlruns/0/meta.yaml", "mlartifacts/a.json", "nasplat_runs/s/state.pt",
            "mlflow.db", "sub/other.db", ".git/HEAD", "pkg/__pycache__/m.pyc", ".nasplat-local/pids"]
    for name in keep + drop:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    env, left_out = submit.runtime_env(str(project), ["nasplat==0.1.0"], {"A": "1"})
    assert left_out == []
    assert env["working_dir"] == str(project) and env["pip"] == ["nasplat==0.1.0"] and env["env_vars"] == {"A": "1"}
    create_package(env["working_dir"], tmp_path / "pkg.zip", include_gitignore=True, excludes=env["excludes"])
    names = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert set(keep) <= names
    assert not names & set(drop), names & set(drop)


def test_runtime_env_without_folder_and_missing_folder(tmp_path):
    assert submit.runtime_env(None, ["nasplat==0.1.0"], {}) == ({"pip": ["nasplat==0.1.0"]}, [])
    with pytest.raises(FileNotFoundError, match="--working-dir"):
        submit.runtime_env(str(tmp_path / "nope"), [], {})
    with pytest.raises(ConfigError, match="--include-secret: no folder is uploaded"):
        submit.runtime_env(None, ["nasplat==0.1.0"], {}, include_secrets=[".env"])


SECRETS = [".env", ".env.production", "deploy/server.pem", "deploy/server.key", "certs/ca.pem", "keys/id_rsa",
           "keys/id_ed25519.pub", ".aws/credentials", ".aws/config", "home/.ssh/known_hosts", ".netrc",
           ".git-credentials", ".pypirc", "signing.p12", "gcp/credentials.json", ".docker/config.json"]
PLAIN = ["pipelines/cli.py", "configs/quick.yaml", "README.md", ".envrc.md", "docs/keys.md", "env.py",
         "certs/README.md", "src/key.py", "deploy/values.yaml"]


def _project(root) -> None:
    for name in SECRETS + PLAIN + [".venv/lib/certifi/cacert.pem"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")


def _packaged(folder, excludes, zip_path) -> set[str]:
    """The files Ray's own packaging code puts in the job's zip for ``folder`` with ``excludes``."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(folder), zip_path, include_gitignore=True, excludes=excludes)
    return {n for n in zipfile.ZipFile(zip_path).namelist() if not n.endswith("/")}


def test_secret_files_are_left_out_of_the_upload_and_listed(tmp_path):
    project = tmp_path / "project"
    _project(project)
    env, left_out = submit.runtime_env(str(project), [], {})
    assert left_out == sorted(SECRETS)  # the venv's certificate bundle is never uploaded, so it is not listed
    names = _packaged(project, env["excludes"], tmp_path / "pkg.zip")
    assert names == set(PLAIN)  # exactly what is listed is left out, nothing else


def test_include_secret_uploads_the_named_files_only(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _project(project)
    (project / "odd [1]*.pem").write_text("x")  # gitignore's special characters in a name
    monkeypatch.chdir(project)
    env, left_out = submit.runtime_env(".", [], {}, include_secrets=["certs/ca.pem", str(project / ".aws"),
                                                                    "odd [1]*.pem"])
    included = {"certs/ca.pem", ".aws/credentials", ".aws/config", "odd [1]*.pem"}
    assert set(left_out) == set(SECRETS) - included
    assert _packaged(project, env["excludes"], tmp_path / "pkg.zip") == set(PLAIN) | included
    with pytest.raises(ConfigError, match=r"--include-secret README.md: no file there is left out as a secret"):
        submit.runtime_env(".", [], {}, include_secrets=["README.md"])
    with pytest.raises(ConfigError, match=r"--include-secret .*elsewhere.pem: not inside the uploaded folder"):
        submit.runtime_env(".", [], {}, include_secrets=[str(tmp_path / "elsewhere.pem")])


def test_the_user_is_told_what_was_left_out_and_how_to_include_it():
    assert describe_left_out([]) is None
    line = describe_left_out([f"k{i}.pem" for i in range(12)], shown=10)
    assert "k0.pem, k1.pem" in line and "k9.pem and 2 more" in line and "k10.pem" not in line
    assert "--include-secret PATH" in line


def test_submit_prints_the_secrets_it_left_out_and_never_sends_them(tmp_path, monkeypatch, capsys):
    """The whole command up to the cluster: the runtime_env handed to Ray's job client leaves the secrets out."""
    project = tmp_path / "project"
    _project(project)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sent = {}

    class Client:
        def submit_job(self, **kwargs):
            sent.update(kwargs)
            return "raysubmit_1"

    monkeypatch.setattr(submit, "connect", lambda address, token_file: Client())
    assert main(["submit", "--address", LOCAL, "--no-wait", "--include-secret", ".env", "--", "search"]) == 0
    err = capsys.readouterr().err
    assert "left out of the uploaded folder as possible secrets: .aws/config, .aws/credentials" in err
    assert "--include-secret PATH" in err and " .env," not in err
    packaged = _packaged(project, sent["runtime_env"]["excludes"], tmp_path / "pkg.zip")
    assert packaged == set(PLAIN) | {".env"}


# ----- address and token ----------------------------------------------------------------------

@pytest.mark.parametrize("given, url", [
    ("10.0.0.5", "http://10.0.0.5:8265"), ("http://head:9000/", "http://head:9000"),
    ("https://ray.example.org", "https://ray.example.org:8265"), ("127.0.0.1:8265", "http://127.0.0.1:8265"),
])
def test_dashboard_url(given, url):
    assert jobs.dashboard_url(given) == url


def test_dashboard_url_rejects_other_schemes():
    with pytest.raises(ConfigError, match="--address"):
        jobs.dashboard_url("ray://head:10001")


@pytest.fixture
def no_token_env(tmp_path, monkeypatch):
    for name in (jobs.TOKEN_ENV, jobs.TOKEN_PATH_ENV, jobs.AUTH_MODE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_token_sources_in_rays_order(no_token_env, monkeypatch):
    home = no_token_env
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("default\n")
    (home / "f").write_text(" from-file \n")
    (home / "p").write_text("from-path")
    assert jobs.resolve_token(LOCAL) == "default"
    assert jobs.resolve_token(REMOTE) is None  # the default file is not sent to a cluster elsewhere...
    monkeypatch.setenv(jobs.AUTH_MODE_ENV, "token")
    assert jobs.resolve_token(REMOTE) == "default"  # ...unless token mode is asked for, as Ray's clients do
    monkeypatch.setenv(jobs.TOKEN_PATH_ENV, str(home / "p"))
    assert jobs.resolve_token(REMOTE) == "from-path"
    monkeypatch.setenv(jobs.TOKEN_ENV, "from-env")
    assert jobs.resolve_token(REMOTE) == "from-env"
    assert jobs.resolve_token(REMOTE, str(home / "f")) == "from-file"
    with pytest.raises(ConfigError, match="empty"):
        (home / "e").write_text("\n")
        jobs.resolve_token(REMOTE, str(home / "e"))


def test_auth_header_is_what_rays_dashboard_checks():
    from ray._private.authentication.authentication_constants import (
        AUTHORIZATION_BEARER_PREFIX, AUTHORIZATION_HEADER_NAME,
    )

    (name, value), = jobs.auth_headers("abc").items()
    assert name.lower() == AUTHORIZATION_HEADER_NAME and value == AUTHORIZATION_BEARER_PREFIX + "abc"
    assert jobs.auth_headers(None) == {}


def test_unreachable_dashboard_is_a_user_error(no_token_env, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert main(["jobs", "list", "--address", f"http://127.0.0.1:{port}"]) == 2
    assert f"no Ray dashboard answers at http://127.0.0.1:{port}" in capsys.readouterr().err


def test_exit_status_covers_rays_terminal_statuses():
    from ray.job_submission import JobStatus

    terminal = {s.value for s in JobStatus if s.is_terminal()}
    assert set(jobs.EXIT_STATUS) == terminal and jobs.EXIT_STATUS["SUCCEEDED"] == 0
    assert all(code != 0 for status, code in jobs.EXIT_STATUS.items() if status != "SUCCEEDED")


# ----- the MLflow tag for the Ray job id ------------------------------------------------------

def test_ray_job_tags_reads_what_rays_job_supervisor_sets(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.dashboard.modules.job.common import JOB_ID_METADATA_KEY, JOB_NAME_METADATA_KEY

    assert RAY_JOB_CONFIG_ENV == RAY_JOB_CONFIG_JSON_ENV_VAR
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV, raising=False)
    assert ray_job_tags() == {}
    payload = {"runtime_env": {}, "metadata": {JOB_ID_METADATA_KEY: "raysubmit_abc", JOB_NAME_METADATA_KEY: "x"}}
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps(payload))
    assert ray_job_tags() == {RAY_JOB_TAG: "raysubmit_abc"}
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, "not json")
    assert ray_job_tags() == {}


# ----- placement and storage ------------------------------------------------------------------

def test_placement_strategy_is_one_of_rays():
    from ray.util.placement_group import VALID_PLACEMENT_GROUP_STRATEGIES

    assert set(PLACEMENT_STRATEGIES) == set(VALID_PLACEMENT_GROUP_STRATEGIES)
    assert SearchConfig().placement_strategy == "PACK"
    assert SearchConfig(placement_strategy="SPREAD").placement_strategy == "SPREAD"
    with pytest.raises(ConfigError, match="placement_strategy.*'spread'"):
        SearchConfig(placement_strategy="spread")


def test_uri_storage_is_kept_and_written_through_pyarrow(tmp_path, monkeypatch):
    from nasplat.training.storage import run_location, write_bytes
    from nasplat.runtime.driver import resolve_paths

    monkeypatch.chdir(tmp_path)
    config = resolve_paths(SearchConfig(storage="s3://bucket/prefix/", name="run1"), "search")
    assert config.storage == "s3://bucket/prefix/" and run_location(config.storage, config.name) == "s3://bucket/prefix/run1"
    local = resolve_paths(SearchConfig(storage="runs", name="run1"), "search")
    assert run_location(local.storage, local.name) == str(tmp_path / "runs" / "run1")
    uri = (tmp_path / "store").as_uri() + "/run1/genotype.json"
    write_bytes(uri, b"{}\n")
    assert (tmp_path / "store" / "run1" / "genotype.json").read_text() == "{}\n"
