"""The MLflow chart view of docs/tracking.md, taken by bench/mlflow_chart_screenshot.py in headless Chromium from a
small store of retrain-like parent runs: the picture holds the scatter's point of every parent run, in its run colour,
and nothing of the trial run the search filter leaves out; runs sharing a colour were given distinct ones
(``recolour``), and the server's process group is gone afterwards.

Set NASPLAT_CHART_SCREENSHOT_OUT=<path.png> to keep a copy of the picture (to look at it; the pictures in docs/img come
from a real experiment, see docs/tracking.md)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from nasplat.tracking import schema
from nasplat.tracking.runs import ensure_experiment

_PATH = Path(__file__).resolve().parents[1] / "bench" / "mlflow_chart_screenshot.py"
_SPEC = importlib.util.spec_from_file_location("mlflow_chart_screenshot", _PATH)
chart = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = chart
_SPEC.loader.exec_module(chart)

COLOUR_TAG = "mlflow.runColor"
# (experiment, run name, val_miou, latency_ms, colour); the first and the last share a colour
PARENTS = [
    ("nasplat-retrain", "retrain-a", 0.21, 6.0, "#e41a1c"),
    ("nasplat-retrain", "retrain-b", 0.43, 14.0, "#377eb8"),
    ("nasplat-retrain", "retrain-c", 0.33, 25.0, "#4daf4a"),
    ("nasplat-baselines", "baselines-d", 0.12, 38.0, "#984ea3"),
    ("nasplat-baselines", "baselines-e", 0.38, 52.0, "#e41a1c"),
]
TRIAL_COLOUR = "#a65628"
"""The colour of a retrain-trial child run: the default filter leaves it out, so the picture must not hold it."""
VIEWPORT = (1400, 900)
MARKER = 5
"""A scatter point is a filled disc wider than this many pixels; the legend's lines and the axes are thinner."""


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def _has_filled_square(pixels: np.ndarray, colour: str) -> bool:
    """Whether PIXELS (H x W x 3) hold a MARKER x MARKER square all of COLOUR."""
    mask = (pixels == _rgb(colour)).all(axis=2).astype(np.int64)
    sums = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k = MARKER
    windows = sums[k:, k:] - sums[:-k, k:] - sums[k:, :-k] + sums[:-k, :-k]
    return bool((windows == k * k).any())


def _build_store(store_dir: Path) -> tuple[MlflowClient, dict[str, str]]:
    """Parent runs as nasplat retrain/baselines tag them, with the metrics the chart plots; one trial under the first.
    Returns the client and the parent run ids by name."""
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    start = int(time.time() * 1000) - 600_000
    ids = {}
    for i, (experiment, name, miou, latency, colour) in enumerate(PARENTS):
        run = client.create_run(ensure_experiment(client, experiment, uri), start_time=start + i * 1000, run_name=name,
                                tags={schema.KIND_TAG: schema.RETRAIN, schema.RUN_NAME_TAG: name, COLOUR_TAG: colour})
        for key, value in ((schema.MIOU_METRIC, miou), (schema.LATENCY_METRIC, latency),
                           (schema.GFLOPS_METRIC, latency / 100)):
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    first = ids[PARENTS[0][1]]
    trial = client.create_run(client.get_run(first).info.experiment_id, start_time=start + 10_000,
                              run_name="retrain-a-trial",
                              tags={schema.KIND_TAG: schema.RETRAIN_TRIAL, schema.PARENT_TAG: first,
                                    COLOUR_TAG: TRIAL_COLOUR})
    client.log_metric(trial.info.run_id, schema.MIOU_METRIC, 0.9)
    client.log_metric(trial.info.run_id, schema.LATENCY_METRIC, 30.0)
    client.set_terminated(trial.info.run_id)
    return client, ids


def _group_gone(pgid: int, within_s: float = 15) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_chart_view_screenshot_shows_every_parent_run(tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium when it runs as root)")
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    client, ids = _build_store(store_dir)
    servers = []
    start_server = chart.start_server

    def recording_start(*args):
        servers.append(start_server(*args))
        return servers[-1]

    monkeypatch.setattr(chart, "start_server", recording_start)
    out = tmp_path / "chart.png"
    card = chart.take(store_dir, out, recolour=True, chromium=chromium, viewport=VIEWPORT, timeout_ms=90_000)

    assert len(servers) == 1 and _group_gone(servers[0].pid), "the mlflow server's process group is still running"
    if os.environ.get("NASPLAT_CHART_SCREENSHOT_OUT"):
        shutil.copyfile(out, os.environ["NASPLAT_CHART_SCREENSHOT_OUT"])

    # the pair sharing a colour: the one listed later got the first spare colour, stored on its run
    colours = {name: client.get_run(run_id).data.tags[COLOUR_TAG].lower() for name, run_id in ids.items()}
    pair = (PARENTS[0][1], PARENTS[-1][1])
    assert sorted(colours[name] for name in pair) == sorted([PARENTS[0][4], chart.SPARE_COLOURS[0]]), colours
    assert len(set(colours.values())) == len(PARENTS)

    image = Image.open(out)
    assert image.format == "PNG"
    # the picture is the clip from the breadcrumbs to 12 px beyond the chart card, inside the viewport
    assert abs(image.width - (card["x"] + card["width"] + 12)) <= 1
    assert abs(image.height - (card["y"] + card["height"] + 12)) <= 1
    assert image.width <= VIEWPORT[0] and image.height <= VIEWPORT[1]
    assert card["width"] > image.width / 2, "the chart card was not widened"
    pixels = np.asarray(image.convert("RGB")).astype(np.int64)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 300, "the picture is (nearly) blank"

    x, y = int(card["x"]), int(card["y"])
    inside = pixels[y:y + int(card["height"]), x:x + int(card["width"])]
    missing = [name for name, colour in colours.items() if not _has_filled_square(inside, colour)]
    assert missing == [], f"no scatter point in the run colour of {missing} in the chart"
    assert not (pixels == _rgb(TRIAL_COLOUR)).all(axis=2).any(), "the trial run, which the filter leaves out, is drawn"
