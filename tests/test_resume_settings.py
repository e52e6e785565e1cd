"""Resuming keeps a run's settings: a re-run by name with other settings is refused, listing what changed, and
``--resume RUN`` (a name, a folder or an MLflow run id) runs with the stored settings, changing only what
``--resume-override`` names."""
from __future__ import annotations

import json

import pytest

from nasplat.api import build_config
from nasplat.runtime.run_folder import CONFIG_FILE, OVERRIDES_FILE, keep_settings, resumed_config
from nasplat.searching.config import SearchConfig
from nasplat.retraining.config import RetrainConfig
from nasplat.training.config import ConfigError
from pipelines.cli import main


def _stored_run(tmp_path, name="run1", **settings) -> tuple[SearchConfig, str]:
    """A run folder as `nasplat search` leaves it: the settings it started with in nasplat_config.json."""
    config = SearchConfig(name=name, storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                          **settings)
    run_dir = str(tmp_path / "runs" / name)
    keep_settings(config, run_dir)
    return config, run_dir


def test_a_rerun_by_name_keeps_its_settings(tmp_path):
    first, run_dir = _stored_run(tmp_path, epochs=4)
    assert json.loads((tmp_path / "runs" / "run1" / CONFIG_FILE).read_text())["epochs"] == 4
    assert keep_settings(first, run_dir) == {}  # the same settings resume
    with pytest.raises(ConfigError, match=r"epochs: 4 -> 6; w_lr: 0.025 -> 0.1.*--resume run1"):
        keep_settings(first.replace(epochs=6, w_lr=0.1), run_dir)


def test_resume_by_name_or_folder_takes_the_stored_settings(tmp_path, monkeypatch):
    _, run_dir = _stored_run(tmp_path, epochs=4, w_lr=0.05, space_options={"C": 4})
    monkeypatch.chdir(tmp_path)
    by_name = resumed_config(SearchConfig, {"resume": "run1", "storage": "runs"})
    by_folder = resumed_config(SearchConfig, {"resume": "runs/run1"})
    for config in (by_name, by_folder):
        assert (config.epochs, config.w_lr, config.space_options, config.name) == (4, 0.05, {"C": 4}, "run1")
        assert config.storage == str(tmp_path / "runs")
    # a flag that agrees with the stored settings (a relative path included) is no change
    assert resumed_config(SearchConfig, {"resume": run_dir, "epochs": 4, "storage": "runs"}).epochs == 4


def test_a_run_started_before_a_space_default_resumes_with_its_own_options(tmp_path, monkeypatch):
    """The DARTS space's search default (max_skip_normal) joins new runs only: a run stored without it (as nasplat
    wrote runs before the default existed) resumes with the options its checkpoints hold, not refused as changed."""
    from nasplat.runtime.search_driver import prepare_search

    small = dict(space_options={"C": 4}, train_samples=16, val_samples=8, image_size=16, batch_size=2)
    _, run_dir = _stored_run(tmp_path, **small)
    monkeypatch.chdir(tmp_path)
    resumed = prepare_search(resumed_config(SearchConfig, {"resume": run_dir}))
    assert resumed.space_options == {"C": 4} and keep_settings(resumed, run_dir) == {}
    fresh = prepare_search(SearchConfig(name="run2", storage=str(tmp_path / "runs"), **small))
    assert fresh.space_options == {"max_skip_normal": 2, "C": 4}


def test_a_new_run_stores_its_remedy_options_spelt_out(tmp_path, monkeypatch):
    """The defaults of the remedies' options are written into a new run's settings (and MLflow params), so a later
    change of a default cannot change a run that resumes; what the user gave stays, and a resume keeps what it has."""
    from nasplat.runtime.search_driver import prepare_search

    small = dict(space_options={"C": 4}, train_samples=16, val_samples=8, image_size=16, batch_size=2)
    monkeypatch.chdir(tmp_path)
    fresh = prepare_search(SearchConfig(name="run1", storage=str(tmp_path / "runs"), remedy=["skip_dropout", "entropy"],
                                        remedy_options={"entropy_weight": 0.5}, **small))
    assert fresh.remedy_options == {"skip_dropout_rate": 0.7, "entropy_weight": 0.5, "entropy_start": 0.0}
    _, run_dir = _stored_run(tmp_path, name="old", remedy=["entropy"], **small)  # stored before options were spelt out
    resumed = prepare_search(resumed_config(SearchConfig, {"resume": run_dir}))
    assert resumed.remedy_options == {} and keep_settings(resumed, run_dir) == {}


def test_changed_flags_are_refused_with_the_list_unless_overridden(tmp_path):
    _, run_dir = _stored_run(tmp_path, epochs=4)
    with pytest.raises(ConfigError, match=r"epochs: 4 -> 6; max_failures: 1 -> 3\).*--resume-override KEY=VALUE"):
        resumed_config(SearchConfig, {"resume": run_dir, "epochs": 6, "max_failures": 3, "w_lr": 0.025})
    config = resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"epochs": 6, "max_failures": 3}})
    assert (config.epochs, config.max_failures, config.resume_override) == (6, 3, {"epochs": 6, "max_failures": 3})
    # the flag may be given too, when the override names it
    assert resumed_config(SearchConfig, {"resume": run_dir, "epochs": 5, "resume_override": {"epochs": 6}}).epochs == 6


def test_overrides_that_cannot_apply_are_refused(tmp_path):
    _, run_dir = _stored_run(tmp_path, trials=2)
    with pytest.raises(ConfigError, match=r"--resume-override seed: cannot change when resuming \(each trial"):
        resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"seed": 3}})
    with pytest.raises(ConfigError, match=r"--resume-override epochs: a run of several trials keeps its epochs"):
        resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"epochs": 9}})
    with pytest.raises(ConfigError, match=r"--resume-override epoch: not an option of `nasplat search`"):
        resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"epoch": 9}})
    with pytest.raises(ConfigError, match=r"config field 'max_failures' must be an integer >= 0"):
        resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"max_failures": -1}})


def test_unknown_runs_are_clear_errors(tmp_path, monkeypatch):
    _stored_run(tmp_path, name="alpha")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--resume beta: no run 'beta' in .*runs \(runs there: alpha\)"):
        resumed_config(SearchConfig, {"resume": "beta", "storage": "runs"})
    with pytest.raises(ConfigError, match=r"--resume ./nowhere: .*nowhere is not a nasplat run folder"):
        resumed_config(SearchConfig, {"resume": "./nowhere"})
    with pytest.raises(ConfigError, match=r"--resume runs/alpha: .* does not hold a retrain run"):
        resumed_config(RetrainConfig, {"resume": "runs/alpha"})
    with pytest.raises(ConfigError, match=r"no MLflow store at"):
        resumed_config(SearchConfig, {"resume": "0" * 32, "storage": "runs", "tracking_uri": "sqlite:///none.db"})


def test_resume_by_mlflow_run_id_of_the_parent_or_a_trial(tmp_path):
    from mlflow.tracking import MlflowClient

    from nasplat.tracking import schema

    config, _ = _stored_run(tmp_path, epochs=3)
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.create_experiment("nasplat-search")
    parent = client.create_run(experiment, tags={schema.KIND_TAG: schema.SEARCH, schema.RUN_NAME_TAG: "run1"})
    client.log_param(parent.info.run_id, "storage", config.storage)
    trial = client.create_run(experiment, tags={schema.KIND_TAG: schema.SEARCH_TRIAL,
                                                schema.PARENT_TAG: parent.info.run_id})
    for run_id in (parent.info.run_id, trial.info.run_id):
        resumed = resumed_config(SearchConfig, {"resume": run_id, "tracking_uri": config.tracking_uri})
        assert (resumed.name, resumed.epochs, resumed.storage) == ("run1", 3, config.storage)
    other = client.create_run(experiment, tags={schema.KIND_TAG: schema.RETRAIN})
    with pytest.raises(ConfigError, match="is a retrain run, not a search"):
        resumed_config(SearchConfig, {"resume": other.info.run_id, "tracking_uri": config.tracking_uri})
    with pytest.raises(ConfigError, match="no MLflow run"):
        resumed_config(SearchConfig, {"resume": "f" * 32, "tracking_uri": config.tracking_uri})


def test_the_cli_and_the_api_resolve_the_same_way(tmp_path, monkeypatch, capsys):
    _, run_dir = _stored_run(tmp_path, epochs=4, w_lr=0.05)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--resume", run_dir, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "epochs: 4" in printed and "w_lr: 0.05" in printed and "name: run1" in printed
    assert main(["search", "--resume", run_dir, "--epochs", "7", "--print-config"]) == 2
    assert "epochs: 4 -> 7" in capsys.readouterr().err
    assert main(["search", "--resume", run_dir, "--resume-override", "epochs=7", "--print-config"]) == 0
    assert "epochs: 7" in capsys.readouterr().out
    # nasplat.search(...) options and a resolved config passed back in (the CLI's path) give the same config
    resolved = build_config(SearchConfig, None, {"resume": run_dir, "resume_override": {"epochs": 7}})
    assert build_config(SearchConfig, resolved, {}) == resolved and resolved.epochs == 7
    with pytest.raises(ConfigError, match="w_lr: 0.05 -> 0.1"):
        build_config(SearchConfig, {"resume": run_dir}, {"w_lr": 0.1})


def test_a_resumed_run_records_its_overrides_for_the_restored_trials(tmp_path):
    from nasplat.runtime.driver import OVERRIDES_KEY, _with_overrides, first_values, overrides_tag
    from nasplat.tracking import schema

    first, run_dir = _stored_run(tmp_path, epochs=4)
    resumed = resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"max_failures": 3}})
    assert keep_settings(resumed, run_dir) == {"max_failures": 3}
    assert json.loads((tmp_path / "runs" / "run1" / CONFIG_FILE).read_text())["max_failures"] == 3
    again = resumed_config(SearchConfig, {"resume": run_dir, "resume_override": {"picture_interval": 2}})
    assert again.max_failures == 3  # the stored settings now hold the first override
    assert keep_settings(again, run_dir) == {"max_failures": 3, "picture_interval": 2}
    assert json.loads((tmp_path / "runs" / "run1" / OVERRIDES_FILE).read_text()) == {"max_failures": 3,
                                                                                     "picture_interval": 2}
    seen = []

    def trial(trial_config: dict) -> None:
        seen.append(trial_config)

    _with_overrides(trial, {"max_failures": 3})({**first.to_dict(), "seed": 5})  # a trial's config as Tune stored it
    assert seen[0]["max_failures"] == 3 and seen[0]["seed"] == 5  # its own seed kept, the old setting replaced
    assert seen[0][OVERRIDES_KEY] == {"max_failures": 3}  # for the trial run's params and tag
    assert _with_overrides(trial, {}) is trial
    # MLflow refuses a param's new value: the runs keep the first ones, and a tag holds the changes
    params = first_values(again, {"max_failures": 3, "picture_interval": 2})
    assert "max_failures" not in params and "picture_interval" not in params and params["epochs"] == 4
    assert overrides_tag({"tracking_uri": "http://u:pw@h:5000", "max_failures": 3}) == {
        schema.RESUME_OVERRIDES_TAG: '{"max_failures": 3, "tracking_uri": "http://***@h:5000"}'}


def test_a_checkpoint_of_another_space_or_model_is_refused_with_a_message(tmp_path):
    """The last guard, in the worker: a run folder whose checkpoints belong to other settings (a folder copied over
    another) is refused naming both, never fed to load_state_dict."""
    from nasplat.retraining.loop import Retrainer
    from nasplat.searching.loop import SupernetSearch
    from search_spaces.darts import DARTS_V2

    tiny = dict(image_size=32, train_samples=8, val_samples=4, batch_size=2, workers=1)
    SupernetSearch(SearchConfig(**tiny, space_options={"C": 2, "layers": 3})).save(tmp_path / "search")
    for other in (SearchConfig(**tiny, space_options={"C": 4, "layers": 3}),
                  SearchConfig(**tiny, space="autodeeplab", space_options={"F": 2, "L": 3})):
        with pytest.raises(ConfigError, match=r"the checkpoint is of search space 'darts' with options "
                                              r"\{'C': 2, 'layers': 3\}, not .*resume it with its own settings"):
            SupernetSearch(other).restore(tmp_path / "search")
    source = {"genotype": DARTS_V2.to_dict(), "options": {"C": 4, "layers": 3, "head_channels": 8}}
    retrain = RetrainConfig(**{**tiny, "image_size": 16})
    Retrainer(retrain, source).save(tmp_path / "retrain")
    with pytest.raises(ConfigError, match=r"the checkpoint trains .*, not .*resume it with its own model source"):
        Retrainer(retrain, {**source, "options": {**source["options"], "C": 6}}).restore(tmp_path / "retrain")


def test_a_retrain_run_resumes_the_same_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RetrainConfig(name="r1", storage=str(tmp_path / "runs"), epochs=3, lr=0.05, baseline="unet")
    keep_settings(first, str(tmp_path / "runs" / "r1"))
    resumed = resumed_config(RetrainConfig, {"resume": "r1", "storage": "runs", "resume_override": {"max_failures": 4}})
    assert (resumed.epochs, resumed.lr, resumed.baseline, resumed.max_failures) == (3, 0.05, "unet", 4)
    with pytest.raises(ConfigError, match=r"--resume-override baseline: cannot change when resuming \(the checkpoints"):
        resumed_config(RetrainConfig, {"resume": "runs/r1", "resume_override": {"baseline": "fcn"}})
    with pytest.raises(ConfigError, match=r"lr: 0.05 -> 0.1"):
        resumed_config(RetrainConfig, {"resume": "runs/r1", "lr": 0.1})


def test_resume_override_without_resume_is_refused(capsys):
    with pytest.raises(ConfigError, match=r"'resume_override' \(epochs\) changes a stopped run's settings: give "
                                          r"--resume RUN"):
        SearchConfig(resume_override={"epochs": 3})
    assert main(["search", "--resume-override", "epochs=3", "--print-config"]) == 2
    assert "give --resume RUN with it" in capsys.readouterr().err
