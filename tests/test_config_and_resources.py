"""Config files and flags, and the up-front resource plan (no Ray needed)."""
from __future__ import annotations

import pytest

from nasplat.training.config import ConfigError
from nasplat.searching.config import SearchConfig
from nasplat.runtime.resources import DRIVER_RESOURCE, ResourceError, plan_resources
from pipelines.cli import build_parser
from pipelines.search import SEARCH_FLAGS


def _config(argv: list[str]) -> SearchConfig:
    return SEARCH_FLAGS.config_from_args(build_parser().parse_args(["search", *argv]))


def test_defaults_without_flags():
    config = _config([])
    assert config == SearchConfig()
    assert (config.space, config.dataset, config.workers) == ("darts", "synthetic", 2)


def test_yaml_file_then_flags_win(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("epochs: 3\nseed: 7\nspace_options:\n  C: 4\n  layers: 3\n")
    config = _config(["--config", str(path), "--seed", "9", "--space-option", "layers=4"])
    assert config.epochs == 3  # from the file
    assert config.seed == 9  # the flag wins
    assert config.space_options == {"C": 4, "layers": 4}  # merged, flag wins per key


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nepohcs: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'epohcs'"):
        _config(["--config", str(path)])


def test_invalid_value_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("order: 3\n")
    with pytest.raises(ConfigError, match="'order'"):
        _config(["--config", str(path)])
    with pytest.raises(ConfigError, match="'epochs'"):
        SearchConfig(epochs=0)
    with pytest.raises(ConfigError, match="'train_samples'"):
        SearchConfig(train_samples=3, workers=2)


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        _config(["--config", str(tmp_path / "nope.yaml")])
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        _config(["--config", str(path)])


def test_bad_space_option_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _config(["--space-option", "C8"])


def test_every_config_field_has_a_flag_with_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    for name in SearchConfig.field_names():
        flag = SEARCH_FLAGS.mapping_flags.get(name, "--" + name.replace("_", "-"))
        assert flag in help_text, flag


def test_plan_on_local_ray_with_driver_resource():
    plan = plan_resources({"CPU": 2.0, DRIVER_RESOURCE: 1.0}, workers=2, trials=1)
    assert plan.per_worker == {"CPU": 1.0}
    assert plan.driver == {DRIVER_RESOURCE: 1.0}
    assert plan.max_concurrent_trials == 1
    assert plan.per_trial() == {DRIVER_RESOURCE: 1.0, "CPU": 2.0}


def test_plan_without_driver_resource_reserves_a_cpu_and_shrinks_workers():
    plan = plan_resources({"CPU": 2.0}, workers=2, trials=3)
    assert plan.driver == {"CPU": 1.0}
    assert plan.per_worker == {"CPU": 0.5}
    assert plan.max_concurrent_trials == 1


def test_plan_concurrency_is_bounded_by_cpus_driver_slots_and_gpus():
    assert plan_resources({"CPU": 16.0, DRIVER_RESOURCE: 8.0}, 2, trials=8).max_concurrent_trials == 8
    assert plan_resources({"CPU": 16.0, DRIVER_RESOURCE: 2.0}, 2, trials=8).max_concurrent_trials == 2
    gpu_plan = plan_resources({"CPU": 64.0, "GPU": 4.0, DRIVER_RESOURCE: 8.0}, 2, trials=8, gpus_per_worker=1)
    assert gpu_plan.max_concurrent_trials == 2 and gpu_plan.per_worker["GPU"] == 1.0


def test_plan_that_cannot_fit_explains_the_arithmetic():
    with pytest.raises(ResourceError, match=r"one trial needs 4 CPUs .*4 workers x 1.*cluster has 2 CPUs"):
        plan_resources({"CPU": 2.0, DRIVER_RESOURCE: 1.0}, workers=4, trials=1, cpus_per_worker=1)
    with pytest.raises(ResourceError, match="GPUs"):
        plan_resources({"CPU": 8.0, DRIVER_RESOURCE: 1.0}, workers=2, trials=1, gpus_per_worker=1)
    with pytest.raises(ResourceError, match="nothing is left"):
        plan_resources({"CPU": 1.0}, workers=2, trials=1)


def test_plan_leaves_cpus_for_ray_data():
    plan = plan_resources({"CPU": 2.0, DRIVER_RESOURCE: 1.0}, workers=2, trials=1, reserve_cpus=1.0)
    assert plan.per_worker == {"CPU": 0.5} and plan.reserved_cpus == 1.0
    assert "1 CPU left for Ray Data" in plan.describe()
    with pytest.raises(ResourceError, match="1 for reading data"):
        plan_resources({"CPU": 2.0, DRIVER_RESOURCE: 1.0}, workers=2, trials=1, cpus_per_worker=1, reserve_cpus=1.0)
