"""The Calibrate panel in a real browser (Chromium, tiny random checkpoint), at a laptop and a phone
size: label images of two runs by clicking them, read the recommendation, apply it, find it again
after a reload as "my threshold", and read the panel in Chinese. Screenshots go to ``artifacts/``."""

from __future__ import annotations

import re

import pytest

from .test_browser import CHROMIUM, VIEWPORTS, browser, keep_every_score, open_page, ranked_captions, screenshot

__all__ = ["browser"]  # the module-scoped Chromium fixture

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]

LABELS = "#lychee-label-gallery .thumbnail-item"


def run(page, query: str) -> None:
    """Run a query not asked before and wait for the label gallery to show its images, unlabelled."""
    page.fill("#lychee-query textarea", query)
    page.click("#lychee-run")
    page.wait_for_function("""() => {
        const labels = [...document.querySelectorAll('#lychee-label-gallery .caption-label')];
        return labels.length === 6 && labels.every((c) => c.innerText.startsWith('click to label'));
    }""")


def scores(texts: list[str]) -> list[float]:
    return [float(re.search(r"· ≈?(\d+\.\d\d)", t).group(1)) for t in texts]


def captions(page) -> list[str]:
    return page.locator("#lychee-label-gallery .caption-label").all_inner_texts()


def click_label(page, position: int, times: int = 1) -> None:
    for _ in range(times):
        before = captions(page)[position]
        page.locator(LABELS).nth(position).click()
        page.wait_for_function(f"""(before) => document.querySelectorAll('#lychee-label-gallery .caption-label')
            [{position}].innerText !== before""", arg=before)


def summary(page) -> str:
    return page.locator("#lychee-calibration").inner_text()


def slider_value(page) -> float:
    return float(page.input_value("#lychee-threshold input[type=number]"))


@pytest.fixture(params=list(VIEWPORTS))
def calibrating(request, browser, demo_url):
    context, page = open_page(browser, demo_url, request.param)
    page.viewport_name = request.param
    page.click("text=Load sample photos")
    page.locator("#lychee-images .thumbnail-item").nth(5).wait_for()
    keep_every_score(page)
    yield page
    context.close()


def test_label_calibrate_and_apply_the_threshold(calibrating):
    page = calibrating
    page.click("#lychee-calibrate button.label-wrap")
    run(page, "a cat")
    assert all(c.startswith("click to label · ") for c in captions(page))
    top = scores(captions(page))[0]
    assert len(ranked_captions(page)) == 6   # threshold 0: every image ranked

    click_label(page, 0)            # the best scored: relevant
    click_label(page, 1, times=2)   # the next two: not relevant
    click_label(page, 2, times=2)
    assert captions(page)[0].startswith("✓ relevant · ") and captions(page)[1].startswith("✗ not relevant · ")
    page.wait_for_function("() => document.querySelector('#lychee-calibration').innerText.includes('3 labels')")
    assert summary(page).startswith("Based on 3 labels from 1 query: 1 relevant, 2 not relevant.")
    assert f"Recommended threshold: {top:.2f}" in summary(page) and "too few labels" in summary(page)
    assert page.locator("#lychee-pr-curve .vega-embed").count() == 1
    assert page.locator("#lychee-distribution .vega-embed").count() == 1

    page.click("#lychee-use-threshold")
    page.wait_for_function(f"() => Math.abs(document.querySelector('#lychee-threshold input[type=number]').value"
                           f" - {top}) < 0.011")
    assert slider_value(page) <= top
    page.locator("#lychee-my-threshold").wait_for()
    assert page.inner_text("#lychee-my-threshold") == f"My threshold {slider_value(page):.2f} (precision 100%)"
    page.locator("#lychee-calibrate").scroll_into_view_if_needed()
    screenshot(page, "calibrate-1-labelled")

    # A second query: the applied threshold now filters its results, and its labels add up with the first's.
    run(page, "a rocket on the launch pad at night")
    ranked = scores(page.locator("#lychee-ranked .caption-label").all_inner_texts())
    passing = [s for s in scores(captions(page)) if s >= slider_value(page)]
    assert sorted(ranked) == sorted(passing)   # (to two decimals) exactly the images at or above it
    click_label(page, 0)
    page.wait_for_function("() => document.querySelector('#lychee-calibration').innerText.includes('4 labels')")
    assert summary(page).startswith("Based on 4 labels from 2 queries: 2 relevant, 2 not relevant.")
    page.locator("#lychee-calibration").scroll_into_view_if_needed()
    screenshot(page, "calibrate-2-two-queries")

    # The panel in Chinese: captions, summary, buttons.
    page.click("#lychee-language >> text=中文")
    page.wait_for_function("() => document.querySelector('#lychee-calibration').innerText.startsWith('依据')")
    assert summary(page).startswith("依据 2 次查询 的 4 个标注:2 个相关,2 个不相关。")
    assert captions(page)[0].startswith("✓ 相关 · ")
    assert page.inner_text("#lychee-use-threshold") == "使用此门槛"
    assert page.inner_text("#lychee-my-threshold").startswith("我的门槛 ")
    page.locator("#lychee-calibration").scroll_into_view_if_needed()
    screenshot(page, "calibrate-3-zh")

    # "My threshold" is kept in the browser and puts the slider back after a reload.
    page.reload()
    page.locator("#lychee-my-threshold").wait_for()
    saved = float(re.search(r"(\d+\.\d\d)", page.inner_text("#lychee-my-threshold")).group(1))
    keep_every_score(page)
    page.click("#lychee-my-threshold")
    page.wait_for_function(f"() => Math.abs(document.querySelector('#lychee-threshold input[type=number]').value"
                           f" - {saved}) < 0.001")
