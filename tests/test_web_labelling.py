"""The Calibrate panel's logic without a browser: labelling by clicks, labels pooled across runs,
the summary in both languages, the plots' data and the threshold the button applies."""

from __future__ import annotations

import pytest

from lychee.calibration import calibrate
from lychee.ranking import ScoredImage
from lychee.report import Report
from lychee.request import Query, Request
from lychee.settings import Settings
from lychee.web.labelling import (
    applied_threshold,
    calibration_of,
    curve_points,
    cycle_label,
    distribution_bins,
    distribution_rows,
    label_gallery,
    my_threshold_label,
    rescored,
    saved_threshold,
    summary_markdown,
    to_save,
)
from lychee.web.service import Job, RerankOutcome

MODEL = {"model": "tiny", "device": "cpu", "dtype": "fp32", "attention": "sdpa", "mode": "logit",
         "visual_tokens": "4-1280"}


def run(query: str, scores: list[float], *, threshold: float | None = None, broken: int | None = None,
        names: list[str] | None = None) -> RerankOutcome:
    names = names or [f"img{i}.png" for i in range(len(scores))]
    request = Request(Query(query, None), Settings(score_threshold=threshold))
    records = tuple(ScoredImage(i, name, s, "", "broken" if i == broken else None)
                    for i, (name, s) in enumerate(zip(names, scores)))
    job = Job(request, tuple(f"/uploads/{name}" for name in names))
    return RerankOutcome(job, records, Report.build(request, records, model=MODEL))


def click(labels, outcome, *positions):
    for position in positions:
        labels = cycle_label(labels, outcome, position)
    return labels


def test_clicks_cycle_an_image_through_relevant_not_relevant_and_unlabelled():
    cats = run("a cat", [9.0, 4.0, 7.0])       # rank order: 9.0 (img0), 7.0 (img2), 4.0 (img1)
    once = click((), cats, 1)
    assert [(label.source, label.score, label.relevant) for label in once] == [("img2.png", 7.0, True)]
    assert [label.relevant for label in click(once, cats, 1)] == [False]
    assert click(once, cats, 1, 1) == ()


def test_the_label_gallery_lists_every_scored_image_in_rank_order_with_its_label():
    cats = run("a cat", [9.0, 4.0, 7.0, 0.0], threshold=5.0, broken=3)  # 4.0 is filtered out; img3 failed
    labels = click((), cats, 0, 2, 2)
    assert label_gallery(labels, cats, "en") == [
        ("/uploads/img0.png", "✓ relevant · 9.00\nimg0.png"),
        ("/uploads/img2.png", "click to label · 7.00\nimg2.png"),
        ("/uploads/img1.png", "✗ not relevant · 4.00\nimg1.png")]
    assert label_gallery(labels, cats, "zh")[0][1] == "✓ 相关 · 9.00\nimg0.png"
    assert label_gallery(labels, None, "en") == []


def test_labels_from_several_queries_add_up_and_one_image_can_be_labelled_per_query():
    cats, rockets = run("a cat", [9.0, 4.0]), run("a rocket", [3.0, 8.0])   # the same two images
    labels = click(click((), cats, 0, 1, 1), rockets, 0, 1, 1)
    result = calibration_of(labels, 0.9)
    assert (result.labels, result.relevant, result.queries) == (4, 2, 2)
    assert result.threshold == 8.0   # 9.0 and 8.0 relevant, 4.0 and 3.0 not: pooled, 8.0 keeps both
    assert label_gallery(labels, rockets, "en")[0][1].startswith("✓ relevant · 8.00")


def test_a_run_again_brings_its_new_scores_to_its_labels():
    labels = click((), run("a cat", [9.0, 4.0]), 0)
    again = run("a cat", [5.5, 4.0])
    assert [label.score for label in rescored(labels, again)] == [5.5]
    assert rescored(labels, run("a dog", [1.0, 1.0])) == labels


def test_the_summary_says_what_it_rests_on_and_recommends_a_threshold():
    cats = run("a cat", [9.0, 8.0, 7.0, 3.0])
    result = calibration_of(click((), cats, 0, 1, 2, 3, 3), 0.9)
    assert summary_markdown(result, "en").split("\n\n") == [
        "Based on 4 labels from 1 query: 3 relevant, 1 not relevant.",
        "**Recommended threshold: 7.00**: precision 100% (95% interval 44%–100%), recall 100% "
        "(3 of 3 relevant images kept).",
        "⚠ too few labels to trust these figures: 3 relevant and 1 irrelevant (at least 10 of each are needed)"]
    assert summary_markdown(result, "zh").startswith(
        "依据 1 次查询 的 4 个标注:3 个相关,1 个不相关。\n\n**建议门槛:7.00**")


def test_the_summary_says_when_no_threshold_reaches_the_target():
    cats = run("a cat", [9.0, 8.0])
    result = calibration_of(click((), cats, 0, 0, 1), 0.9)    # the best is not relevant
    summary = summary_markdown(result, "en")
    assert "**No threshold reaches a precision of 90% on these labels.**" in summary
    assert "no clean separation" in summary
    assert summary_markdown(None, "en").startswith("Run a ranking, then click")
    assert applied_threshold(result) is None and to_save(result) is None


def test_the_curve_runs_from_the_highest_threshold_down_and_the_histogram_has_a_row_per_label():
    cats = run("a cat", [9.0, 8.0, 3.0])
    labels = click((), cats, 0, 1, 1, 2)
    result = calibration_of(labels, 0.9)
    assert curve_points(result) == [{"recall": 0.5, "precision": 1.0, "threshold": 9.0},
                                    {"recall": 0.5, "precision": 0.5, "threshold": 8.0},
                                    {"recall": 1.0, "precision": 2 / 3, "threshold": 3.0}]
    rows = distribution_rows(labels, "en")
    assert rows[:3] == [{"score": "9.0", "label": "relevant", "images": 1},
                        {"score": "8.0", "label": "not relevant", "images": 1},
                        {"score": "3.0", "label": "relevant", "images": 1}]
    assert distribution_bins(labels) == [f"{b / 2:.1f}" for b in range(6, 19)]   # 3.0 to 9.0: gaps show
    assert {row["score"] for row in rows[3:]} == set(distribution_bins(labels)) - {"3.0", "8.0", "9.0"}
    assert all(row["images"] == 0 for row in rows[3:]) and distribution_bins(()) == []
    only_irrelevant = calibration_of(click((), cats, 0, 0), 0.9)
    assert curve_points(only_irrelevant) == [] and curve_points(None) == []


@pytest.mark.parametrize(("scores", "labels", "applied"), [
    ([7.4267, 3.0], [True, False], 7.42),      # rounded down: still keeps the same labelled images
    ([7.4267, 7.423, 3.0], [True, False, False], 7.4267),   # 7.42 would take in 7.423: exact
    ([7.0, 3.0], [True, False], 7.0),
])
def test_the_applied_threshold_fits_the_slider_when_that_keeps_the_same_labelled_images(scores, labels, applied):
    result = calibrate(scores, labels)
    assert applied_threshold(result) == applied
    assert to_save(result) == {"threshold": applied, "precision": 1.0}


@pytest.mark.parametrize("stored", [None, "7", {"threshold": "7"}, {"threshold": 11.0, "precision": 1.0},
                                    {"threshold": 7.0, "precision": 1.5}, {"threshold": True, "precision": 1.0},
                                    [7.0, 1.0]])
def test_a_stored_threshold_that_is_not_one_is_ignored(stored):
    assert saved_threshold(stored) is None and my_threshold_label(stored, "en") == ""


def test_my_threshold_is_named_with_its_precision_in_both_languages():
    stored = {"threshold": 7.42, "precision": 0.875}
    assert my_threshold_label(stored, "en") == "My threshold 7.42 (precision 88%)"
    assert my_threshold_label(stored, "zh") == "我的门槛 7.42(精确率 88%)"
