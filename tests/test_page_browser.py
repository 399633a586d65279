"""The leaderboard page in a real browser: headless Chromium (the system's, driven by Playwright;
never a downloaded build, which would not work offline). Loads with no console errors, sorts by a
click, filters by model and threat model, and renders a screenshot that is not blank.

CI installs Chromium from the Debian packages (.ci/run); the test skips only where no browser is
installed."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from test_page import sample_records

from fragility.benchmarks.leaderboard import write_leaderboards

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_path() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(f"no Chromium installed (looked for {', '.join(BROWSERS)}); apt-get install chromium")


def test_page_in_headless_chromium(tmp_path):
    exe = browser_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    from PIL import Image

    recs = sample_records()
    thumb = tmp_path / "runs" / recs[0].config_hash / "examples.png"
    thumb.parent.mkdir(parents=True)
    Image.new("RGB", (40, 20), (200, 30, 30)).save(thumb)
    recs[0].extra_json = json.dumps({"figures": [f"runs/{recs[0].config_hash}/examples.png"]})
    write_leaderboards(recs, tmp_path)
    url = (tmp_path / "leaderboard.html").as_uri()

    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900}
        )
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: errors.append(f"dialog {d.message}"))  # an unescaped <script> would open one
            page.goto(url, wait_until="load")
            assert errors == []
            assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # nothing runs off the right edge
            # the run's picture loads: thumbnails are loading="lazy", which the load event does not wait for
            page.locator("img.thumb").first.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => { const i = document.querySelector('img.thumb'); return i.complete && i.naturalWidth > 0 }"
            )
            assert page.eval_on_selector("img.thumb", "i => i.naturalWidth") == 40

            rows = "#runs tbody tr:not([hidden])"
            col = page.eval_on_selector_all("#runs thead tr.cols th", "ths => ths.map(t => t.title)").index("robust_acc")

            def robust_column() -> list[float]:
                return page.eval_on_selector_all(rows, f"rs => rs.map(r => parseFloat(r.cells[{col}].dataset.v))")

            before = robust_column()
            assert before != sorted(before)  # the board's own order is per model
            page.click(f"#runs thead tr.cols th:nth-child({col + 1})")
            assert robust_column() == sorted(before)
            page.click(f"#runs thead tr.cols th:nth-child({col + 1})")
            assert robust_column() == sorted(before, reverse=True)

            total = page.locator(rows).count()
            page.select_option("select[data-filter=model]", "beta")
            assert page.locator(rows).count() == 6 and page.text_content("#runs .count") == f"6 of {total}"
            assert set(page.eval_on_selector_all(rows, "rs => rs.map(r => r.dataset.model)")) == {"beta"}
            page.click(".tabs button[data-value='linf 0.3']")
            assert page.locator(rows).count() == 2
            assert page.locator("#summary tbody tr:not([hidden])").count() == 1
            assert page.locator("figure table.heat:visible").count() == 1  # the heatmap of that threat model only
            page.select_option("select[data-filter=model]", "")
            page.click(".tabs button[data-value='']")
            assert page.locator(rows).count() == total

            shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
            assert errors == []
        finally:
            ctx.close()
    colours = np.unique(np.asarray(shot.resize((200, 200))).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables and the curve: not a blank page
    assert shot.height > 900
