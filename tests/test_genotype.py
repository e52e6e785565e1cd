"""DartsGenotype and the genotype (de)serialisation helpers.

The published DARTS_V2 cells and notation come from quark0/darts ``genotypes.py``
(REFERENCES.md section 1): pairs 2k and 2k+1 feed node k; node k may read inputs 0..k+1.
"""
import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nasplat
from nasplat import Genotype, GenotypeError, genotype_from_dict, load_genotype, save_genotype
from search_spaces.darts import DARTS_V2, DartsGenotype

# Verbatim from REFERENCES.md section 1 (quark0/darts genotypes.py DARTS_V2).
PUBLISHED_DARTS_V2_JSON = """
{"normal": [["sep_conv_3x3",0],["sep_conv_3x3",1],["sep_conv_3x3",0],["sep_conv_3x3",1],["sep_conv_3x3",1],["skip_connect",0],["skip_connect",0],["dil_conv_3x3",2]], "normal_concat": [2,3,4,5],
 "reduce": [["max_pool_3x3",0],["max_pool_3x3",1],["skip_connect",2],["max_pool_3x3",1],["max_pool_3x3",0],["skip_connect",2],["skip_connect",2],["max_pool_3x3",1]], "reduce_concat": [2,3,4,5]}
"""

KEYS = {"space", "version", "normal", "normal_concat", "reduce", "reduce_concat"}


def published():
    data = json.loads(PUBLISHED_DARTS_V2_JSON)
    data.update(space="darts", version=1)
    return data


def with_(**changes):
    data = published()
    data.update(changes)
    return data


# ------------------------------------------------------------------ round trips


def test_published_dict_pastes_in_as_is():
    g = genotype_from_dict(published())
    assert isinstance(g, DartsGenotype)
    assert g == DARTS_V2
    assert g.to_dict() == published()


def test_darts_v2_cells_are_the_published_ones():
    assert [tuple(p) for p in DARTS_V2.normal][6:] == [("skip_connect", 0), ("dil_conv_3x3", 2)]
    assert [tuple(p) for p in DARTS_V2.reduce][:2] == [("max_pool_3x3", 0), ("max_pool_3x3", 1)]
    assert list(DARTS_V2.normal_concat) == [2, 3, 4, 5]


def test_to_dict_has_exactly_the_notation_keys_with_lists():
    d = DARTS_V2.to_dict()
    assert set(d) == KEYS
    assert d["space"] == "darts" and d["version"] == 1
    for key in ("normal", "reduce"):
        assert isinstance(d[key], list) and len(d[key]) == 8
        assert all(isinstance(pair, list) and len(pair) == 2 for pair in d[key])
        assert all(isinstance(op, str) and type(src) is int for op, src in d[key])
    for key in ("normal_concat", "reduce_concat"):
        assert d[key] == [2, 3, 4, 5] and isinstance(d[key], list)
    # it is plain JSON
    assert json.loads(json.dumps(d)) == d


def test_to_dict_from_dict_round_trip_is_equal_and_hashable():
    again = DartsGenotype.from_dict(DARTS_V2.to_dict())
    assert again == DARTS_V2
    assert hash(again) == hash(DARTS_V2)
    assert len({again, DARTS_V2}) == 1
    assert genotype_from_dict(DARTS_V2.to_dict()) == DARTS_V2


def test_to_dict_is_a_copy():
    d = DARTS_V2.to_dict()
    d["normal"][0][0] = "max_pool_3x3"
    d["normal_concat"].append(9)
    assert DARTS_V2.to_dict() == published()


def test_lists_and_tuples_give_equal_genotypes():
    data = published()
    as_tuples = DartsGenotype(
        normal=tuple(tuple(p) for p in data["normal"]),
        normal_concat=tuple(data["normal_concat"]),
        reduce=tuple(tuple(p) for p in data["reduce"]),
        reduce_concat=tuple(data["reduce_concat"]),
    )
    as_lists = DartsGenotype(normal=data["normal"], normal_concat=data["normal_concat"],
                             reduce=data["reduce"], reduce_concat=data["reduce_concat"])
    assert as_tuples == as_lists == DARTS_V2
    assert hash(as_tuples) == hash(as_lists)


def test_json_file_round_trip(tmp_path):
    path = save_genotype(DARTS_V2, tmp_path / "g.json")
    assert Path(path).is_file()
    on_disk = json.loads(Path(path).read_text())
    assert on_disk == published()
    loaded = load_genotype(path)
    assert loaded == DARTS_V2 and isinstance(loaded, DartsGenotype)
    # str paths work too
    assert load_genotype(str(path)) == DARTS_V2


def test_hand_written_file_loads(tmp_path):
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(published(), indent=4))
    assert load_genotype(path) == DARTS_V2


def test_immutable():
    g = genotype_from_dict(published())
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.normal = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.normal_concat = (2, 3)
    # the sequences themselves cannot be mutated either
    with pytest.raises((TypeError, AttributeError)):
        g.normal[0] = ("max_pool_3x3", 0)
    with pytest.raises((TypeError, AttributeError)):
        g.normal_concat.append(6)
    # mutating the input after construction does not change the genotype
    data = published()
    g2 = genotype_from_dict(data)
    data["normal"][0][0] = "max_pool_3x3"
    data["normal_concat"].pop()
    assert g2 == DARTS_V2


def test_deepcopy_equal():
    assert copy.deepcopy(DARTS_V2) == DARTS_V2


# ------------------------------------------------------------------ validation


def _raises(data):
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(data)
    assert isinstance(info.value, ValueError)
    return info.value


def test_wrong_space():
    err = _raises(with_(space="autodeeplab_nope"))
    assert err.field == "space"
    assert "space" in str(err)
    with pytest.raises(GenotypeError) as info:
        DartsGenotype.from_dict(with_(space="other"))
    assert info.value.field == "space" and "other" in str(info.value)


def test_missing_space():
    data = published()
    del data["space"]
    assert _raises(data).field == "space"


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_version(version):
    err = _raises(with_(version=version))
    assert err.field == "version"
    assert "version" in str(err)


def test_unknown_field():
    err = _raises(with_(normal_concatt=[2, 3, 4, 5]))
    assert err.field == "normal_concatt"
    assert "normal_concatt" in str(err)


@pytest.mark.parametrize("missing", ["normal", "normal_concat", "reduce", "reduce_concat"])
def test_missing_field(missing):
    data = published()
    del data[missing]
    err = _raises(data)
    assert err.field == missing
    assert missing in str(err)


@pytest.mark.parametrize("op", ["none", "conv_7x1_1x7", "sep_conv_7x7", "", "SEP_CONV_3X3", 3])
def test_op_not_in_darts_ops(op):
    data = published()
    data["reduce"][3][0] = op
    err = _raises(data)
    assert err.field.startswith("reduce")
    assert "reduce" in str(err) and repr(op) in str(err)


@pytest.mark.parametrize("index,source", [
    (0, 2),   # node 0 reads inputs 0..1
    (1, 2),
    (2, 3),   # pair 2 is node 1: inputs 0..2
    (3, 3),
    (5, 4),   # node 2: inputs 0..3
    (7, 5),   # node 3: inputs 0..4
    (4, -1),
])
def test_input_index_out_of_range_for_its_node(index, source):
    data = published()
    data["normal"][index][1] = source
    err = _raises(data)
    assert err.field.startswith("normal")
    assert "normal" in str(err) and str(source) in str(err)


@pytest.mark.parametrize("index,source", [(0, 1), (2, 2), (5, 3), (7, 4), (6, 0)])
def test_largest_input_allowed_for_each_node_is_accepted(index, source):
    data = published()
    data["normal"][index][1] = source
    g = genotype_from_dict(data)
    assert g.normal[index][1] == source


@pytest.mark.parametrize("pairs", [
    lambda p: p[:7],
    lambda p: p + [["sep_conv_3x3", 0]],
    lambda p: [],
    lambda p: p[:6],
])
def test_wrong_number_of_pairs(pairs):
    data = published()
    data["reduce"] = pairs(data["reduce"])
    err = _raises(data)
    assert err.field.startswith("reduce")


@pytest.mark.parametrize("bad_pair", [["sep_conv_3x3"], ["sep_conv_3x3", 0, 1], "sep_conv_3x3", 3])
def test_malformed_pair(bad_pair):
    data = published()
    data["normal"][4] = bad_pair
    err = _raises(data)
    assert err.field.startswith("normal")


@pytest.mark.parametrize("source", ["1", 1.0, True, None, [1]])
def test_non_integer_input(source):
    data = published()
    data["normal"][3][1] = source
    err = _raises(data)
    assert err.field.startswith("normal")


@pytest.mark.parametrize("concat", [
    [2, 3, 4, 6],   # 6 is not a node
    [1, 2, 3, 4],   # 1 is a cell input, not a node
    [],
    [2, 2, 3, 4],   # duplicate
    ["2", 3, 4, 5],
    [True, 3, 4, 5],
    [2.5, 3, 4, 5],
    5,
])
def test_bad_concat(concat):
    err = _raises(with_(reduce_concat=concat))
    assert err.field == "reduce_concat"
    assert "reduce_concat" in str(err)


def test_non_integer_float_concat_is_rejected():
    """2.0 is not a node index: it slips past validation, makes an 'equal' genotype with a different
    short_hash and crashes the built network (``states[2.0]``). Fails until darts.py validates ints."""
    err = _raises(with_(normal_concat=[2.0, 3, 4, 5]))
    assert err.field == "normal_concat"


def test_subset_concat_is_valid():
    g = genotype_from_dict(with_(normal_concat=[3, 5]))
    assert list(g.to_dict()["normal_concat"]) == [3, 5]


def test_non_object_input():
    with pytest.raises(GenotypeError):
        genotype_from_dict([1, 2, 3])
    with pytest.raises(GenotypeError):
        DartsGenotype.from_dict("darts")


def test_direct_construction_validates():
    with pytest.raises(GenotypeError) as info:
        DartsGenotype(normal=DARTS_V2.normal, normal_concat=(2, 3, 4, 5),
                      reduce=DARTS_V2.reduce[:4], reduce_concat=(2, 3, 4, 5))
    assert info.value.field.startswith("reduce")


# ------------------------------------------------------------------ files


def test_malformed_json_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken_genotype.json"
    path.write_text('{"space": "darts", "normal": [')
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    assert str(path) in str(info.value)


def test_invalid_genotype_in_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad_op.json"
    data = published()
    data["normal"][0][0] = "conv_3x3"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    assert str(path) in str(info.value)
    assert info.value.field.startswith("normal")


def test_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.json"
    with pytest.raises((GenotypeError, FileNotFoundError)) as info:
        load_genotype(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------ short_hash


def test_short_hash_is_stable_and_discriminating():
    h = DARTS_V2.short_hash()
    assert isinstance(h, str) and len(h) == 12
    int(h, 16)  # hex
    assert genotype_from_dict(published()).short_hash() == h
    assert DartsGenotype.from_dict(DARTS_V2.to_dict()).short_hash() == h

    other_op = published()
    other_op["normal"][7][0] = "dil_conv_5x5"
    other_src = published()
    other_src["normal"][7][1] = 1
    other_concat = with_(reduce_concat=[2, 3, 4])
    swapped = with_(normal=published()["reduce"], reduce=published()["normal"])
    hashes = {genotype_from_dict(d).short_hash() for d in (other_op, other_src, other_concat, swapped)}
    assert h not in hashes and len(hashes) == 4


def test_short_hash_is_stable_across_processes():
    """Unlike ``hash()``, the fingerprint must not depend on the interpreter's hash seed."""
    code = (
        "import json, sys\n"
        "from nasplat import genotype_from_dict\n"
        "import search_spaces.darts\n"
        "print(genotype_from_dict(json.loads(sys.stdin.read())).short_hash())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(published()), env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == DARTS_V2.short_hash()


def test_equal_genotypes_have_equal_short_hash():
    a = DartsGenotype(normal=DARTS_V2.normal, normal_concat=[2, 3, 4, 5],
                      reduce=DARTS_V2.reduce, reduce_concat=(2, 3, 4, 5))
    assert a == DARTS_V2 and a.short_hash() == DARTS_V2.short_hash()


def test_genotype_base_class_is_exported():
    assert issubclass(DartsGenotype, Genotype)
    assert nasplat.GenotypeError is GenotypeError


def test_public_cell_validators_serve_a_users_space_with_its_own_words():
    ops = ("skip_connect", "conv_1x1")
    nasplat.validate_cell_pairs("cell", (("conv_1x1", 0), ("skip_connect", 1), ("conv_1x1", 2), ("conv_1x1", 0)), ops)
    with pytest.raises(GenotypeError, match=r"cell\[2\].*0\.\.2 for block 1"):
        nasplat.validate_cell_pairs("cell", (("conv_1x1", 0), ("conv_1x1", 1), ("conv_1x1", 3), ("conv_1x1", 0)),
                                    ops, node_word="block")
    with pytest.raises(GenotypeError, match=r"'cell'.*expected 6 \[op, input\] pairs"):
        nasplat.validate_cell_pairs("cell", (("conv_1x1", 0), ("conv_1x1", 1)), ops, nodes=3)
    nasplat.validate_concat("concat", (3, 2), nodes=2)
    with pytest.raises(GenotypeError, match=r"'concat'.*distinct block indices from \[2, 3\]"):
        nasplat.validate_concat("concat", (2, 4), nodes=2, node_word="block")
