"""Ranking rules (SPEC §5): threshold, top_k, stable sort, tie groups, normalisation,
error fallback and winner strength - examples first, then properties."""

import json
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lychee.ranking import (
    ScoredImage,
    matches_well,
    normalized_scores,
    partition,
    rank,
    split,
    tie_groups,
    winner_strength,
)


def records(*scores, errors=()):
    return [ScoredImage(i, f"img{i}.jpg", s, f"p(yes)={s / 10:.4f}", "broken" if i in errors else None)
            for i, s in enumerate(scores)]


def test_sorted_best_first_with_ranks_from_one():
    out = rank(records(3.0, 9.0, 6.0))
    assert [r.index for r in out] == [1, 2, 0]
    assert [r.rank for r in out] == [1, 2, 3]


def test_threshold_filters_without_changing_scores():
    out = rank(records(3.0, 9.0, 6.0), score_threshold=6.0)
    assert [(r.index, r.score) for r in out] == [(1, 9.0), (2, 6.0)]


def test_top_k_truncates_after_threshold():
    assert len(rank(records(3.0, 9.0, 6.0, 8.0), score_threshold=5.0, top_k=2)) == 2
    assert len(rank(records(3.0, 9.0), score_threshold=5.0, top_k=5)) == 1


def test_equal_scores_keep_input_order():
    assert [r.index for r in rank(records(5.0, 7.0, 5.0, 7.0), tie_epsilon=0.0)] == [1, 3, 0, 2]


def test_close_scores_form_a_tie_group_in_input_order():
    out = rank(records(9.00, 9.30, 9.27, 5.0))
    assert [(r.index, r.tied) for r in out] == [(1, True), (2, True), (0, False), (3, False)]


def test_a_tie_group_is_anchored_at_its_best_score_so_chains_do_not_join():
    # Each neighbour gap is 0.03, but 9.27-9.21 = 0.06 >= epsilon: {9.27, 9.24} and {9.21}.
    out = rank(records(9.27, 9.21, 9.24))
    assert [(r.index, r.tied) for r in out] == [(0, True), (2, True), (1, False)]


def test_a_wide_epsilon_never_puts_a_clearly_lower_score_first():
    # A single-linkage chain 10.0, 9.5, 8.9 was one group and put 8.9 (input first) on top.
    out = rank(records(8.9, 9.5, 10.0), tie_epsilon=1.0)
    assert [(r.index, r.tied) for r in out] == [(1, True), (2, True), (0, False)]


def test_tie_groups_split_where_a_score_is_epsilon_or_more_below_the_first_of_its_group():
    assert tie_groups([9.0, 8.96, 8.91, 8.0], 0.05) == [range(0, 2), range(2, 3), range(3, 4)]
    assert tie_groups([9.34, 9.31, 9.30, 9.28, 9.26, 9.02], 0.05) == [range(0, 3), range(3, 5), range(5, 6)]
    assert tie_groups([5.0, 5.0, 5.0], 0.0) == [range(0, 1), range(1, 2), range(2, 3)]
    assert tie_groups([], 0.05) == []


def test_failed_images_score_zero_and_sink_below_scored_ones():
    out = rank(records(0.0, 4.0, 0.0, 1.0, errors={1}))
    assert [r.index for r in out] == [3, 0, 2, 1]
    assert out[-1].score == 0.0 and out[-1].error == "broken" and not out[-1].tied


def test_threshold_inside_a_tie_chain_ranks_only_what_passed():
    results, left_out = split(records(9.00, 9.04, 9.08), score_threshold=9.02)
    assert [(r.rank, r.index, r.tied) for r in results] == [(1, 1, True), (2, 2, True)]
    assert [(r.rank, r.index) for r in left_out] == [(3, 0)]


def test_failed_images_never_pass_a_threshold():
    assert rank(records(5.0, 9.0, errors={1}), score_threshold=0.0) == rank(records(5.0), score_threshold=0.0)


def test_normalisation_maps_min_max_onto_zero_to_ten_and_keeps_raw():
    out = rank(records(2.0, 4.0, 3.0), normalize=True)
    assert [(r.score, r.raw_score) for r in out] == [(10.0, 4.0), (5.0, 3.0), (0.0, 2.0)]


def test_normalised_threshold_applies_to_the_normalised_score():
    assert [r.index for r in rank(records(2.0, 4.0, 3.0), normalize=True, score_threshold=5.0)] == [1, 2]


def test_normalising_an_all_equal_batch_keeps_scores():
    assert normalized_scores([6.0, 6.0, 6.0]) == [6.0, 6.0, 6.0]
    assert normalized_scores([]) == []
    assert [r.score for r in rank(records(7.0), normalize=True)] == [7.0]


@pytest.mark.parametrize("bad", [float("nan"), -0.5, 10.5, float("inf"), "7", True])
def test_bad_threshold_is_rejected_with_its_name(bad):
    with pytest.raises(ValueError, match="score_threshold"):
        rank(records(1.0), score_threshold=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "3", True])
def test_bad_top_k_is_rejected_with_its_name(bad):
    with pytest.raises(ValueError, match="top_k"):
        rank(records(1.0), top_k=bad)


def test_bad_tie_epsilon_is_rejected():
    with pytest.raises(ValueError, match="tie_epsilon"):
        rank(records(1.0), tie_epsilon=float("nan"))


@pytest.mark.parametrize(("scores", "expected"), [
    ((9.0, 8.95), "close"),
    ((9.0, 8.0), "clear"),
    ((9.0, 6.0), "dominant"),
    ((3.0, 0.0), "dominant"),
    ((9.0,), None),
])
def test_winner_strength(scores, expected):
    assert winner_strength(rank(records(*scores))) == expected


def test_winner_strength_is_close_when_the_winner_is_tied():
    # gap 0.2 >= 0.1, but within a tie epsilon of 0.5 #1 and #2 are too close to call.
    assert winner_strength(rank(records(9.0, 8.8), tie_epsilon=0.5)) == "close"
    assert winner_strength(rank(records(9.0, 8.8), tie_epsilon=0.05)) == "clear"


@pytest.mark.parametrize(("best", "expected"), [(9.0, True), (5.0, True), (4.99, False), (0.0, False)])
def test_a_winner_matches_well_from_a_model_score_of_five(best, expected):
    assert matches_well(rank(records(best, 0.0))[0]) is expected


def test_matching_well_reads_the_model_score_not_the_normalised_one():
    best = rank(records(2.64, 1.5), normalize=True)[0]
    assert best.score == 10.0 and not matches_well(best)


def test_results_serialise_to_json():
    record = rank(records(4.0))[0].to_dict()
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {"rank", "index", "source", "score", "raw_score", "tied", "raw_output", "error"}


# Any float on the scale, or one on a 0.01 grid, so that batches hold near-ties and chains.
score = st.floats(min_value=0.0, max_value=10.0, allow_nan=False) | st.integers(0, 1000).map(lambda n: n / 100)
batch = st.lists(st.tuples(score, st.booleans()), max_size=30).map(
    lambda items: records(*(s for s, _ in items), errors={i for i, (_, e) in enumerate(items) if e}))
threshold = st.none() | score
top_k = st.none() | st.integers(min_value=1, max_value=40)
epsilon = st.floats(min_value=0.0, max_value=1.0)


@given(batch, threshold, top_k, st.booleans(), epsilon)
def test_property_ranking_is_deterministic(items, t, k, normalize, eps):
    assert rank(items, score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps) == \
        rank(list(items), score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps)


@given(batch, threshold, top_k, st.booleans(), epsilon)
def test_property_length_threshold_ranks_and_nothing_lost(items, t, k, normalize, eps):
    results, left_out = split(items, score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps)
    passing = len(rank(items, score_threshold=t, normalize=normalize, tie_epsilon=eps))
    assert len(results) == min(k if k is not None else passing, passing)
    assert all(t is None or (r.error is None and r.score >= t) for r in results)
    assert sorted(r.index for r in results + left_out) == list(range(len(items)))
    assert [r.rank for r in results + left_out] == list(range(1, len(items) + 1))


@given(batch, threshold, st.booleans(), epsilon)
def test_property_order_is_by_score_except_inside_tie_groups(items, t, normalize, eps):
    for ordered in split(items, score_threshold=t, normalize=normalize, tie_epsilon=eps):
        scored = [r for r in ordered if r.error is None]
        assert all(r.error is not None for r in ordered[len(scored):])      # failures last
        for position, a in enumerate(scored):
            for b in scored[position + 1:]:
                if a.score < b.score:                                   # out of score order...
                    assert a.tied and b.tied and a.index < b.index      # ...only inside a tie group


@given(batch, threshold, top_k, st.booleans(), epsilon)
@example(records(8.9, 9.5, 10.0), None, None, False, 1.0)       # a chain wider than epsilon
def test_property_a_lower_ranked_image_never_scores_epsilon_or_more_above_a_higher_ranked_one(
        items, t, k, normalize, eps):
    for ordered in split(items, score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps):
        scored = [r.score for r in ordered if r.error is None]
        for position, higher in enumerate(scored):
            assert all(lower - higher < eps or lower <= higher for lower in scored[position + 1:])


@given(st.lists(score, max_size=30).map(lambda s: sorted(s, reverse=True)), epsilon)
def test_property_no_two_members_of_a_tie_group_are_epsilon_apart(scores, eps):
    groups = tie_groups(scores, eps)
    assert [i for g in groups for i in g] == list(range(len(scores)))
    for group, following in zip(groups, groups[1:] + [None]):
        assert scores[group[0]] - scores[group[-1]] < eps or len(group) == 1
        if following is not None:                        # the next group starts epsilon or more below
            assert scores[group[0]] - scores[following[0]] >= eps


@given(batch, threshold, top_k, epsilon)
def test_property_threshold_never_changes_a_score(items, t, k, eps):
    raw = {r.index: r.raw_score for r in items if r.error is None}
    for r in rank(items, score_threshold=t, top_k=k, tie_epsilon=eps):
        assert r.error is None and r.score == raw[r.index] or r.error is not None and r.score == 0.0


@given(st.lists(score, min_size=1, max_size=30))
def test_property_normalised_scores_stay_on_the_scale(raw):
    out = normalized_scores(raw)
    assert all(math.isfinite(s) and 0.0 <= s <= 10.0 for s in out)
    if max(raw) > min(raw):
        assert min(out) == 0.0 and max(out) == 10.0


@given(batch, threshold, top_k, st.booleans(), epsilon)
def test_property_partition_puts_every_image_in_one_group(items, t, k, normalize, eps):
    groups = partition(items, score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps)
    results, left_out = split(items, score_threshold=t, top_k=k, normalize=normalize, tie_epsilon=eps)
    assert groups.results == [r for r in results if r.error is None]
    assert groups.filtered_out == [r for r in left_out if r.error is None]
    assert [r.index for r in groups.errors] == sorted(r.index for r in items if r.error)
    assert all(r.error for r in groups.errors)
