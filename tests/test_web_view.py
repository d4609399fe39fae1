"""What a result looks like in the web demo: captions, table rows, the #1 card, status line
and query hints, checked without a browser."""

from __future__ import annotations

from datetime import datetime

from hypothesis import example, given
from hypothesis import strategies as st

from lychee.messages import Message, Notice, UserError
from lychee.ranking import RerankResult, ScoredImage
from lychee.report import Report
from lychee.request import Query, Request
from lychee.settings import Settings, get_preset
from lychee.web.service import Job, RerankOutcome
from lychee.web.view import (
    alerts_html,
    breakable_name,
    caption,
    download_stem,
    filtered_gallery,
    hints_markdown,
    lead_text,
    preset_description,
    ranked_gallery,
    raw_output_rows,
    short_name,
    status_line,
    table_note,
    table_rows,
    winner_card,
)

MODEL = {"model": "tiny", "device": "cpu", "dtype": "fp32", "attention": "sdpa", "mode": "logit",
         "visual_tokens": "4-1280"}


def result(rank: int, index: int, score: float, *, tied: bool = False, error: str | Message | None = None,
           raw_score: float | None = None) -> RerankResult:
    raw = score if raw_score is None else raw_score
    failure = error if isinstance(error, Message) else None
    return RerankResult(rank, index, f"img{index}.png", score, raw, tied, "" if error else "p(yes)=0.5",
                        None if error is None else str(error), failure)


def outcome(results, filtered_out=(), errors=(), *, image_paths: list[str] | None = None, preset: str | None = None,
            **settings) -> RerankOutcome:
    paths = image_paths or [f"/uploads/img{i}.png" for i in range(6)]
    request = Request(Query("cat", None), Settings(get_preset(preset), **settings))
    report = Report("cat", request.settings, None, MODEL, list(results), list(filtered_out), list(errors),
                    elapsed_s=0.5)
    return RerankOutcome(Job(request, tuple(paths)), (), report)


def test_a_caption_shows_rank_and_score_above_the_name():
    assert caption(result(1, 0, 9.3)) == "#1 · 9.30\nimg0.png"


def test_a_tied_caption_marks_the_score_with_approximately():
    assert caption(result(2, 3, 9.281, tied=True)) == "#2 · ≈9.28\nimg3.png"


def test_a_long_name_loses_its_middle_and_keeps_its_extension():
    assert short_name("a_very_long_name_12345.jpg") == "a_very_lo…12345.jpg"
    assert short_name("cat.jpg") == "cat.jpg"
    assert len(short_name("x" * 50 + ".jpeg")) == 19


def test_the_ranked_gallery_pairs_each_upload_with_its_caption():
    shown = ranked_gallery(outcome([result(1, 2, 8.0), result(2, 0, 6.0)]))
    assert shown == [("/uploads/img2.png", "#1 · 8.00\nimg2.png"), ("/uploads/img0.png", "#2 · 6.00\nimg0.png")]


def test_filtered_images_say_why_they_were_left_out():
    done = outcome([result(1, 0, 9.0)], [result(2, 1, 8.0), result(3, 2, 3.0)], score_threshold=5.0, top_k=1)
    assert [c for _, c in filtered_gallery(done, "en")] == [
        "#2 · 8.00\nimg1.png\nbeyond top_k=1", "#3 · 3.00\nimg2.png\nbelow 5"]
    assert filtered_gallery(done, "zh")[1][1].endswith("\n低于门槛 5")


def test_table_rows_list_results_then_failures_with_their_message_in_the_pages_language(image_dir):
    paths = [str(image_dir / "good0.png"), str(image_dir / "good1.png"), str(image_dir / "empty.jpg")]
    done = outcome([result(1, 0, 9.0, tied=True), result(2, 1, 8.98, tied=True)],
                   errors=[result(3, 2, 0.0, error=Message("image_empty_file"))], image_paths=paths)
    rows = table_rows(done, "en")
    assert [row[:1] + row[2:] for row in rows] == [
        ["1", "img0.png", "≈9.00", "≈ tied"],
        ["2", "img1.png", "≈8.98", "≈ tied"],
        ["3", "img2.png", "0.00", "⚠ failed: empty file (0 bytes)"],
    ]
    assert table_rows(done, "zh")[2][4] == "⚠ 失败:空文件(0 字节)"
    # A small thumbnail per row, as scored; none for the image that could not be read.
    assert all(row[1].startswith('<img class="lychee-row-thumbnail" src="data:image/jpeg;base64,') for row in rows[:2])
    assert rows[2][1] == ""


def test_a_name_wraps_after_its_separators_and_is_escaped():
    assert breakable_name("red_trail-shoe/<b>.jpg") == "red_<wbr>trail-<wbr>shoe/<wbr>&lt;b&gt;.jpg"


def test_the_score_cell_shows_the_models_own_score_under_a_normalised_one():
    normalised = outcome([result(1, 0, 10.0, raw_score=6.123)], normalize=True)
    assert table_rows(normalised, "en")[0][3] == "10.00<br><small>6.12</small>"
    assert table_rows(outcome([result(1, 0, 6.123)]), "en")[0][3] == "6.12"


def test_the_table_note_says_where_the_ranks_it_skips_are():
    done = outcome([result(1, 0, 9.0)], [result(2, 1, 4.0), result(3, 3, 3.0)], [result(4, 2, 0.0, error="bad")],
                   score_threshold=5.0)
    assert [row[0] for row in table_rows(done, "en")] == ["1", "4"]
    assert table_note(done, "en") == "Ranks 2–3 are under “Filtered out (2)” below; images that failed rank last."
    assert table_note(done, "zh").startswith("第 2–3 名在下方“被过滤的图片(2)”中")
    assert table_note(outcome([result(1, 0, 9.0)], [], [result(2, 2, 0.0, error="bad")]), "en") == ""


def test_a_fixed_length_preset_fills_the_table_with_empty_slots():
    rows = table_rows(outcome([result(1, 0, 9.0)], preset="pipeline", top_k=3), "en")
    assert [row[0] for row in rows] == ["1", "—", "—"]  # three rows; the empty ones rank nothing
    assert rows[1][4].startswith("— empty slot") and rows[1][1] == ""


def test_raw_output_covers_every_image_in_rank_order():
    done = outcome([result(1, 0, 9.0)], [result(2, 1, 2.0)], [result(3, 2, 0.0, error=Message("image_empty_file"))])
    assert raw_output_rows(done, "en") == [["1", "img0.png", "p(yes)=0.5"], ["2", "img1.png", "p(yes)=0.5"],
                                           ["3", "img2.png", "empty file (0 bytes)"]]
    assert raw_output_rows(done, "zh")[2][2] == "空文件(0 字节)"


def test_the_status_line_has_counts_time_throughput_device_and_dtype():
    line = status_line(outcome([result(1, 0, 9.0)], [result(2, 1, 2.0)], image_paths=["a", "b"]), "en")
    assert line == ("2 images · 1 ranked · 1 filtered out · 0 failed — 0.50 s · 4.0 images/s · cpu · fp32 · "
                    "4-1280 visual tokens per image")


def test_the_status_line_says_one_image_in_the_singular():
    assert status_line(outcome([result(1, 0, 9.0)], image_paths=["a"]), "en").startswith("1 image · 1 ranked")


def test_the_winner_card_border_follows_winner_strength(image_dir):
    paths = [str(image_dir / "good0.png"), str(image_dir / "good1.png")]
    dominant = winner_card(outcome([result(1, 0, 9.0)], [result(2, 1, 4.0)], image_paths=paths), "en")
    assert 'class="lychee-winner lychee-winner--dominant"' in dominant and "data:image/jpeg;base64," in dominant
    assert "5.00 ahead of #2" in dominant
    close = winner_card(outcome([result(1, 0, 9.0, tied=True), result(2, 1, 8.97, tied=True)], image_paths=paths),
                        "zh")
    assert "lychee-winner--close" in close and "难分高下" in close


def test_a_tied_number_one_that_scores_below_number_two_is_tied_not_behind():
    # Inside a tie group input order decides, so #1 may score a little lower than #2.
    card = winner_card(outcome([result(1, 0, 8.96, tied=True), result(2, 1, 9.0, tied=True)]), "en")
    assert "tied with #2 (≈)" in card and "-0.04" not in card


def ranked_outcome(scores, tie_epsilon, top_k=None) -> RerankOutcome:
    request = Request(Query("cat", None), Settings(top_k=top_k, tie_epsilon=tie_epsilon))
    records = tuple(ScoredImage(i, f"img{i}.png", s, "") for i, s in enumerate(scores))
    job = Job(request, tuple(f"/uploads/img{i}.png" for i in range(len(scores))))
    return RerankOutcome(job, records, Report.build(request, records, model=MODEL))


@given(st.lists(st.integers(0, 1000).map(lambda n: n / 100), min_size=2, max_size=12),
       st.floats(0.0, 1.0), st.none() | st.integers(1, 3))
@example([9.0, 9.5, 10.0], 0.6, None)   # a chain: 9.0 is within 0.6 of 9.5, not of 10.0
def test_property_the_card_says_tied_with_2_only_within_epsilon_of_the_best_other(scores, eps, top_k):
    done = ranked_outcome(scores, eps, top_k)
    report = done.report
    first, best_other = report.results[0].score, max(r.score for r in report.results[1:] + report.filtered_out)
    if lead_text(done, "en") == "tied with #2 (≈)":
        assert abs(first - best_other) < eps
    else:                                   # an untied #1 is the best score, epsilon or more ahead
        assert first - best_other >= eps


def test_a_weak_winner_says_no_image_matches_well_whatever_its_lead():
    card = winner_card(outcome([result(1, 0, 2.64)], [result(2, 1, 1.5)]), "en")
    assert "lychee-winner--weak" in card and "dominant" not in card
    assert "No image matches well" in card and "below 5/10" in card and "1.14 ahead of #2" in card


def test_a_normalised_winner_is_weak_when_the_model_score_is_low():
    card = winner_card(outcome([result(1, 0, 10.0, raw_score=3.0)], [result(2, 1, 0.0, raw_score=1.0)]), "en")
    assert "lychee-winner--weak" in card


def test_a_lone_winner_shows_no_lead():
    card = winner_card(outcome([result(1, 0, 9.0)]), "en")
    assert "lychee-winner--alone" in card and "ahead" not in card and "tied" not in card


def test_downloads_are_named_after_the_query_and_the_time():
    when = datetime(2026, 11, 25, 21, 30, 5)
    assert download_stem("a black cat / red sofa?", when) == "rerank-a-black-cat-red-sofa-20261125-213005"
    assert download_stem("一只黑猫", when) == "rerank-一只黑猫-20261125-213005"
    assert download_stem("???", when) == "rerank-query-20261125-213005"


def test_the_winner_card_escapes_file_names(image_dir):
    named = RerankResult(1, 0, "<b>x</b>.png", 9.0, 9.0, False, "", None)
    card = winner_card(outcome([named], image_paths=[str(image_dir / "good0.png")]), "en")
    assert "<b>" not in card and "&lt;b&gt;x&lt;/b&gt;.png" in card


def test_without_results_the_card_says_how_to_get_some():
    card = winner_card(outcome([], [result(1, 0, 3.0)], score_threshold=5.0), "en")
    assert "lychee-winner--empty" in card and "threshold of 5" in card


def test_hints_are_empty_for_a_concrete_query():
    assert hints_markdown("a black cat on a red sofa", "en") == ""


def test_hints_name_the_vague_words_and_suggest_visual_cues():
    advice = hints_markdown("非常好看、很有科技感的照片", "zh")
    assert "「好看、科技感」" in advice and "「非常、很」" in advice and "颜色" in advice
    assert "colour" in hints_markdown("a very nice cat", "en")


def test_the_preset_description_shows_the_values_in_force_and_the_presets_own_once_moved():
    assert "`In force: score_threshold=8 · top_k=1`" in preset_description("precise", 8.0, 1, "en")
    moved = preset_description("precise", 6.5, 0, "en")
    assert "`In force: score_threshold=6.5 · top_k=all (the preset's: 8 · 1)`" in moved
    assert "当前:score_threshold=6.5 · top_k=全部" in preset_description("precise", 6.5, 0, "zh")


def test_alerts_are_titled_by_kind_in_the_page_language():
    alerts = (("error", UserError("empty_query")),)
    assert "Cannot rerank" in alerts_html(alerts, "en") and 'role="alert"' in alerts_html(alerts, "en")
    notice = alerts_html((("notice", Notice("query_truncated", {"length": 1200, "limit": 1000})),), "zh")
    assert "输入已调整" in notice and "1200" in notice and "lychee-alert--notice" in notice
    assert alerts_html((), "en") == ""


def test_an_animated_image_is_shown_at_the_frame_that_was_scored(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (40, 40), color) for color in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    gif = tmp_path / "blink.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    still = tmp_path / "still.png"
    frames[1].save(still)
    shown = ranked_gallery(outcome([result(1, 0, 9.0), result(2, 1, 8.0)], image_paths=[str(gif), str(still)]))
    first, second = shown[0][0], shown[1][0]
    assert isinstance(first, Image.Image) and first.getpixel((20, 20))[0] > 200  # the first frame: red
    assert second == str(still)  # an image that does not move is shown as it is
