"""Genotypes, model files and runs name a space by its registered name: a path or module there runs nothing."""
from __future__ import annotations

import json

import pytest
import torch

from nasplat import GenotypeError, genotype_from_dict, load_genotype
from nasplat.retraining.model_file import load_model_checkpoint
from nasplat.spaces.registry import registered_space
from nasplat.training.config import ConfigError
from search_spaces.darts import DARTS_V2


@pytest.fixture
def booby_trap(tmp_path):
    """A space file that, if it ever ran, would leave a marker file behind."""
    marker = tmp_path / "executed"
    source = tmp_path / "evil_space.py"
    source.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return source, marker


@pytest.mark.parametrize("spec", ["{file}:darts", "{file}", "os.path:darts", "nasplat.version:darts", "../darts"])
def test_a_genotype_naming_code_is_refused_and_nothing_runs(booby_trap, tmp_path, spec):
    source, marker = booby_trap
    data = {**DARTS_V2.to_dict(), "space": spec.format(file=source)}
    with pytest.raises(GenotypeError, match="registered name"):
        genotype_from_dict(data)
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=str(path)):
        load_genotype(path)
    assert not marker.exists()


def test_a_model_file_naming_code_is_refused(booby_trap, tmp_path):
    source, marker = booby_trap
    genotype = {**DARTS_V2.to_dict(), "space": f"{source}:darts"}
    payload = {"format": "nasplat-model", "version": 1, "state_dict": {},
               "spec": {"num_classes": 2, "class_names": ["a", "b"], "genotype": genotype, "baseline": None,
                        "options": {}}}
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises((GenotypeError, ConfigError), match="registered name"):
        load_model_checkpoint(path)
    assert not marker.exists()


def test_registered_names_still_resolve():
    assert registered_space("darts").name == "darts"
    assert genotype_from_dict(DARTS_V2.to_dict()) == DARTS_V2
