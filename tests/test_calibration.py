"""Threshold calibration (lychee.calibration) against hand-computed cases, then properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lychee.calibration import calibrate, wilson_interval
from lychee.messages import UserError

T, F = True, False


def codes(result) -> list[str]:
    return [n.key for n in result.warnings]


def table(result) -> list[tuple]:
    return [(p.threshold, p.kept, p.relevant_kept, p.precision, p.recall) for p in result.points]


def test_the_wilson_interval_matches_published_values():
    # 9/10 and 3/3 at 95 %: (0.5958, 0.9821) and (0.4385, 1); no trials: the whole range.
    assert wilson_interval(9, 10) == pytest.approx((0.5958, 0.9821), abs=1e-4)
    assert wilson_interval(3, 3) == pytest.approx((0.4385, 1.0), abs=1e-4)
    assert wilson_interval(0, 4) == pytest.approx((0.0, 0.4899), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_perfect_separation_recommends_the_lowest_relevant_score_with_full_recall():
    result = calibrate([9, 8, 7, 3, 2, 1], [T, T, T, F, F, F])
    assert table(result) == [(1, 6, 3, 0.5, 1.0), (2, 5, 3, 0.6, 1.0), (3, 4, 3, 0.75, 1.0),
                             (7, 3, 3, 1.0, 1.0), (8, 2, 2, 1.0, 2 / 3), (9, 1, 1, 1.0, 1 / 3)]
    assert result.threshold == 7 and result.recommended.recall == 1.0 and result.recommended.f1 == 1.0
    assert result.recommended.precision_interval == pytest.approx((0.4385, 1.0), abs=1e-4)
    assert result.best_f1.threshold == 7 and result.average_precision == 1.0
    assert result.separable
    assert codes(result) == ["calibration_too_few"]


def test_no_separation_reaches_no_target_and_says_so():
    result = calibrate([9, 8, 7, 6], [F, T, F, T])
    assert table(result) == [(6, 4, 2, 0.5, 1.0), (7, 3, 1, 1 / 3, 0.5), (8, 2, 1, 0.5, 0.5), (9, 1, 0, 0.0, 0.0)]
    assert result.threshold is None and result.recommended is None and not result.separable
    assert result.average_precision == pytest.approx(0.5)     # 0.5 x 0.5 at 8, then 0.5 x 0.5 at 6
    assert result.best_f1.threshold == 6 and result.best_f1.f1 == pytest.approx(2 / 3)
    assert codes(result) == ["calibration_too_few", "calibration_unreachable"]
    assert result.warnings[1].text("en") == "no clean separation: no threshold reaches a precision of 90%"


def test_a_target_reached_only_at_low_recall_is_no_clean_separation():
    result = calibrate([9, 8, 7, 6, 5], [T, F, T, T, F])
    assert result.threshold == 9 and result.recommended.recall == pytest.approx(1 / 3)
    assert not result.separable
    assert result.warnings[-1].text("en") == ("no clean separation: a precision of 90% needs a threshold of 9.00, "
                                              "where recall is only 33%")


def test_a_target_that_cannot_be_reached_gives_no_threshold_but_a_lower_one_can():
    scores, labels = [9, 8, 7, 1], [F, T, T, F]   # precision 0, 2/3, 2/3, 1/2 from the top down
    assert calibrate(scores, labels, target_precision=0.8).threshold is None
    reachable = calibrate(scores, labels, target_precision=0.6)
    assert reachable.threshold == 7 and reachable.recommended.recall == 1.0 and reachable.separable


def test_only_relevant_labels_reach_any_target_but_separate_nothing():
    result = calibrate([7.0, 5.0], [T, T], target_precision=1.0)
    assert result.threshold == 5.0 and result.recommended.precision == 1.0 and result.average_precision == 1.0
    assert not result.separable and codes(result) == ["calibration_only_relevant"]


def test_only_irrelevant_labels_have_no_recall_no_f1_and_no_threshold():
    result = calibrate([7.0, 5.0], [F, F])
    assert [(p.precision, p.recall, p.f1) for p in result.points] == [(0.0, None, None), (0.0, None, None)]
    assert result.threshold is None and result.best_f1 is None and result.average_precision is None
    assert not result.separable and codes(result) == ["calibration_only_irrelevant"]
    assert result.warnings[0].text("zh").startswith("2 个标注全是不相关")


def test_duplicate_scores_form_one_threshold_that_keeps_them_all():
    result = calibrate([8, 8, 8, 5], [T, T, F, F], target_precision=0.6)
    assert table(result) == [(5, 4, 2, 0.5, 1.0), (8, 3, 2, 2 / 3, 1.0)]
    assert result.threshold == 8
    assert calibrate([8, 8, 8, 5], [T, T, F, F], target_precision=0.7).threshold is None


def test_several_queries_pooled_give_one_threshold_that_holds_for_each():
    # Query a separates anywhere in (4, 9], query b in (2, 6]: pooled, 6 keeps every relevant image.
    result = calibrate([9, 4, 6, 2], [T, F, T, F], queries=["a", "a", "b", "b"])
    assert table(result) == [(2, 4, 2, 0.5, 1.0), (4, 3, 2, 2 / 3, 1.0), (6, 2, 2, 1.0, 1.0), (9, 1, 1, 1.0, 0.5)]
    assert result.threshold == 6 and result.queries == 2 and result.labels == 4


def test_too_few_labels_warns_below_ten_of_either_class():
    ten_each = calibrate([9.0] * 10 + [1.0] * 10, [T] * 10 + [F] * 10)
    assert codes(ten_each) == [] and ten_each.separable
    nine = calibrate([9.0] * 10 + [1.0] * 9, [T] * 10 + [F] * 9)
    assert codes(nine) == ["calibration_too_few"]
    assert nine.warnings[0].text("en") == ("too few labels to trust these figures: 10 relevant and 9 irrelevant "
                                           "(at least 10 of each are needed)")


def test_any_threshold_keeps_what_the_next_labelled_score_keeps():
    result = calibrate([9, 8, 7, 3, 2, 1], [T, T, T, F, F, F])
    assert (result.at(7.5).threshold, result.at(7.5).kept, result.at(7.5).precision) == (7.5, 2, 1.0)
    assert result.at(0.0).kept == 6
    empty = result.at(9.5)
    assert (empty.kept, empty.precision, empty.recall, empty.precision_interval) == (0, None, 0.0, (0.0, 1.0))


def test_the_json_form_has_a_schema_version_and_every_figure():
    data = json.loads(json.dumps(calibrate([9, 4, 6, 2], [T, F, T, F], queries=["a", "a", "b", "b"]).to_dict()))
    assert data["schema_version"] == 1 and data["target_precision"] == 0.9
    assert data["threshold"] == 6 and data["separable"] is True and data["average_precision"] == 1.0
    assert data["counts"] == {"labels": 4, "relevant": 2, "irrelevant": 2, "queries": 2}
    assert data["recommended"] == data["points"][2] == data["best_f1"]
    assert set(data["recommended"]) == {"threshold", "kept", "relevant_kept", "precision", "precision_interval",
                                        "recall", "f1"}
    assert [w["code"] for w in data["warnings"]] == ["calibration_too_few"]
    assert " / 标注太少" in data["warnings"][0]["message"]


@pytest.mark.parametrize(("scores", "labels", "target", "key"), [
    ([], [], 0.9, "calibration_no_labels"),
    ([1.0, 2.0], [T], 0.9, "calibration_lengths"),
    ([float("nan")], [T], 0.9, "calibration_bad_score"),
    (["7"], [T], 0.9, "calibration_bad_score"),
    ([7.0], ["yes"], 0.9, "calibration_bad_label"),
    ([7.0], [2], 0.9, "calibration_bad_label"),
    ([7.0], [T], 0.0, "bad_target_precision"),
    ([7.0], [T], 1.5, "bad_target_precision"),
    ([7.0], [T], True, "bad_target_precision"),
])
def test_bad_input_is_refused_with_its_reason(scores, labels, target, key):
    with pytest.raises(UserError) as refused:
        calibrate(scores, labels, target_precision=target)
    assert refused.value.key == key


def test_labels_may_be_one_and_zero():
    assert calibrate([9.0, 1.0], [1, 0]).threshold == 9.0


def test_queries_must_match_the_labels():
    with pytest.raises(UserError, match="queries must give one query per label"):
        calibrate([9.0, 1.0], [T, F], queries=["a"])


labelled = st.lists(st.tuples(st.integers(0, 100).map(lambda n: n / 10), st.booleans()), min_size=1, max_size=40)
target = st.floats(min_value=0.01, max_value=1.0)


@given(labelled, target)
def test_property_the_recommended_threshold_is_the_lowest_that_reaches_the_target(items, goal):
    result = calibrate([s for s, _ in items], [label for _, label in items], target_precision=goal)
    reaching = [p.threshold for p in result.points if p.precision >= goal]
    assert result.threshold == (min(reaching) if reaching else None)
    if result.recommended is not None and result.recommended.recall is not None:
        # no threshold with the target precision keeps more of the relevant images
        assert all(p.recall <= result.recommended.recall for p in result.points if p.precision >= goal)


@given(labelled)
def test_property_counts_and_curve_are_consistent(items):
    scores, labels = [s for s, _ in items], [label for _, label in items]
    result = calibrate(scores, labels)
    assert [p.threshold for p in result.points] == sorted(set(scores))
    for point in result.points:
        assert point.kept == sum(s >= point.threshold for s in scores)
        assert point.relevant_kept == sum(s >= point.threshold and y for s, y in zip(scores, labels))
        low, high = point.precision_interval
        assert 0.0 <= low <= point.precision <= high <= 1.0
    recalls = [p.recall for p in result.points]
    assert all(r is None for r in recalls) or recalls == sorted(recalls, reverse=True)
    assert result.average_precision is None or 0.0 <= result.average_precision <= 1.0 + 1e-12


def test_the_readme_example_gives_what_the_readme_says():
    result = calibrate(scores=[9.1, 3.0, 7.5, 8.2, 7.9, 1.0], labels=[T, F, T, T, F, F], target_precision=0.7,
                       queries=["cat"] * 3 + ["rocket"] * 3)
    point = result.recommended
    assert result.threshold == 7.5 and (point.kept, point.relevant_kept, point.precision) == (4, 3, 0.75)
    assert point.precision_interval == pytest.approx((0.30, 0.95), abs=0.005)
    assert (point.recall, round(point.f1, 3)) == (1.0, 0.857)
    assert result.separable and codes(result) == ["calibration_too_few"]


@pytest.mark.parametrize("trials", [1, 7, 10, 1000])
def test_the_wilson_interval_holds_a_proportion_of_none_or_all(trials):
    assert wilson_interval(0, trials)[0] == 0.0 and wilson_interval(trials, trials)[1] == 1.0
