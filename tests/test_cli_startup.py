"""The command line starts quickly and reads the same everywhere: parsing and --help import no PyTorch, Ray or
MLflow; the public API loads lazily; one default style, choices for fixed choices, one spelling per concept."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nasplat
from nasplat.searching.config import EARLY_STOP_MODES, EARLY_STOP_PRESETS, SearchConfig
from nasplat.training.config import PLACEMENT_STRATEGIES
from pipelines.cli import build_parser, main
from pipelines.search import format_genotype

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow")

# Runs in a fresh interpreter: --help of the program and of every (nested) subcommand, a parse of typical flags and
# --print-config of search and retrain; then prints the exit statuses and which heavy packages got imported.
PROBE = """
import argparse, contextlib, io, json, sys
from pipelines.cli import build_parser, main

def paths(parser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from paths(sub, (*prefix, name))

statuses = {}
with contextlib.redirect_stdout(io.StringIO()) as out:
    for path in paths(build_parser()):
        statuses[" ".join(path) or "nasplat"] = main([*path, "--help"])
    build_parser().parse_args(["search", "--epochs", "2", "--space-option", "C=4", "--early-stop", "paper"])
    build_parser().parse_args(["retrain", "--from-run", "abc", "--eval-scales", "0.5", "1", "--eval-flip"])
    statuses["search --print-config"] = main(["search", "--print-config", "--epochs", "2"])
    statuses["retrain --print-config"] = main(["retrain", "--print-config", "--baseline", "icnet"])
print(json.dumps({"statuses": statuses, "printed": len(out.getvalue()),
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def test_parsing_and_help_import_no_torch_ray_or_mlflow():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    assert set(report["statuses"].values()) == {0}, report["statuses"]
    assert {"nasplat", "search", "retrain", "data prepare", "jobs logs", "compare", "ui"} <= set(report["statuses"])
    assert report["printed"] > 10_000  # every help text was printed


def test_every_public_name_loads_lazily_from_its_module():
    import importlib

    for name in nasplat.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(nasplat._ORIGIN[name])
        assert getattr(nasplat, name) is getattr(module, name), name
    from nasplat import retrain, search  # noqa: F401  (the from-import form)

    assert nasplat.search.__module__ == "nasplat.api" and nasplat.retrain.__module__ == "nasplat.api"
    assert "icnet" in nasplat.available_models()  # the models package registered the baselines on first use
    assert set(nasplat.__all__) <= set(dir(nasplat))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nasplat.nope  # noqa: B018


def _parsers(parser: argparse.ArgumentParser, prefix: str = "nasplat"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def _option(command: str, flag: str) -> argparse.Action:
    parser = dict(_parsers(build_parser()))[command]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_each_default_is_shown_once_in_one_style():
    checked = 0
    for command, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action)
            stated = re.findall(r"\(default\b.", text)
            assert stated in ([], ["(default:"]), (command, action.option_strings, text)
            assert "(default: None)" not in text, (command, action.option_strings, text)
            checked += 1
    assert checked > 150
    port = _option("nasplat ui", "--port")
    assert dict(_parsers(build_parser()))["nasplat ui"]._get_formatter()._expand_help(port) == "port (default: 5000)"


def test_fixed_choice_options_list_their_choices():
    expected = {
        ("nasplat search", "--early-stop"): EARLY_STOP_PRESETS,
        ("nasplat search", "--early-stop-mode"): EARLY_STOP_MODES,
        ("nasplat search", "--placement-strategy"): PLACEMENT_STRATEGIES,
        ("nasplat retrain", "--placement-strategy"): PLACEMENT_STRATEGIES,
        ("nasplat search", "--order"): (1, 2),
        ("nasplat compare", "--format"): ("table", "csv", "json"),
        ("nasplat evaluate", "--format"): ("table", "json"),
        ("nasplat baselines", "--format"): ("table", "json"),
        ("nasplat export", "--format"): ("onnx", "torchscript"),
    }
    for (command, flag), choices in expected.items():
        assert tuple(_option(command, flag).choices) == tuple(choices), (command, flag)
    assert "device_hours" in _option("nasplat compare", "--sort").choices
    assert main(["search", "--early-stop", "sometimes"]) == 2
    args = build_parser().parse_args(["compare", "--sort", "CPU-h"])  # headings and aliases still name a column
    assert args.sort == "device_hours"


def test_one_spelling_per_concept_and_run_ids_are_RUN_ID():
    for command, flag in (("nasplat evaluate", "--run"), ("nasplat export", "--run"),
                          ("nasplat retrain", "--from-run"), ("nasplat baselines", "--from-run")):
        assert _option(command, flag).metavar == "RUN_ID", (command, flag)
    evaluate = dict(_parsers(build_parser()))["nasplat evaluate"].format_help()
    assert "--eval-scales" in evaluate and "--eval-flip" in evaluate
    assert re.search(r"--scales\b", evaluate) is None and re.search(r"--flip\b", evaluate) is None
    prepare = dict(_parsers(build_parser()))["nasplat data prepare"].format_help()
    assert "--data-root" in prepare and "--train-samples" in prepare and "--val-samples" in prepare
    assert re.search(r"(?<!-data)--root\b", prepare) is None and "--synthetic-samples" not in prepare


def test_old_spellings_still_work_for_a_release_with_one_warning_line(capsys):
    parser = build_parser()
    old = parser.parse_args(["evaluate", "--checkpoint", "m.pt", "--scales", "0.5", "1", "--no-flip"])
    new = parser.parse_args(["evaluate", "--checkpoint", "m.pt", "--eval-scales", "0.5", "1", "--no-eval-flip"])
    assert (old.eval_scales, old.eval_flip) == (new.eval_scales, new.eval_flip) == ([0.5, 1.0], False)
    assert parser.parse_args(["evaluate", "--checkpoint", "m.pt", "--flip"]).eval_flip is True
    old = parser.parse_args(["data", "prepare", "synthetic", "--out", "o", "--root", "r",
                             "--synthetic-samples", "11", "4"])
    assert (old.data_root, old.train_samples, old.val_samples) == ("r", 11, 4)
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "nasplat: warning: --scales is deprecated and will be removed in the next release; use --eval-scales",
        "nasplat: warning: --no-flip is deprecated and will be removed in the next release; use --no-eval-flip",
        "nasplat: warning: --flip is deprecated and will be removed in the next release; use --eval-flip",
        "nasplat: warning: --root is deprecated and will be removed in the next release; use --data-root",
        "nasplat: warning: --synthetic-samples is deprecated and will be removed in the next release; use "
        "--train-samples N --val-samples N",
    ]
    defaults = parser.parse_args(["data", "prepare", "synthetic", "--out", "o"])
    assert (defaults.train_samples, defaults.val_samples) == (384, 64)
    assert capsys.readouterr().err == ""


def test_baselines_experiment_default_is_stated_and_used(tmp_path):
    from pipelines.baselines import BASELINE_FLAGS

    help_text = dict(_parsers(build_parser()))["nasplat baselines"]._get_formatter()._expand_help(
        _option("nasplat baselines", "--experiment"))
    assert help_text == "MLflow experiment name (default: nasplat-baselines)"
    parse = build_parser().parse_args
    assert BASELINE_FLAGS.config_from_args(parse(["baselines"])).experiment == "nasplat-baselines"
    path = tmp_path / "b.yaml"
    path.write_text("experiment: mine\nepochs: 2\n")
    assert BASELINE_FLAGS.config_from_args(parse(["baselines", "--config", str(path)])).experiment == "mine"
    assert BASELINE_FLAGS.config_from_args(parse(["baselines", "--config", str(path), "--experiment", "flag"])
                                           ).experiment == "flag"


def test_print_config_prints_the_resolved_yaml_and_exits_0(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("epochs: 3\nspace_options:\n  C: 4\n")
    assert main(["search", "--print-config", "--config", str(path), "--seed", "5", "--space-option", "layers=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == SearchConfig(epochs=3, seed=5, space_options={"C": 4, "layers": 3}).to_dict()
    assert main(["retrain", "--print-config", "--baseline", "icnet", "--eval-scales", "0.75", "1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["baseline"], printed["eval_scales"]) == ("icnet", [0.75, 1.0])
    assert printed["experiment"] == "nasplat-retrain"
    assert main(["search", "--print-config", "--epochs", "0"]) == 2  # an invalid config is still an error
    assert "'epochs'" in capsys.readouterr().err


def test_sample_genotype_prints_like_search(capsys):
    assert main(["sample-genotype", "--space", "darts", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    genotype = nasplat.get_space("darts").sample(3)
    assert out == format_genotype(genotype) + "\n"
    assert json.loads(out) == genotype.to_dict()
    assert out.count("\n") == len(genotype.to_dict()) + 2  # "{", one line per field, "}"
