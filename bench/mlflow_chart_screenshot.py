"""A PNG of the MLflow UI's own chart view: a scatter of one run metric against another (pictures of docs/tracking.md).

Starts ``mlflow server`` (this Python's MLflow) on 127.0.0.1 and a free port against a store folder as ``nasplat``
and ``bench/pareto_demo.py`` write it (``<store-dir>/mlflow.db``, artifacts in ``<store-dir>/mlartifacts``), opens
the runs of the ``--experiment`` experiments in headless Chromium with the search filter ``--filter`` (default: the
retrain and baselines parent runs, ``tags.`nasplat.kind` = 'retrain'``), and does what a user would do by hand: *Add
chart* -> *Scatter chart*, X axis ``--x``, Y axis ``--y``, *Move to top*, widen the card. With ``--recolour``, runs
that MLflow gave the same colour get distinct ones (as picking a colour at the run list's dot does), so the chart's
legend can tell them apart. The page, from the breadcrumbs down to the chart (search filter, run list, chart and
legend), is saved to ``--out``. The server (without MLflow's job runner) is stopped at the end: its process group,
started here.

The UI keeps chart layouts in the browser, which is thrown away. A run colour picked in the UI is stored on the run
(tag ``mlflow.runColor``), so ``--recolour`` writes to the store; and the server may upgrade an older store's schema.
Point ``--store-dir`` at a copy when the store must stay as it is.

Needs Playwright (in nasplat's ``dev`` extra: ``pip install -e ".[dev]"``) and a Chromium on the machine
(Debian's ``chromium``); Playwright's own browser download is not needed. ``take`` does it all for a store folder;
tests/test_chart_screenshot.py calls it on a small store of its own. The pictures of docs/tracking.md:

    mkdir /tmp/chart_store && cp -r /tmp/pareto_demo/mlflow.db /tmp/pareto_demo/mlartifacts /tmp/chart_store/
    nice -n 19 python bench/mlflow_chart_screenshot.py --store-dir /tmp/chart_store --recolour \\
        --x latency_ms --y val_miou --out docs/img/mlflow_chart_miou_latency.png [--chromium /usr/bin/chromium]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_EXPERIMENTS = ("nasplat-retrain", "nasplat-baselines")
"""Where ``nasplat retrain`` and ``nasplat baselines`` log by default."""
DEFAULT_FILTER = "tags.`nasplat.kind` = 'retrain'"
"""The retrain and baselines parent runs: the ones carrying ``val_miou``, ``latency_ms``, ``gflops`` and ``params``."""
SPARE_COLOURS = ("#7b3fe4", "#a0522d", "#e377c2", "#17becf", "#bcbd22", "#555555", "#1f3a93", "#ff7f0e")
"""Given, in order, to runs whose MLflow colour another run already has."""
SET_COLOUR = """(input, colour) => {
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(input, colour);
    input.dispatchEvent(new Event("input", {bubbles: true}));
    input.dispatchEvent(new Event("change", {bubbles: true}));
}"""
"""What picking COLOUR in a run's colour dialog does (the input is hidden under the dot, so it is set, not clicked)."""
CARD = "experiment-view-compare-runs-card"
TIMEOUT_MS = 120_000
"""How long to wait for any one thing in the UI (generous: the machine may be loaded)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:PORT over STORE_DIR, in a process group of its own; returns once it answers."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{store_dir / 'mlflow.db'}",
               "--default-artifact-root", (store_dir / "mlartifacts").as_uri()]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlflow server exited with {server.returncode}; its output is in {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            time.sleep(1)
    stop_server(server)
    raise SystemExit(f"mlflow server did not answer on 127.0.0.1:{port} within 180 s; its output is in {log_path}")


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's process group (the server and the workers it started)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def experiment_ids(port: int, names: list[str], store_dir: Path) -> list[str]:
    """The ids of the experiments NAMES, asked of the server."""
    ids = []
    for name in names:
        query = urllib.parse.urlencode({"experiment_name": name})
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?{query}") as r:
                ids.append(json.load(r)["experiment"]["experiment_id"])
        except urllib.error.HTTPError as error:
            raise SystemExit(f"--experiment {name!r}: not in the store {store_dir} ({error.code})") from error
    return ids


def runs_url(port: int, ids: list[str], search_filter: str) -> str:
    """The chart view of the runs of experiments IDS that match SEARCH_FILTER, in the UI's *Model training* mode."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning", "compareRunsMode": "CHART",
                                    "searchFilter": search_filter})
    if len(ids) == 1:
        return f"http://127.0.0.1:{port}/#/experiments/{ids[0]}/runs?{query}"
    experiments = urllib.parse.quote(json.dumps(ids))
    return f"http://127.0.0.1:{port}/#/compare-experiments/s?experiments={experiments}&{query}"


def pick_metric(page, axis: str, metric: str) -> None:
    """Choose METRIC in the *Add chart* dialog's AXIS field ("X axis" or "Y axis")."""
    field = page.get_by_test_id("experiment-view-compare-runs-config-field").filter(
        has=page.get_by_role("heading", name=axis, exact=True))
    field.locator("[class*=select-selector]").click()
    page.keyboard.type(metric)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.locator(f'[class*=select-item-option][title="{metric}"]').first
    try:
        option.click(timeout=10_000)
    except PlaywrightTimeout as error:
        raise SystemExit(f"--{axis[0].lower()} {metric!r}: no such metric in the chosen runs") from error


def distinct_colours(page) -> None:
    """Give each run whose colour an earlier run of the list already has a colour of its own."""
    seen: set[str] = set()
    spare = iter(SPARE_COLOURS)
    for swatch in page.get_by_test_id("experiment-view-table-run-color").locator("input[type=color]").all():
        colour = swatch.input_value().lower()
        if colour in seen:
            colour = next(c for c in spare if c not in seen)
            swatch.evaluate(SET_COLOUR, colour)
        seen.add(colour)


def screenshot(url: str, x: str, y: str, out: Path, chromium: str, viewport: tuple[int, int], recolour: bool,
               timeout_ms: int = TIMEOUT_MS) -> dict[str, float]:
    """Open URL, add the X-Y scatter chart through the UI (RECOLOUR: give runs distinct colours first), and save the
    view down to the chart as OUT. Each step fails after TIMEOUT_MS. Returns the chart card's box (x, y, width,
    height) in the picture's pixels."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise SystemExit('this script needs Playwright: pip install -e ".[dev]" (or pip install playwright; it drives '
                         "--chromium, no browser download is needed)") from error
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"], timeout=timeout_ms)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            add_chart = page.get_by_test_id("experiment-view-compare-runs-add-chart").first
            add_chart.wait_for()
            page.get_by_test_id("experiment-view-table-run-color").first.wait_for()  # the run list has loaded
            assistant_close = page.get_by_role("button", name="Close", exact=True)
            if assistant_close.count() and assistant_close.last.is_visible():
                assistant_close.last.click()  # the MLflow Assistant side panel takes a third of the width
            if recolour:
                distinct_colours(page)
            add_chart.click()
            page.get_by_test_id("experiment-view-compare-runs-chart-type-scatter").click()
            pick_metric(page, "X axis", x)
            pick_metric(page, "Y axis", y)
            page.get_by_test_id("experiment-view-compare-runs-chart-modal-confirm").click()
            # the new card goes to the end of the section (not moved through the chart search: a move there is
            # among the cards the search shows)
            card = page.get_by_test_id(CARD).filter(has_text=f"{x} vs. {y}")
            scroll_charts(page, card, 400, timeout_ms)
            card.get_by_test_id("experiment-view-compare-runs-card-menu").click()
            page.get_by_role("menuitem", name="Move to top").click()
            scroll_charts(page, card, -400, timeout_ms)
            page.mouse.wheel(0, -100_000)  # to the top of the pane
            widen(page, card)
            card.locator(".js-plotly-plot").wait_for()
            page.wait_for_timeout(1500)  # plotly's redraw after the resize
            top = page.get_by_test_id("experiment-observatory-link").bounding_box()  # the breadcrumbs
            box = card.bounding_box()
            left, upper = top["x"] - 12, top["y"] - 12
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), clip={"x": left, "y": upper, "width": box["x"] + box["width"] + 12 - left,
                                                 "height": box["y"] + box["height"] + 12 - upper})
            return {"x": box["x"] - left, "y": box["y"] - upper, "width": box["width"], "height": box["height"]}
        finally:
            browser.close()


def scroll_charts(page, card, step: int, timeout_ms: int) -> None:
    """Turn the mouse wheel over the chart pane, STEP pixels at a time, until CARD is drawn (the pane draws only the
    cards near its view); fail after TIMEOUT_MS."""
    first = page.get_by_test_id(CARD).first.bounding_box()
    page.mouse.move(first["x"] + first["width"] / 2, first["y"] + first["height"] / 2)
    deadline = time.monotonic() + timeout_ms / 1000
    while not card.is_visible():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the new chart's card did not come into view within {timeout_ms} ms of scrolling")
        page.mouse.wheel(0, step)
        page.wait_for_timeout(250)


def widen(page, card) -> None:
    """Drag CARD's resize handle (its bottom-right corner) to the right edge of the page and 60 px down."""
    box = card.bounding_box()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3)
    page.mouse.down()
    page.mouse.move(page.viewport_size["width"] - 20, box["y"] + box["height"] + 60, steps=10)
    page.mouse.up()


def take(store_dir: Path, out: Path, *, experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS, x: str = "latency_ms",
         y: str = "val_miou", search_filter: str = DEFAULT_FILTER, recolour: bool = False,
         chromium: str = "/usr/bin/chromium", viewport: tuple[int, int] = (1400, 900),
         timeout_ms: int = TIMEOUT_MS) -> dict[str, float]:
    """The chart of Y against X of the runs of EXPERIMENTS in STORE_DIR that match SEARCH_FILTER, saved as OUT: starts
    a server on the store, takes the picture (see ``screenshot``, which gives the return value) and stops the server's
    process group, also on failure."""
    store_dir = store_dir.resolve()
    if not (store_dir / "mlflow.db").is_file():
        raise SystemExit(f"--store-dir {store_dir}: no mlflow.db there")
    if not Path(chromium).is_file():
        raise SystemExit(f"--chromium {chromium}: no such file")
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"mlflow_chart_server_{port}.log"
    server = start_server(store_dir, port, log_path)
    try:
        url = runs_url(port, experiment_ids(port, list(experiments), store_dir), search_filter)
        print(f"[chart-screenshot] {url}", file=sys.stderr)
        return screenshot(url, x, y, out, chromium, viewport, recolour, timeout_ms)
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-dir", type=Path, required=True,
                        help="folder holding mlflow.db and mlartifacts/ (e.g. a copy of bench/pareto_demo.py's "
                             "workdir)")
    parser.add_argument("--experiment", action="append",
                        help=f"experiment name, repeatable (default: {', '.join(DEFAULT_EXPERIMENTS)})")
    parser.add_argument("--x", default="latency_ms", help="the metric of the horizontal axis (default latency_ms)")
    parser.add_argument("--y", default="val_miou", help="the metric of the vertical axis (default val_miou)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--filter", default=DEFAULT_FILTER,
                        help=f"MLflow run search filter (default: {DEFAULT_FILTER})")
    parser.add_argument("--recolour", action="store_true",
                        help="give runs sharing a colour distinct ones (stored on the runs as the tag mlflow.runColor)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    parser.add_argument("--viewport", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"))
    args = parser.parse_args(argv)
    take(args.store_dir, args.out, experiments=tuple(args.experiment or DEFAULT_EXPERIMENTS), x=args.x, y=args.y,
         search_filter=args.filter, recolour=args.recolour, chromium=args.chromium, viewport=tuple(args.viewport))
    print(f"[chart-screenshot] wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
