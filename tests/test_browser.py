"""The web demo in a real browser: Playwright driving Debian's Chromium against the
launched app (tiny random checkpoint), at a laptop and a phone size. Screenshots of the page
before a run, after it, after an error that follows it and of a "Why this score?" map are saved
under ``artifacts/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 30_000
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
MAP_TIMEOUT_MS = 90_000  # a map is cells + 1 forward passes, on a CPU shared with other tests
VIEWPORTS = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}

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


def open_page(browser, demo_url, viewport: str):
    context = browser.new_context(viewport=VIEWPORTS[viewport], locale="en-US")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url)
    page.wait_for_selector("#lychee-run")
    return context, page


@pytest.fixture
def page(browser, demo_url):
    context, page = open_page(browser, demo_url, "desktop")
    yield page
    context.close()


@pytest.fixture(params=list(VIEWPORTS))
def any_page(request, browser, demo_url):
    """The page at each viewport; the test reads the viewport's name from ``page.viewport_name``."""
    context, page = open_page(browser, demo_url, request.param)
    page.viewport_name = request.param
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{page.viewport_name}-{name}.png"))


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


def run_and_wait(page, query: str) -> list[str]:
    page.fill("#lychee-query textarea", query)
    page.click("#lychee-run")
    return ranked_captions(page)


def wait_until_results_top_is_in_view(page) -> None:
    page.wait_for_function("""() => {
        const top = document.getElementById('lychee-results').getBoundingClientRect().top;
        return top >= 0 && top < window.innerHeight / 2;
    }""")


# Whether the boxes of the first elements matching two selectors overlap.
OVERLAPS_JS = """([a, b]) => {
  const r = document.querySelector(a).getBoundingClientRect(), s = document.querySelector(b).getBoundingClientRect();
  return r.left < s.right && s.left < r.right && r.top < s.bottom && s.top < r.bottom;
}"""


def test_uploaded_images_are_ranked_into_a_captioned_gallery_and_a_table(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png"))[:4])
    keep_every_score(page)
    captions = run_and_wait(page, "a red square with a diagonal line")
    assert len(captions) == 4
    assert re.match(r"^#1 · ≈?\d+\.\d\d\ngood\d\.png$", captions[0])
    assert page.get_attribute("#lychee-table [role=grid]", "aria-rowcount") == "5"  # header + 4 images
    assert page.locator("#lychee-table [role=gridcell]", has_text="good0.png").count() == 1
    assert page.locator("#lychee-winner .lychee-winner").count() == 1


def test_the_results_come_into_view_when_a_run_ends(any_page, image_dir):
    page = any_page
    upload(page, sorted(image_dir.glob("good*.png"))[:4])
    keep_every_score(page)
    page.fill("#lychee-query textarea", "a red square")
    screenshot(page, "1-before-run")
    page.click("#lychee-run")
    ranked_captions(page)
    wait_until_results_top_is_in_view(page)
    page.wait_for_timeout(600)  # the smooth scroll settles before the picture
    assert page.locator("#lychee-winner .lychee-winner").is_visible()
    screenshot(page, "2-after-run")


def test_results_survive_a_following_error(any_page, image_dir):
    page = any_page
    upload(page, sorted(image_dir.glob("good*.png"))[:3])
    keep_every_score(page)
    before = run_and_wait(page, "a green square")
    page.fill("#lychee-query textarea", "   ")
    page.click("#lychee-run")
    alert = page.locator("#lychee-alerts .lychee-alert--error")
    alert.wait_for()
    assert "Cannot rerank" in alert.inner_text() and "the query is empty" in alert.inner_text()
    assert page.locator("#lychee-ranked .caption-label").all_inner_texts() == before
    assert page.locator("#lychee-winner .lychee-winner").count() == 1
    assert page.get_attribute("#lychee-table [role=grid]", "aria-rowcount") == "4"
    assert page.get_by_role("button", name="Download JSON").is_visible()
    page.wait_for_timeout(500)
    screenshot(page, "3-error-after-run")


def test_the_lead_of_number_one_is_never_negative(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png")))
    keep_every_score(page)
    page.fill("#lychee-query textarea", "squares")
    page.get_by_text("Advanced").click()
    for tie_epsilon in ("0", "1"):  # no ties at all, then (nearly) everything tied
        page.fill("#lychee-tie-epsilon input[type=number]", tie_epsilon)
        page.press("#lychee-tie-epsilon input[type=number]", "Tab")
        status = page.inner_text("#lychee-status .lychee-status")
        page.click("#lychee-run")  # a new status line (its time differs) means the new result is shown
        page.wait_for_function("old => document.querySelector('#lychee-status .lychee-status').innerText !== old",
                               arg=status)
        lead = page.inner_text("#lychee-winner .lychee-winner__gap")
        assert not re.search(r"-\d", lead)
        assert re.fullmatch(r"\d+\.\d\d ahead of #2|tied with #2 \(≈\)", lead)


def test_a_single_result_shows_its_rank_score_and_name(page, image_dir):
    upload(page, [image_dir / "good3.png"])
    keep_every_score(page)
    run_and_wait(page, "a yellow square")
    label = page.locator("#lychee-ranked .caption-label")
    assert label.is_visible()
    box, thumbnail = label.bounding_box(), page.locator("#lychee-ranked .thumbnail-item").bounding_box()
    assert thumbnail["height"] < 400  # one image does not fill the gallery
    assert box["y"] + box["height"] <= thumbnail["y"] + thumbnail["height"]
    assert re.fullmatch(r"#1 · ≈?\d+\.\d\d\ngood3\.png", label.inner_text())


def test_a_run_shows_one_progress_indicator_counting_images(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png")))
    keep_every_score(page)
    page.fill("#lychee-query textarea", "squares")
    page.evaluate("""() => { window.seen = []; window.sampler = setInterval(() => {
        for (const el of document.querySelectorAll('.progress-text')) {
            const shown = el.offsetParent && getComputedStyle(el.closest('.wrap')).opacity !== '0';
            if (shown) window.seen.push([el.closest('[id]').id, el.innerText]);
        } }, 10); }""")
    page.click("#lychee-run")
    ranked_captions(page)
    seen = page.evaluate("clearInterval(window.sampler), window.seen")
    assert {where for where, _ in seen} <= {"lychee-progress"}
    counted = [shown for _, shown in seen if "images" in shown]  # before that, Gradio's timer alone
    assert all(re.match(r"\d+/6 images", shown) for shown in counted), counted


def test_the_phone_title_is_not_squeezed_by_the_language_switch(browser, demo_url):
    context, page = open_page(browser, demo_url, "phone")
    title = page.locator(".lychee-header h1").bounding_box()
    context.close()
    assert title["width"] > 300 and title["height"] < 100  # two lines at most


def test_enter_in_the_query_box_runs_the_ranking(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png"))[:2])
    keep_every_score(page)
    page.fill("#lychee-query textarea", "two colourful squares")
    page.press("#lychee-query textarea", "Enter")
    assert len(ranked_captions(page)) == 2


def test_the_language_switch_changes_labels_and_gradio_words(page, image_dir):
    upload(page, sorted(image_dir.glob("good*.png"))[:2])
    assert page.inner_text("#lychee-run") == "Rerank" and "Drop Image Here" in page.inner_text("#lychee-reference")
    page.get_by_text("中文", exact=True).click()
    page.wait_for_function("document.querySelector('#lychee-run').innerText === '开始排序'")
    assert "查询描述" in page.inner_text("#lychee-query")
    page.get_by_text("使用 Gradio 构建").wait_for()  # the footer follows Gradio's own locale
    # Gradio's own upload prompt follows too, and the uploads stay.
    page.wait_for_function("/拖放/.test(document.querySelector('#lychee-reference')?.innerText)")  # drawn again
    assert page.locator("#lychee-images .thumbnail-item").count() == 2


def test_a_reference_image_alone_is_a_query_and_is_shown_beside_number_one(any_page, image_dir):
    page = any_page
    reference = Path(__file__).resolve().parent.parent / "examples" / "images" / "coffee.jpg"
    page.set_input_files("#lychee-reference input[type=file]", str(reference))
    page.locator("#lychee-reference img").first.wait_for()
    upload(page, sorted(image_dir.glob("good*.png"))[:3])
    keep_every_score(page)
    assert len(run_and_wait(page, "")) == 3  # no text: the image is the query
    figure = page.locator("#lychee-winner .lychee-winner__reference")
    figure.wait_for()
    assert figure.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert figure.inner_text().strip() == "Reference"
    wait_until_results_top_is_in_view(page)
    page.wait_for_timeout(600)
    screenshot(page, "4-reference-image")


# A second app on the same tiny checkpoint whose scoring is slowed to one image per 0.4 s and
# counted, so a run can be watched (progress, Cancel, a language switch) and a re-rank shown to
# make no model call.
SLOW_SECONDS_PER_IMAGE = 0.4


@pytest.fixture(scope="module")
def slow_app(tiny_checkpoint):
    import time

    from benchmarks.load_test import free_port
    from lychee.web.app import build_demo
    from lychee.web.model_slot import ModelSlot
    from lychee.web.server import launch_options

    slot = ModelSlot(str(tiny_checkpoint), device="cpu", dtype="fp32")
    backend = slot.get().backend
    backend.batch_size = 1
    scored = backend.relevance
    calls: list[int] = []

    def relevance(messages, images, progress=None, query_image=None, texts=None):
        calls.append(len(images))

        def slowly(done: int, total: int) -> None:
            time.sleep(SLOW_SECONDS_PER_IMAGE)
            if progress:
                progress(done, total)
        return scored(messages, images, slowly, query_image, texts)

    backend.relevance = relevance
    demo = build_demo(slot)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(slot.limits))
    yield url.rstrip("/"), calls
    demo.close()


@pytest.fixture(params=list(VIEWPORTS))
def slow_page(request, browser, slow_app):
    context, page = open_page(browser, slow_app[0], request.param)
    page.viewport_name = request.param
    page.model_calls = slow_app[1]
    yield page
    context.close()


def progress_text(page) -> str:
    return page.evaluate("""() => [...document.querySelectorAll('#lychee-progress .progress-text')]
        .filter((el) => getComputedStyle(el.closest('.wrap')).opacity !== '0').map((el) => el.innerText).join(' ')""")


def scores(captions: list[str]) -> list[float]:
    return [float(re.search(r"(\d+\.\d\d)", c).group(1)) for c in captions]


def test_moving_the_threshold_after_a_run_reranks_without_a_model_call(slow_page, image_dir):
    page = slow_page
    upload(page, sorted(image_dir.glob("good*.png")))
    keep_every_score(page)
    before = run_and_wait(page, "squares")
    assert len(before) == 6
    page.locator("#lychee-run").wait_for()
    calls = len(page.model_calls)
    cut = sorted(scores(before))[3]  # three images score at least this
    page.fill("#lychee-threshold input[type=number]", f"{cut:.2f}")
    page.press("#lychee-threshold input[type=number]", "Tab")
    page.wait_for_function("() => document.querySelectorAll('#lychee-ranked .caption-label').length === 3")
    assert len(page.model_calls) == calls  # the stored scores were ranked again: no model call
    assert "no model call" in page.inner_text("#lychee-status")
    assert f"{cut:.2f}".rstrip("0").rstrip(".") in page.inner_text("#lychee-controls")  # the values in force
    screenshot(page, "5-reranked-by-threshold")


def test_progress_advances_and_cancel_takes_the_place_of_rerank_and_stops_the_job(slow_page, image_dir):
    page = slow_page
    upload(page, sorted(image_dir.glob("good*.png")))
    keep_every_score(page)
    page.fill("#lychee-query textarea", "squares")
    calls = len(page.model_calls)
    page.click("#lychee-run")
    page.locator("#lychee-cancel").wait_for()
    assert not page.locator("#lychee-run").is_visible()  # no second run while this one is under way
    page.wait_for_function(r"""() => /\b[1-4]\/6 images/.test(document.querySelector('#lychee-progress').innerText)""")
    assert "Scoring" in page.inner_text("#lychee-progress")  # moving, well before the end
    # Stage, bar and count each on their own line, in the page's font.
    assert not page.evaluate(OVERLAPS_JS, ["#lychee-progress .progress-text", "#lychee-progress .progress-bar-wrap"])
    assert not page.evaluate(OVERLAPS_JS, ["#lychee-progress .progress-text", "#lychee-progress .progress-level-inner"])
    assert "mono" not in page.evaluate(
        "getComputedStyle(document.querySelector('#lychee-progress .progress-level-inner')).fontFamily").lower()
    screenshot(page, "6-progress")
    page.click("#lychee-cancel")
    page.locator("#lychee-alerts .lychee-alert--cancelled").wait_for()
    page.locator("#lychee-run").wait_for()
    page.wait_for_timeout(int(3 * SLOW_SECONDS_PER_IMAGE * 1000))
    stopped = len(page.model_calls)
    page.wait_for_timeout(int(3 * SLOW_SECONDS_PER_IMAGE * 1000))
    assert len(page.model_calls) == stopped < calls + 6  # the job stopped, short of the sixth image
    assert page.locator("#lychee-ranked .caption-label").count() == 0  # nothing half-done was shown
    screenshot(page, "7-cancelled")


ALLOWED_LATIN = {"good0", "good1", "good2", "good3", "good4", "good5", "png", "cpu", "fp32", "token", "top_k",
                 "score_threshold", "JSON", "CSV", "tiny", "qwen2", "vl", "transformers", "sdpa", "p", "yes", "no",
                 "min", "max", "corrupt", "jpg", "JPEG"}


def test_a_zh_switch_in_the_middle_of_a_run_leaves_every_visible_string_chinese(slow_page, image_dir):
    page = slow_page
    upload(page, [*sorted(image_dir.glob("good*.png")), image_dir / "corrupt.jpg"])  # one image fails
    keep_every_score(page)
    page.fill("#lychee-query textarea", "squares")
    page.click("#lychee-run")
    page.wait_for_function("() => /\\d\\/7/.test(document.querySelector('#lychee-progress').innerText)")
    page.get_by_text("中文", exact=True).click()
    page.wait_for_function("() => /正在/.test(document.querySelector('#lychee-progress').innerText)")
    page.locator("#lychee-ranked .caption-label").first.wait_for(timeout=TIMEOUT_MS)
    page.locator("#lychee-run").wait_for()
    page.wait_for_timeout(300)
    shown = page.inner_text("#lychee-results") + page.inner_text("#lychee-query-row")
    latin = set(re.findall(r"[A-Za-z][A-Za-z0-9_]*", shown)) - ALLOWED_LATIN
    assert "张图片" in shown and "名次" in shown and "被过滤的图片" in shown
    assert "失败:不是可读取的图片(JPEG 文件不完整)" in shown  # the failed image's row, in Chinese too
    assert not {w for w in latin if not re.fullmatch(r"tiny-qwen2\.5-vl\w*|[a-z]\w*\d\w*", w)}, latin
    screenshot(page, "8-zh-after-switch")


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_nothing_is_clipped_or_covered(browser, demo_url, image_dir, tmp_path, viewport):
    context, page = open_page(browser, demo_url, viewport)
    page.viewport_name = viewport
    # The query's placeholder fits in the empty box.
    assert page.evaluate("""() => { const box = document.querySelector('#lychee-query textarea');
        box.value = box.placeholder; const fits = box.scrollHeight <= box.clientHeight + 1; box.value = '';
        return fits; }""")
    long_name = tmp_path / "a_long_name_of_the_photographer_and_place.png"
    long_name.write_bytes((image_dir / "good0.png").read_bytes())
    upload(page, [long_name, *sorted(image_dir.glob("good*.png"))[1:4]])
    # The candidate gallery's toolbar (shown once it holds images) leaves its label readable.
    assert not page.evaluate(OVERLAPS_JS, ["#lychee-images [data-testid=block-label]",
                                           "#lychee-images .icon-button-wrapper"])
    keep_every_score(page)
    run_and_wait(page, "a red square")
    page.locator("#lychee-table .virtual-row").first.wait_for()
    clipped = page.evaluate("""() => [...document.querySelectorAll(
        '#lychee-table th span, #lychee-table .body-cell .cell-wrap, #lychee-table .body-cell span, #lychee-run')]
        .filter((el) => el.scrollWidth > el.clientWidth + 1).map((el) => el.outerHTML.slice(0, 80))""")
    # A long name wraps between its parts, never inside a word ("photographe" / "r.png"): the
    # character before each line break the browser made.
    broken_after = page.evaluate("""() => {
      const cell = [...document.querySelectorAll('#lychee-table .virtual-row .body-cell:nth-child(3)')]
        .find((c) => c.innerText.includes('photographer'));
      const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      let top = null, last = '';
      const breaks = [];
      while (walker.nextNode()) {
        const node = walker.currentNode;
        for (let i = 0; i < node.length; i++) {
          const range = document.createRange();
          range.setStart(node, i); range.setEnd(node, i + 1);
          const rect = range.getClientRects()[0];
          if (!rect) continue;
          if (top !== null && rect.top > top + 2) breaks.push(last);
          top = rect.top; last = node.data[i];
        }
      }
      return breaks;
    }""")
    page.locator("#lychee-table").scroll_into_view_if_needed()
    screenshot(page, "9-table")
    context.close()
    assert clipped == []
    assert set(broken_after) <= {"_"}, broken_after
    assert broken_after or viewport == "desktop"  # on a phone the name does not fit on one line


def test_captions_from_the_file_names_are_scored_with_their_images(any_page, image_dir, tiny_checkpoint):
    from lychee import LycheeReranker

    page = any_page
    paths = sorted(image_dir.glob("good*.png"))[:2]
    upload(page, paths)
    keep_every_score(page)
    page.get_by_text("Captions (optional, e.g. product titles)").click()
    page.get_by_role("button", name="Use the file names").click()
    page.wait_for_function("() => document.querySelector('#lychee-captions textarea').value === 'good0\\ngood1'")
    run_and_wait(page, "a red square")
    expected = LycheeReranker(str(tiny_checkpoint), device="cpu", dtype="fp32").score(
        "a red square", paths, texts=["good0", "good1"])
    cells = page.locator("#lychee-table [role=gridcell]").all_inner_texts()
    assert all(f"{r.raw_score:.2f}" in cells for r in expected)
    wait_until_results_top_is_in_view(page)
    page.wait_for_timeout(600)
    screenshot(page, "5-captions")


# --- Why this score? ------------------------------------------------------------------------------

PHOTOS = [EXAMPLES / name for name in ("cat.jpg", "coffee.jpg", "rocket.jpg")]

def map_lines(page) -> list[str]:
    page.locator("#lychee-explain-text li").first.wait_for(timeout=MAP_TIMEOUT_MS)
    return page.locator("#lychee-explain-text li").all_inner_texts()


def test_why_this_score_shows_number_one_beside_its_map_with_a_line_per_strongest_region(any_page):
    page = any_page
    upload(page, PHOTOS)
    keep_every_score(page)
    captions = run_and_wait(page, "a cat's face, close up")
    button = page.locator("#lychee-explain-button")
    first = captions[0].split("\n")[1]
    page.wait_for_function("text => document.querySelector('#lychee-explain-button').innerText.trim() === text",
                           arg=f"Why this score? · #1 {first}")
    assert not page.locator("#lychee-explain-slider").is_visible()  # nothing is scored before it is asked
    button.click()
    lines = map_lines(page)
    assert 1 <= len(lines) <= 3
    assert all(re.fullmatch(r"covering the [a-z-]+ area \(row \d, column \d\) (lowers|raises) the score by [\d.e-]+",
                            line) for line in lines)
    assert page.locator("#lychee-explain-text strong").inner_text().startswith(f"{first}: score ")
    assert page.locator("#lychee-explain-slider img").count() == 2  # the image as scored, and its map
    page.evaluate("document.getElementById('lychee-explain').scrollIntoView()")  # the map and its lines in view
    page.wait_for_timeout(400)
    screenshot(page, "5-why-this-score")


def test_an_image_chosen_in_the_ranked_gallery_is_the_one_explained(page):
    upload(page, PHOTOS)
    keep_every_score(page)
    captions = run_and_wait(page, "a rocket")
    page.locator("#lychee-ranked .thumbnail-item").nth(2).click()
    third = captions[2].split("\n")[1]
    page.wait_for_function("name => document.querySelector('#lychee-explain-button').innerText.endsWith(name)",
                           arg=f"#3 {third}")
    page.keyboard.press("Escape")  # close the gallery's preview
    page.click("#lychee-explain-button")
    map_lines(page)
    assert page.locator("#lychee-explain-text strong").inner_text().startswith(f"{third}: score ")


def test_the_map_speaks_chinese_after_the_language_switch(page):
    upload(page, PHOTOS[:2])
    keep_every_score(page)
    run_and_wait(page, "a cup of coffee")
    page.click("#lychee-explain-button")
    map_lines(page)
    page.get_by_text("中文", exact=True).click()
    page.wait_for_function("document.querySelector('#lychee-explain-button').innerText.startsWith('为什么是这个分数')")
    lines = page.locator("#lychee-explain-text li").all_inner_texts()
    assert lines and all(line.startswith("遮住") and "分数" in line for line in lines)
    page.evaluate("document.getElementById('lychee-explain').scrollIntoView()")
    page.wait_for_timeout(400)
    page.viewport_name = "desktop"
    screenshot(page, "6-why-this-score-zh")


def test_the_precise_preset_shows_number_one_s_map_unasked(page):
    upload(page, PHOTOS)
    page.locator("#lychee-controls input[role=listbox], #lychee-controls .wrap input").first.click()
    page.get_by_role("option", name="Precise pick").click()
    keep_every_score(page)  # the tiny model's random scores may sit below the preset's 8.0
    page.fill("#lychee-query textarea", "a rocket on its launch pad")
    page.click("#lychee-run")
    ranked_captions(page)
    assert len(map_lines(page)) >= 1  # no click: the run itself made #1's map
    assert page.locator("#lychee-explain-slider img").count() == 2
