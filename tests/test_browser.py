"""The web demo in a real browser: Playwright driving Debian's Chromium against the
launched app (tiny random checkpoint). The screenshot of a ranked result is saved to
``artifacts/browser-ranked.png``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url)
    page.wait_for_selector("#lychee-run")
    yield page
    context.close()


def upload(page, paths: list[Path]) -> None:
    page.set_input_files("#lychee-images input[type=file]", [str(p) for p in paths])
    page.locator("#lychee-images .thumbnail-item").nth(len(paths) - 1).wait_for()


def keep_every_score(page) -> None:
    """Threshold 0: the tiny model's random scores must not filter the images out."""
    page.fill("#lychee-threshold input[type=number]", "0")
    page.press("#lychee-threshold input[type=number]", "Tab")


def ranked_captions(page) -> list[str]:
    page.locator("#lychee-ranked .caption-label").first.wait_for()
    return page.locator("#lychee-ranked .caption-label").all_inner_texts()


def test_uploaded_images_are_ranked_into_a_captioned_gallery_and_a_table(page, image_dir):
    paths = sorted(image_dir.glob("good*.png"))[:4]
    upload(page, paths)
    page.fill("#lychee-query textarea", "a red square with a diagonal line")
    keep_every_score(page)
    page.click("#lychee-run")
    captions = ranked_captions(page)
    assert len(captions) == 4
    assert re.match(r"^#1 · ≈?\d+\.\d\d · good\d\.png$", captions[0])
    assert page.get_attribute("#lychee-table [role=grid]", "aria-rowcount") == "5"  # header + 4 images
    assert page.locator("#lychee-table [role=gridcell]", has_text="good0.png").count() == 1
    assert page.locator("#lychee-winner .lychee-winner").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-ranked.png"), full_page=True)


def test_enter_in_the_query_box_runs_the_ranking(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png"))[:2])
    keep_every_score(page)
    page.fill("#lychee-query textarea", "two colourful squares")
    page.press("#lychee-query textarea", "Enter")
    assert len(ranked_captions(page)) == 2


def test_the_language_switch_changes_labels(page):
    assert page.inner_text("#lychee-run") == "Rerank"
    page.get_by_text("中文", exact=True).click()
    page.wait_for_function("document.querySelector('#lychee-run').innerText === '开始排序'")
    assert "查询描述" in page.inner_text("#lychee-query")


def test_an_empty_query_shows_a_clear_error_line(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png"))[:1])
    page.click("#lychee-run")
    page.wait_for_selector("#lychee-status .lychee-status--error")
    assert "the query is empty" in page.inner_text("#lychee-status")
