"""The registry's web pages in a real browser: headless Chromium (Debian's package) driven
by Playwright against `registry serve` on 127.0.0.1, serving a copy of the repository's
example registry. From the index to a package page, a search, the SVG DAG visible, a
version page, a 404. Its screenshots are the README's (docs/images/): taken into the
test's folder, and copied there only with MERGEPKG_SCREENSHOTS=1, so that running the
tests leaves the checkout as it was. Chromium and Playwright missing is a failure, not a
skip: CI installs both (.ci/run, the test extra)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from registries import serving

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path):
    assert Path(CHROMIUM).is_file(), "chromium is not installed: apt-get install -y chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright  # the `test` extra

    with sync_playwright() as p:
        # Playwright gives each launch a fresh profile (--user-data-dir) of its own
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshot(tmp_path):
    """screenshot(page, name): the page as docs/images/NAME, refreshed there only on request."""

    def take(page, name: str) -> None:
        shot = tmp_path / name
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 1000  # a picture, not an empty file
        if os.environ.get("MERGEPKG_SCREENSHOTS") == "1":
            shutil.copyfile(shot, REPO / "docs" / "images" / name)

    return take


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(REPO / "registry", root)
    with serving(root) as url:
        yield url


def test_browse_search_and_screenshots(browser, served, screenshot):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.set_default_timeout(30_000)  # a loaded machine renders slowly
    page.goto(served + "/")
    assert page.title() == "mergepkg-examples packages"
    rows = page.locator("#packages tbody tr")
    assert rows.count() == 4
    page.set_viewport_size({"width": 1000, "height": 420})
    screenshot(page, "registry-index.png")
    page.set_viewport_size({"width": 1000, "height": 700})

    page.fill("input[name=q]", "zephyr")  # the server searches; no JavaScript involved
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**/?q=zephyr")
    assert rows.count() == 1 and "1 packages" in page.inner_text("#count")

    page.click("text=examples/mistral-math-chat-zephyr")
    page.wait_for_url("**/packages/examples/mistral-math-chat-zephyr/")
    assert "mergepkg build examples/mistral-math-chat-zephyr@=0.1.0" in page.inner_text("#use + pre")
    dag = page.locator("svg.dag")
    assert dag.is_visible()
    box = dag.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 60
    assert page.locator("svg.dag g.node").count() == 3 and page.locator("svg.dag path.edge").count() == 2
    screenshot(page, "registry-package.png")

    page.click("h2#dependencies + ul a")  # its dependency
    page.wait_for_url("**/packages/examples/mistral-math-chat/")
    assert "examples/mistral-math-chat-zephyr" in page.inner_text("h2#dependents + ul")
    page.click("#versions + table a")
    page.wait_for_url("**/packages/examples/mistral-math-chat/0.1.0/")

    response = page.goto(served + "/packages/no-such-package/")
    assert response is not None and response.status == 404 and page.inner_text("h1") == "Not found"


def test_static_site_filters_in_the_browser(browser, served, tmp_path):
    from mergepkg.registry.site import write_site

    out = tmp_path / "site"
    write_site(tmp_path / "registry", out)
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto((out / "index.html").as_uri())
    assert page.locator("#filter").is_visible()  # shown by the script; hidden without JavaScript
    page.fill("#filter", "llama3")
    assert page.locator("#packages tbody tr:visible").count() == 2
    page.click("text=examples/llama3-11b-passthrough")
    assert page.url.endswith("/packages/examples/llama3-11b-passthrough/index.html")
    assert page.locator("svg.dag").is_visible()
