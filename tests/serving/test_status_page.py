"""The status page in a real headless Chromium: no console errors, nothing fetched from outside, a tile classified.

Chromium comes from the system package manager (``.ci/run`` installs it); Playwright only
drives it (no browser download).  The screenshot is kept as a test artefact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from histoedge.serving.status import histogram_quantile
from tests.serving.helpers import MODEL, decode_like_server, encode, free_port, labels_for, sample_images

CHROMIUM = os.environ.get("HISTOEDGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.01: 0.0, 0.1: 50.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.055)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.982)
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1  # beyond the last finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None


def test_status_page_in_headless_chromium(repo, start_server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is needed for this test (apt-get install chromium); not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    server = start_server(repo, http_port=free_port())
    origin = f"http://127.0.0.1:{server.http_port}"
    tile = sample_images(1, seed=77, size=48)[0]
    tile_file = tmp_path / "tile.png"
    tile_file.write_bytes(encode(tile))
    expected = labels_for(repo / MODEL / "1", decode_like_server(encode(tile))[None])[0]
    sha256 = server.dataplane.model_metadata(MODEL).parameters["sha256"]
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(origin + "/", wait_until="networkidle")
            card = page.locator(f'section[data-model="{MODEL}"]')
            card.wait_for(timeout=10_000)
            text = card.inner_text()
            for words in (f"{MODEL} · version 1", "ready", "fp32", "CPUExecutionProvider", "benign",
                          "malignant", "0.500 on P(malignant)", sha256):
                assert words in text, (words, text)
            assert "ready" in page.locator("#server-ready").inner_text()
            page.set_input_files("#file", str(tile_file))
            page.wait_for_selector("#result.shown", timeout=10_000)
            assert page.locator("#label").inner_text() == expected
            assert page.locator("#bars .bar").count() == 2
            page.wait_for_function("document.querySelector('section.model .note').textContent.includes('(rest 1)')",
                                   timeout=10_000)  # the status poll saw the upload
            screenshot = tmp_path / "status_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"\nstatus page screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert problems == []
    outside = [url for url in requests if urlparse(url).scheme not in ("data", "blob")
               and urlparse(url).hostname != "127.0.0.1"]
    assert outside == [] and any(url.endswith("/classify") for url in requests)
    assert np.isfinite(server.metrics.registry.get_sample_value(
        "histoedge_requests_total", {"model": MODEL, "version": "1", "outcome": "ok", "protocol": "rest"}))
