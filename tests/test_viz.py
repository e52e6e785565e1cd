"""Pictures of a search (nasplat.viz, SearchSpace.figures): cell DAGs, the Auto-DeepLab path, arch heatmaps, overlays."""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import nasplat
from nasplat.training.config import ConfigError
from nasplat.searching.config import SearchConfig
from nasplat.data.voc import VOC_CLASSES
from nasplat.runtime.search_worker import picture_folders, picture_history
from nasplat.searching.loop import SupernetSearch
from nasplat.viz import cells, heatmaps, overlays, pictures
from search_spaces.autodeeplab import PAPER_GENOTYPE, move_labels, normalized_beta
from search_spaces.autodeeplab import figures as adl_figures
from search_spaces.darts import DARTS_V2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# DARTS_V2 normal cell as published (Liu et al. 2019, Fig. 4a; quark0/darts genotypes.py), as
# (source, node, op) with sources c_{k-2}, c_{k-1} and intermediate nodes 0..3.
PUBLISHED_NORMAL_EDGES = Counter([
    ("c_{k-2}", "0", "sep_conv_3x3"), ("c_{k-1}", "0", "sep_conv_3x3"),
    ("c_{k-2}", "1", "sep_conv_3x3"), ("c_{k-1}", "1", "sep_conv_3x3"),
    ("c_{k-1}", "2", "sep_conv_3x3"), ("c_{k-2}", "2", "skip_connect"),
    ("c_{k-2}", "3", "skip_connect"), ("0", "3", "dil_conv_3x3"),
])
EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$')


def _dot_edges(source: str) -> tuple[Counter, set]:
    labelled, concat = Counter(), set()
    for line in source.splitlines():
        match = EDGE.match(line)
        if match is None:
            continue
        src, dst, attrs = match.groups()
        label = re.search(r'label="([^"]+)"', attrs)
        if label:
            labelled[(src, dst, label.group(1))] += 1
        else:
            concat.add((src, dst))
    return labelled, concat


def _check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        assert image.width > 50 and image.height > 50


def _svg_text(path) -> str:
    root = ET.parse(path).getroot()  # raises if the SVG is not well-formed XML
    assert root.tag.endswith("svg")
    return " ".join(t for t in root.itertext())


def test_dot_of_darts_v2_normal_cell_has_the_published_edges():
    source = cells.cell_dot(cells.cell_graph(DARTS_V2.normal, DARTS_V2.normal_concat))
    labelled, concat = _dot_edges(source)
    assert labelled == PUBLISHED_NORMAL_EDGES  # exactly 8 edges, each with its op
    assert sum(labelled.values()) == 8
    assert concat == {(node, "c_{k}") for node in ("0", "1", "2", "3")}


def test_concat_lists_only_the_named_nodes_and_bad_inputs_are_named():
    graph = cells.cell_graph([["skip_connect", 0], ["sep_conv_3x3", 1], ["max_pool_3x3", 2], ["skip_connect", 1]], [3])
    assert graph.concat == ("1",) and graph.edges[2] == ("0", "1", "max_pool_3x3")
    with pytest.raises(ValueError, match="pair of node 0: input 2"):
        cells.cell_graph([["skip_connect", 2], ["skip_connect", 0]], [2])


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot is not installed")
def test_cells_render_with_graphviz_to_valid_png_and_svg(tmp_path):
    rendered = cells.render_genotype_cells(DARTS_V2, tmp_path)
    assert [r.renderer for r in rendered] == ["graphviz", "graphviz"]
    names = {p.name for r in rendered for p in r.paths}
    assert names == {f"cell_{c}.{ext}" for c in ("normal", "reduce") for ext in ("dot", "png", "svg")}
    _check_png(tmp_path / "cell_normal.png")
    text = _svg_text(tmp_path / "cell_normal.svg")
    for op in ("sep_conv_3x3", "skip_connect", "dil_conv_3x3"):
        assert op in text
    assert "max_pool_3x3" in _svg_text(tmp_path / "cell_reduce.svg")


def test_cells_fall_back_to_matplotlib_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(cells.shutil, "which", lambda name: None)
    rendered = cells.render_cell(DARTS_V2.reduce, DARTS_V2.reduce_concat, tmp_path, "reduce", "reduction cell")
    assert rendered.renderer == "matplotlib"
    assert [p.suffix for p in rendered.paths] == [".dot", ".png", ".svg"]
    _check_png(tmp_path / "reduce.png")
    text = _svg_text(tmp_path / "reduce.svg")
    assert "max_pool_3x3" in text and "skip_connect" in text


def test_layered_layout_puts_every_node_right_of_its_sources():
    graph = cells.cell_graph(DARTS_V2.normal, DARTS_V2.normal_concat)
    pos = cells.layered_positions(graph)
    for source, target, _ in graph.edges:
        assert pos[source][0] < pos[target][0]
    assert pos["3"][0] == 2 and pos["c_{k}"][0] == 3  # node 3 reads node 0


def _image(fig, gid):
    found = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == gid]
    assert len(found) == 1
    return found[0]


def test_alpha_heatmap_shows_softmax_of_the_alpha():
    supernet = nasplat.get_space("darts").supernet(num_classes=3, C=4, layers=3)
    alpha = torch.arange(14 * 8, dtype=torch.float32).reshape(14, 8).remainder(7) * 0.3 - 1.0
    with torch.no_grad():
        supernet.arch_parameters()["normal"].copy_(alpha)
    fig = heatmaps.arch_figure({"normal": supernet.arch_distributions()["normal"]}, nasplat.get_space("darts").ops)
    shown = np.asarray(_image(fig, heatmaps.HEATMAP_GID).get_array())
    e = np.exp(alpha.double().numpy())
    np.testing.assert_allclose(shown, e / e.sum(axis=1, keepdims=True), rtol=1e-6)
    ax = fig.axes[0]
    # DARTS row order: node 0 <- (c_{k-2}, c_{k-1}), node 1 <- (c_{k-2}, c_{k-1}, 0), ...
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows[:5] == ["0 \u2190 c_{k-2}", "0 \u2190 c_{k-1}", "1 \u2190 c_{k-2}", "1 \u2190 c_{k-1}", "1 \u2190 0"]
    assert rows[-1] == "3 \u2190 2" and len(rows) == 14
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "none"


def test_beta_heatmap_uses_the_paper_normalisation_and_blanks_missing_moves():
    fig = heatmaps.arch_figure({"beta": normalized_beta(torch.zeros(4, 4, 3))}, (), moves=move_labels())
    matrix = np.asarray(_image(fig, heatmaps.HEATMAP_GID).get_array().filled(np.nan))
    rows = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert rows == ["4\u21924", "4\u21928", "8\u21924", "8\u21928", "8\u219216",
                    "16\u21928", "16\u219216", "16\u219232", "32\u219216", "32\u219232"]
    # eq. 7 with equal logits: a node with two moves (stride 4, 32, the stem) gives 1/2 each, three moves 1/3
    np.testing.assert_allclose(matrix[:2], 0.5)
    np.testing.assert_allclose(matrix[2:5, 1:], 1 / 3)
    assert np.isnan(matrix[2:, 0]).all()  # layer 1 is fed by the stem only
    assert np.isnan(matrix[5:8, 1]).all() and not np.isnan(matrix[5:8, 2]).any()
    np.testing.assert_allclose(matrix[8:, 3], 0.5)


def test_evolution_lines_follow_each_epoch_distribution(tmp_path):
    rng = np.random.default_rng(0)
    history = []
    for epoch in (1, 2, 3):
        logits = rng.normal(size=(14, 8))
        history.append((epoch, {"normal": np.exp(logits) / np.exp(logits).sum(1, keepdims=True)}))
    ops = nasplat.get_space("darts").ops
    fig = heatmaps.evolution_figure(history, "normal", ops)
    first = fig.axes[0]
    assert first.get_title() == "edge 0 \u2190 c_{k-2}"
    lines = first.get_lines()
    assert len(lines) == 8
    np.testing.assert_allclose(lines[4].get_ydata(), [h[1]["normal"][0, 4] for h in history])
    assert list(lines[4].get_xdata()) == [1, 2, 3]
    written = heatmaps.render_evolution(history, ops, tmp_path)
    assert [p.name for p in written] == ["evolution_normal.png", "evolution_normal.svg"]
    _check_png(written[0])
    assert heatmaps.render_evolution(history[:1], ops, tmp_path) == []


def test_autodeeplab_path_figure_marks_exactly_the_genotype_strides(tmp_path):
    fig = adl_figures.network_path_figure(PAPER_GENOTYPE.path)
    ax = fig.axes[0]
    (line,) = [artist for artist in ax.get_lines() if artist.get_gid() == adl_figures.PATH_GID]
    assert list(line.get_xdata()) == list(range(13))
    assert list(line.get_ydata()) == [4, 4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8]  # stem, then the paper's path
    (grid,) = [c for c in ax.collections if c.get_gid() == adl_figures.POSITIONS_GID]
    # layer l reaches strides 4..4*2^min(l,3): 2 + 3 + 10*4 positions for 12 layers
    assert len(grid.get_offsets()) == 45
    assert "ASPP" in [t.get_text() for t in ax.texts]
    written = nasplat.get_space("autodeeplab").figures(PAPER_GENOTYPE, tmp_path)
    assert [p.name for p in written] == ["network_path.png", "network_path.svg", "cell.dot", "cell.png", "cell.svg"]
    _check_png(written[0])
    svg = ET.parse(written[1]).getroot()
    assert any(el.get("id") == adl_figures.PATH_GID for el in svg.iter())
    labelled, _ = _dot_edges((tmp_path / "cell.dot").read_text())
    assert sum(labelled.values()) == 10 and ("H^{l-2}", "0", "atrous_conv_5x5") in labelled


def test_space_figures_default_draws_every_cell_and_the_heatmaps(tmp_path):
    darts = nasplat.get_space("darts")
    rng = np.random.default_rng(1)
    history = [(step, {name: torch.softmax(torch.as_tensor(rng.normal(size=(14, 8))), dim=-1)
                       for name in ("normal", "reduce")}) for step in (1, 2)]
    written = darts.figures(DARTS_V2, tmp_path, history[-1][1], history, "epoch 2")
    names = {p.name for p in written}
    assert {f"cell_{c}.{ext}" for c in ("normal", "reduce") for ext in ("dot", "png", "svg")} <= names
    assert {"arch_heatmap.png", "evolution_normal.png", "evolution_reduce.svg"} <= names
    assert all(p.is_file() for p in written)
    alone = darts.figures(DARTS_V2, tmp_path / "genotype_only")  # no distributions, no history: cells only
    assert sorted(p.name for p in alone) == sorted(p.name for p in written if p.stem.startswith("cell_"))


def test_overlay_pixels_have_the_palette_colours(tmp_path):
    palette = overlays.dataset_palette(None, VOC_CLASSES)
    # VOC devkit colour map: aeroplane (1) = (128, 0, 0), person (15) = (192, 128, 128)
    assert palette[1] == (128, 0, 0) and palette[15] == (192, 128, 128)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0, 0], mask[1, 1] = 15, 255
    prediction = np.zeros((8, 8), dtype=np.int64)
    prediction[0, 0] = 1
    image = torch.linspace(-1, 1, 3 * 64).reshape(3, 8, 8)
    written = overlays.render_overlays([image], [mask], [prediction], palette, tmp_path, VOC_CLASSES[:3])
    with Image.open(written[0]) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    _, boxes = overlays.overlay_grid([image], [mask], [prediction], palette, VOC_CLASSES[:3])
    scale = overlays.MIN_PANEL // 8
    (gt_top, gt_left), (pr_top, pr_left) = boxes[(0, 1)], boxes[(0, 2)]
    assert tuple(pixels[gt_top, gt_left]) == (192, 128, 128)
    assert tuple(pixels[gt_top + scale - 1, gt_left + scale - 1]) == (192, 128, 128)  # enlarged without blending
    assert tuple(pixels[gt_top + scale, gt_left + scale]) == overlays.NEUTRAL  # ignore = 255
    assert tuple(pixels[gt_top + 2 * scale, gt_left]) == (0, 0, 0)  # background
    assert tuple(pixels[pr_top, pr_left]) == (128, 0, 0)
    blend_top, blend_left = boxes[(0, 3)]
    shown = overlays.display_image(image)[0, 0]
    expected = np.round(0.5 * np.array([128, 0, 0]) + 0.5 * shown)
    np.testing.assert_array_equal(pixels[blend_top, blend_left], expected)


def test_palette_comes_from_the_dataset_even_through_subsets():
    data = nasplat.data.synthetic.SyntheticScenes(4, size=(8, 8), num_classes=6)
    subset = torch.utils.data.Subset(data, [0, 1])
    assert overlays.dataset_palette(subset, data.class_names) == [tuple(c) for c in data.palette]
    with pytest.raises(ValueError, match="outside the palette"):
        overlays.colorize(np.array([[6]]), data.palette)


def test_a_failing_picture_is_reported_and_the_rest_is_still_written(tmp_path):
    broken = pictures.Predictions(images=[], masks=[], predictions=[], palette=[], class_names=[])
    result = pictures.render_pictures(tmp_path, nasplat.get_space("darts"), DARTS_V2, None, predictions=broken)
    assert len(result.warnings) == 1 and result.warnings[0].startswith("predictions: ValueError")
    assert (tmp_path / "cell_normal.png").is_file() and result.cell_renderer in ("graphviz", "matplotlib")


def test_pictures_come_from_the_space_and_name_the_cell_renderer(tmp_path, monkeypatch):
    class Drawn:  # any object with a figures method will do: viz knows no space
        ops = ()

        def figures(self, genotype, directory, distributions, history, title):
            self.seen = (genotype, distributions, list(history), title)
            return list(cells.render_cell(DARTS_V2.normal, DARTS_V2.normal_concat, directory, "mine").paths)

    monkeypatch.setattr(cells.shutil, "which", lambda name: None)  # no graphviz: matplotlib draws
    space = Drawn()
    result = pictures.render_pictures(tmp_path, space, "genotype", {"a": [[1.0]]}, [(3, {"a": [[1.0]]})], title="t")
    assert space.seen == ("genotype", {"a": [[1.0]]}, [(3, {"a": [[1.0]]})], "t")
    assert [p.name for p in result.paths] == ["mine.dot", "mine.png", "mine.svg"] and not result.warnings
    assert result.cell_renderer == "matplotlib"
    assert cells.renderer_of([tmp_path / "x.png"]) is None  # no cell among the files


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot is not installed")
def test_renderer_of_names_graphviz(tmp_path):
    assert cells.renderer_of(cells.render_cell(DARTS_V2.reduce, DARTS_V2.reduce_concat, tmp_path, "r").paths) == "graphviz"


def test_log_figures_keeps_subfolders(tmp_path):
    from mlflow.tracking import MlflowClient

    from nasplat.tracking.logger import RunLogger
    from nasplat.tracking.runs import ensure_experiment

    pictures_dir = tmp_path / "pics"
    (pictures_dir / "sub").mkdir(parents=True)
    (pictures_dir / "a.png").write_bytes(PNG_MAGIC)
    (pictures_dir / "sub" / "b.svg").write_text("<svg/>")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(ensure_experiment(client, "viz", uri)).info.run_id
    logger = RunLogger(uri, run_id)
    assert pictures.log_figures(logger, pictures_dir, "pictures/final") == 2
    assert logger.close() == 0  # the logger sends in the background: delivered before the store is read
    assert [a.path for a in client.list_artifacts(run_id, "pictures/final")] == ["pictures/final/a.png",
                                                                                  "pictures/final/sub"]
    assert [a.path for a in client.list_artifacts(run_id, "pictures/final/sub")] == ["pictures/final/sub/b.svg"]


def test_picture_interval_schedule_and_validation():
    assert picture_folders(5, 5, final=False) == ["pictures/epoch_005"]
    assert picture_folders(4, 5, final=False) == []
    assert picture_folders(10, 5, final=True) == ["pictures/epoch_010", "pictures/final"]
    assert picture_folders(3, 0, final=True) == ["pictures/final"]
    assert SearchConfig().picture_interval == 5
    with pytest.raises(ConfigError, match="picture_interval"):
        SearchConfig(picture_interval=-1)


def test_only_the_final_picture_set_draws_the_evolution(tmp_path):
    history = [(step, {"normal": torch.full((14, 8), 1 / 8)}) for step in (1, 2, 3)]
    assert picture_history(history, final=True) == history
    assert picture_history(history, final=False) == history[-1:] and picture_history([], final=False) == []
    between = heatmaps.render_evolution(picture_history(history, final=False), nasplat.DARTS_OPS, tmp_path / "a",
                                        formats=("png",))
    final = heatmaps.render_evolution(picture_history(history, final=True), nasplat.DARTS_OPS, tmp_path / "b",
                                      formats=("png",))
    assert between == [] and [path.name for path in final] == ["evolution_normal.png"]


def test_arch_history_survives_a_checkpoint(tmp_path):
    config = SearchConfig(epochs=2, train_samples=8, val_samples=4, image_size=16, batch_size=2, workers=1,
                          space_options={"C": 4, "layers": 3})
    search = SupernetSearch(config)
    first = search.record_arch()
    with torch.no_grad():
        search.model.arch_parameters()["normal"].add_(1.0)
    search.record_arch()
    search.save(tmp_path)
    resumed = SupernetSearch(config)
    resumed.restore(tmp_path)
    assert len(resumed.arch_history) == 2
    torch.testing.assert_close(resumed.arch_history[0]["distributions"]["normal"], first["distributions"]["normal"])
    torch.testing.assert_close(resumed.arch_history[1]["parameters"]["normal"],
                               search.model.arch_parameters()["normal"].detach())
